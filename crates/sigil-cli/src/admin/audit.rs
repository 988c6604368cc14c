//! `sigil audit ls|verify|checkpoint`.

use super::connect::connect;
use super::parse_flag_duration;
use crate::cli::{
    AuditCheckpointArgs, AuditCommand, AuditLsArgs, AuditVerifyArgs, Format, GlobalArgs,
};
use crate::error::CliError;
use crate::output::{self, short_time, str_at, summary, table};
use serde_json::{Value, json};
use sigil_proto::v1::{
    AuditQueryRequest, SignAuditCheckpointRequest, VerifyAuditRequest, VerifyAuditResponse,
};
use sigil_types::{Checkpoint, SignedCheckpoint};
use std::io::Write;
use std::path::Path;
use time::OffsetDateTime;

/// Widest a DETAILS cell gets in text output; `--format json` has everything.
const SUMMARY_WIDTH: usize = 100;

/// Runs a `sigil audit` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Ls(args) => ls(global, args).await,
        AuditCommand::Verify(a) => verify(global, a).await,
        AuditCommand::Checkpoint(a) => checkpoint(global, a).await,
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
            "audit log intact: {} events, head {}:{}; {} signed checkpoint(s) and recorded head(s) match",
            r.count, r.count, r.head_hash, r.checkpoints_checked
        ))
    } else {
        Err(format!(
            "audit log BROKEN at seq {}: {}",
            r.bad_seq, r.reason
        ))
    }
}

/// A checkpoint file as `sigil audit checkpoint --out` writes it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CheckpointFile {
    /// The signed checkpoint.
    #[serde(flatten)]
    pub signed: SignedCheckpoint,
    /// The key that signed it (`ed25519:BASE64`).
    pub audit_public_key: String,
    /// Copies of the body's seq and head, for people reading the file.
    pub seq: i64,
    pub head: String,
}

/// Reads a checkpoint file and checks its signature with the key it names; returns the
/// checkpoint and that key.
pub fn read_checkpoint_file(path: &Path) -> Result<(Checkpoint, String), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("reading --checkpoint {}: {e}", path.display())))?;
    let f: CheckpointFile = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "--checkpoint {} is not a checkpoint file saved by `sigil audit checkpoint --out`: {e}",
            path.display()
        ))
    })?;
    sigil_pki::verify_audit_signature(&f.audit_public_key, &f.signed.body, &f.signed.signature)
        .map_err(|e| CliError::other(format!("--checkpoint {}: {e}", path.display())))?;
    let cp = Checkpoint::parse(&f.signed.body)
        .map_err(|e| CliError::other(format!("--checkpoint {}: {e}", path.display())))?;
    Ok((cp, f.audit_public_key))
}

async fn verify(global: &GlobalArgs, args: &AuditVerifyArgs) -> anyhow::Result<()> {
    let (head, file_key) = match (&args.head, &args.checkpoint) {
        (Some(h), _) => {
            let (seq, hash) = sigil_types::parse_head(h)
                .map_err(|e| CliError::usage(format!("--head {h:?}: {e}")))?;
            (Some((seq, hash)), None)
        }
        (None, Some(path)) => {
            let (cp, key) = read_checkpoint_file(path)?;
            if cp.seq == 0 {
                (None, Some(key))
            } else {
                (Some((cp.seq, cp.head)), Some(key))
            }
        }
        (None, None) => (None, None),
    };
    let mut client = connect(global).await?;
    let (head_seq, head_hash) = head.clone().unwrap_or_default();
    let mut r = client
        .verify_audit(VerifyAuditRequest {
            head_seq,
            head_hash,
        })
        .await?
        .into_inner();
    if let Some(key) = file_key
        && key != r.audit_public_key
        && r.intact
    {
        r.intact = false;
        r.bad_seq = head_seq;
        r.reason = format!(
            "the checkpoint file was signed by audit key {key}, but the auth service now signs with {}: the key was replaced",
            r.audit_public_key
        );
    }
    let format = args.format.format;
    if format == Format::Json {
        let v = json!({
            "intact": r.intact, "count": r.count, "head_hash": r.head_hash,
            "bad_seq": r.bad_seq, "reason": r.reason,
            "checkpoints_checked": r.checkpoints_checked,
            "audit_public_key": r.audit_public_key,
        });
        output::out(&output::json(&v)?)?;
    }
    let f = &args.format;
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
                "audit log verification failed at event seq {}: {}",
                r.bad_seq, r.reason
            ))
            .into())
        }
    }
}

async fn checkpoint(global: &GlobalArgs, args: &AuditCheckpointArgs) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let r = client
        .sign_audit_checkpoint(SignAuditCheckpointRequest {})
        .await?
        .into_inner();
    let cp = r
        .checkpoint
        .ok_or_else(|| CliError::other("the auth service sent no checkpoint"))?;
    let signed = SignedCheckpoint {
        body: cp.body,
        signature: cp.signature,
    };
    // Check what we are about to tell the operator to keep.
    sigil_pki::verify_audit_signature(&r.audit_public_key, &signed.body, &signed.signature)
        .map_err(|e| CliError::other(format!("the auth service's checkpoint: {e}")))?;
    let parsed = Checkpoint::parse(&signed.body)
        .map_err(|e| CliError::other(format!("the auth service's checkpoint: {e}")))?;
    let file = CheckpointFile {
        signed,
        audit_public_key: r.audit_public_key,
        seq: parsed.seq,
        head: parsed.head.clone(),
    };
    let json_text = serde_json::to_string_pretty(&file)?;
    if let Some(path) = &args.out {
        crate::files::write_atomic(path, json_text.as_bytes(), crate::files::PUBLIC)?;
    }
    match args.format.format {
        Format::Json => output::out(&json_text)?,
        Format::Text => output::out(&format!("{}:{}", parsed.seq, parsed.head))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::FormatArg;

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
            checkpoints_checked: 2,
            ..Default::default()
        };
        assert_eq!(
            verify_report(&ok),
            Ok("audit log intact: 12 events, head 12:abc; 2 signed checkpoint(s) and recorded head(s) match".to_string())
        );
        let bad = VerifyAuditResponse {
            intact: false,
            count: 12,
            bad_seq: 7,
            reason: "hash mismatch".into(),
            ..Default::default()
        };
        let line = verify_report(&bad).unwrap_err();
        assert!(
            line.contains("seq 7") && line.contains("hash mismatch"),
            "{line}"
        );
    }
}
