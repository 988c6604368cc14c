//! `sigil status`.

use super::connect::connect;
use crate::cli::{Format, GlobalArgs, StatusArgs};
use crate::output::{self, human_secs, table, unix_time};
use serde_json::{Value, json};
use sigil_proto::v1::{StatusRequest, StatusResponse};

/// `sigil status`
pub async fn run(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let s = client.status(StatusRequest {}).await?.into_inner();
    match args.format.format {
        Format::Json => output::out(&output::json(&to_json(&s))?)?,
        Format::Text => output::out(&text(&s))?,
    }
    Ok(())
}

/// The JSON form (stable field names).
pub fn to_json(s: &StatusResponse) -> Value {
    let cas: Vec<Value> = s
        .cas
        .iter()
        .map(|c| json!({"purpose": c.purpose, "fingerprint": c.fingerprint, "not_after": unix_time(c.not_after_unix)}))
        .collect();
    json!({
        "cluster_name": s.cluster_name,
        "ca_pin": s.ca_pin,
        "server_version": s.server_version,
        "cas": cas,
        "bots": s.bots,
        "bot_instances": s.bot_instances,
        "locks": s.locks,
        "uptime_seconds": s.uptime_seconds,
        "auth_listen": s.auth_listen,
        "public_listen": s.public_listen,
        "data_dir": s.data_dir,
        "audit_public_key": s.audit_public_key,
        "audit_integrity": s.audit_integrity,
        "key_exchange": s.key_exchange,
        "control_key_exchanges": s.control_key_exchanges,
        "public_key_exchanges": s.public_key_exchanges,
    })
}

/// This connection's TLS key-exchange group, then what each listener has
/// negotiated since start, e.g. `X25519MLKEM768 (this connection); control
/// plane: X25519MLKEM768 ×12; public: X25519 ×1`.
fn key_exchange(s: &StatusResponse) -> String {
    let counts = |m: &std::collections::HashMap<String, u64>| {
        let mut v: Vec<(&String, &u64)> = m.iter().collect();
        v.sort();
        v.iter()
            .map(|(g, n)| format!("{g} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = vec![if s.key_exchange.is_empty() {
        "local socket (no TLS)".to_string()
    } else {
        format!("{} (this connection)", s.key_exchange)
    }];
    if !s.control_key_exchanges.is_empty() {
        parts.push(format!(
            "control plane: {}",
            counts(&s.control_key_exchanges)
        ));
    }
    if !s.public_key_exchanges.is_empty() {
        parts.push(format!("public: {}", counts(&s.public_key_exchanges)));
    }
    parts.join("; ")
}

/// The human form: key/value lines, then a table of CAs.
pub fn text(s: &StatusResponse) -> String {
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    let mut out = String::new();
    let lines = [
        ("Cluster", or_dash(&s.cluster_name)),
        ("CA pin", or_dash(&s.ca_pin)),
        ("Version", or_dash(&s.server_version)),
        ("Auth listen", or_dash(&s.auth_listen)),
        ("Public listen", or_dash(&s.public_listen)),
        ("Data dir", or_dash(&s.data_dir)),
        ("Uptime", human_secs(s.uptime_seconds)),
        ("Bots", s.bots.to_string()),
        ("Bot instances", s.bot_instances.to_string()),
        ("Locks", s.locks.to_string()),
        ("Audit key", or_dash(&s.audit_public_key)),
        ("Audit log", or_dash(&s.audit_integrity)),
        ("Key exchange", key_exchange(s)),
    ];
    for (k, v) in lines {
        out.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
    }
    if !s.cas.is_empty() {
        let rows = s
            .cas
            .iter()
            .map(|c| {
                vec![
                    c.purpose.clone(),
                    c.fingerprint.clone(),
                    unix_time(c.not_after_unix),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["CA", "FINGERPRINT", "EXPIRES"], rows));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::v1::CaStatus;

    fn sample() -> StatusResponse {
        StatusResponse {
            cluster_name: "example.test".into(),
            ca_pin: "sha256:00ff".into(),
            server_version: "0.1.0".into(),
            cas: vec![CaStatus {
                purpose: "host".into(),
                fingerprint: "sha256:aa".into(),
                not_after_unix: 1_714_564_800,
            }],
            bots: 2,
            bot_instances: 3,
            locks: 1,
            uptime_seconds: 90,
            auth_listen: "127.0.0.1:3025".into(),
            public_listen: "127.0.0.1:3080".into(),
            data_dir: "/d".into(),
            audit_public_key: "ed25519:AAAA".into(),
            audit_integrity: "intact".into(),
            key_exchange: "X25519MLKEM768".into(),
            control_key_exchanges: [("X25519MLKEM768".to_string(), 12)].into(),
            public_key_exchanges: [("X25519".to_string(), 1)].into(),
        }
    }

    #[test]
    fn text_and_json() {
        let t = text(&sample());
        for want in [
            "example.test",
            "sha256:00ff",
            "host",
            "2024-05-01T12:00:00Z",
            "Bot instances: 3",
            "1m30s",
            "Audit key:     ed25519:AAAA",
            "Key exchange:  X25519MLKEM768 (this connection); control plane: X25519MLKEM768 ×12; public: X25519 ×1",
        ] {
            assert!(t.contains(want), "{want} missing in\n{t}");
        }
        let v = to_json(&sample());
        assert_eq!(v["cluster_name"], "example.test");
        assert_eq!(v["ca_pin"], "sha256:00ff");
        assert_eq!(v["cas"][0]["purpose"], "host");
        assert_eq!(v["bots"], 2);
        assert_eq!(v["audit_public_key"], "ed25519:AAAA");
    }
}
