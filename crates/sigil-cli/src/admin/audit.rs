//! `sigil audit ls|verify`.

use super::connect::connect;
use super::parse_flag_duration;
use crate::cli::{AuditCommand, AuditLsArgs, Format, FormatArg, GlobalArgs};
use crate::error::CliError;
use crate::output::{self, short_time, str_at, summary, table};
use serde_json::{Value, json};
use sigil_proto::v1::{AuditQueryRequest, VerifyAuditRequest, VerifyAuditResponse};
use std::io::Write;
use time::OffsetDateTime;

/// Widest a DETAILS cell gets in text output; `--format json` has everything.
const SUMMARY_WIDTH: usize = 100;

/// Runs a `sigil audit` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Ls(args) => ls(global, args).await,
        AuditCommand::Verify(f) => verify(global, f).await,
    }
}

/// Builds the query; `now_nanos` is passed in so the `--since` arithmetic is testable.
pub fn query(args: &AuditLsArgs, now_nanos: i128) -> Result<AuditQueryRequest, CliError> {
    let since_unix_nanos = match args.since.as_deref() {
        None => 0,
        Some(s) => {
            let d = parse_flag_duration("since", s)?;
            let since = now_nanos.saturating_sub(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
            // Before 1970 means "everything".
            i64::try_from(since.max(0)).unwrap_or(i64::MAX)
        }
    };
    Ok(AuditQueryRequest {
        since_unix_nanos,
        event_type: args.event_type.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    })
}

async fn ls(global: &GlobalArgs, args: &AuditLsArgs) -> anyhow::Result<()> {
    let req = query(args, OffsetDateTime::now_utc().unix_timestamp_nanos())?;
    let mut client = connect(global).await?;
    let mut stream = client.query_audit(req).await?.into_inner();
    match args.format.format {
        Format::Json => {
            // Stream straight through: exactly the server's JSON, one event per line.
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            while let Some(ev) = stream.message().await? {
                writeln!(out, "{}", output::safe_json(&ev.json))?;
            }
            out.flush()?;
        }
        Format::Text => {
            let mut rows = Vec::new();
            while let Some(ev) = stream.message().await? {
                let v: Value = serde_json::from_str(&ev.json).map_err(|e| {
                    CliError::other(format!("the auth service sent an invalid audit event: {e}"))
                })?;
                rows.push(event_row(&v));
            }
            if rows.is_empty() {
                eprintln!("no audit events");
            } else {
                output::out(&table(&["TIME", "TYPE", "DETAILS"], rows))?;
            }
        }
    }
    Ok(())
}

/// TIME, TYPE and a compact `k=v` summary of the event's fields.
pub fn event_row(v: &Value) -> Vec<String> {
    let details = match v.get("fields") {
        Some(fields) => summary(fields, SUMMARY_WIDTH),
        None => {
            // No `fields` object: summarise everything except the envelope.
            let mut rest = v.clone();
            if let Some(map) = rest.as_object_mut() {
                for k in ["seq", "time", "type", "event_type", "hash", "prev_hash"] {
                    map.remove(k);
                }
            }
            summary(&rest, SUMMARY_WIDTH)
        }
    };
    // The server writes `event_type`; accept `type` (the hashed canonical form) too.
    let event_type = match str_at(v, "/event_type") {
        t if t == "-" => str_at(v, "/type"),
        t => t,
    };
    vec![short_time(&str_at(v, "/time")), event_type, details]
}

/// The report line for an intact log, or the failure for a broken one.
pub fn verify_report(r: &VerifyAuditResponse) -> Result<String, String> {
    if r.intact {
        Ok(format!(
            "audit log intact: {} events, head {}",
            r.count, r.head_hash
        ))
    } else {
        Err(format!(
            "audit log BROKEN: first bad event seq {}: {}",
            r.bad_seq, r.reason
        ))
    }
}

async fn verify(global: &GlobalArgs, f: &FormatArg) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let r = client
        .verify_audit(VerifyAuditRequest {})
        .await?
        .into_inner();
    if f.format == Format::Json {
        let v = json!({
            "intact": r.intact, "count": r.count, "head_hash": r.head_hash,
            "bad_seq": r.bad_seq, "reason": r.reason,
        });
        output::out(&output::json(&v)?)?;
    }
    match verify_report(&r) {
        Ok(line) => {
            if f.format == Format::Text {
                output::out(&line)?;
            }
            Ok(())
        }
        Err(line) => {
            if f.format == Format::Text {
                output::out(&line)?;
            }
            Err(CliError::other(format!(
                "audit log verification failed at event seq {}",
                r.bad_seq
            ))
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(since: Option<&str>) -> AuditLsArgs {
        AuditLsArgs {
            since: since.map(str::to_string),
            event_type: Some("bot.join".into()),
            limit: Some(5),
            format: FormatArg::default(),
        }
    }

    #[test]
    fn since_is_relative_to_now() {
        let now = 10_000 * 1_000_000_000i128;
        let q = query(&args(Some("1h")), now).unwrap();
        assert_eq!(q.since_unix_nanos, (10_000 - 3600) * 1_000_000_000);
        assert_eq!(q.event_type, "bot.join");
        assert_eq!(q.limit, 5);
        assert_eq!(query(&args(None), now).unwrap().since_unix_nanos, 0);
        assert_eq!(
            query(&args(Some("1000d")), now).unwrap().since_unix_nanos,
            0
        );
        assert!(
            query(&args(Some("yesterday")), now)
                .unwrap_err()
                .message
                .contains("--since")
        );
    }

    #[test]
    fn event_rows() {
        let v = json!({"seq": 3, "time": "2024-05-01T12:00:00.000000000Z", "type": "bot.join",
                       "fields": {"bot": "ci", "method": "token"}});
        assert_eq!(
            event_row(&v),
            ["2024-05-01T12:00:00Z", "bot.join", "bot=ci method=token"]
        );
        let flat = json!({"seq": 3, "time": "t", "type": "x", "hash": "h", "bot": "ci"});
        assert_eq!(event_row(&flat)[2], "bot=ci");
        let server = json!({"seq": 1, "time": "2024-05-01T12:00:00.5Z", "event_type": "cluster.created",
                            "fields": {"cluster": "example.test"}, "prev_hash": "00", "hash": "ab"});
        assert_eq!(
            event_row(&server),
            [
                "2024-05-01T12:00:00Z",
                "cluster.created",
                "cluster=example.test"
            ]
        );
    }

    #[test]
    fn verify_lines() {
        let ok = VerifyAuditResponse {
            intact: true,
            count: 12,
            head_hash: "abc".into(),
            bad_seq: 0,
            reason: String::new(),
        };
        assert_eq!(
            verify_report(&ok),
            Ok("audit log intact: 12 events, head abc".to_string())
        );
        let bad = VerifyAuditResponse {
            intact: false,
            count: 12,
            head_hash: String::new(),
            bad_seq: 7,
            reason: "hash mismatch".into(),
        };
        let line = verify_report(&bad).unwrap_err();
        assert!(
            line.contains("seq 7") && line.contains("hash mismatch"),
            "{line}"
        );
    }
}
