//! Text tables for each resource kind, shared by `sigil get` and the `ls` verbs.
//! Rows are built from the JSON documents the server returns, so a field the CLI
//! does not know yet never breaks listing.

use super::resources::ResourceKind;
use crate::output::{list_at, short_time, str_at, table, token_prefix};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The table for `items` of `kind`.
pub fn kind_table(kind: ResourceKind, items: &[Value]) -> String {
    match kind {
        ResourceKind::Role => roles_table(items),
        ResourceKind::Bot => bots_table(items),
        ResourceKind::Token => tokens_table(items),
        ResourceKind::Lock => locks_table(items),
        ResourceKind::BotInstance => instances_table(items),
        ResourceKind::WorkloadIdentity => workload_identities_table(items),
        ResourceKind::WorkloadIdentityX509Revocation => revocations_table(items),
        ResourceKind::KubernetesCluster => kubernetes_clusters_table(items),
        ResourceKind::Database => databases_table(items),
        ResourceKind::SpiffeFederation => federations_table(items),
        ResourceKind::App => apps_table(items),
    }
}

/// TRUST DOMAIN, PROFILE, BUNDLE ENDPOINT.
pub fn federations_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            let (profile, url) = if v.pointer("/spec/bundle_source/https_spiffe").is_some() {
                (
                    "https_spiffe",
                    str_at(v, "/spec/bundle_source/https_spiffe/bundle_endpoint_url"),
                )
            } else {
                (
                    "https_web",
                    str_at(v, "/spec/bundle_source/https_web/bundle_endpoint_url"),
                )
            };
            vec![str_at(v, "/metadata/name"), profile.to_string(), url]
        })
        .collect();
    table(&["TRUST DOMAIN", "PROFILE", "BUNDLE ENDPOINT"], rows)
}

/// NAME, PUBLIC ADDR, UPSTREAM, LABELS.
pub fn apps_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                str_at(v, "/spec/public_addr"),
                str_at(v, "/spec/upstream"),
                labels(v),
            ]
        })
        .collect();
    table(&["NAME", "PUBLIC ADDR", "UPSTREAM", "LABELS"], rows)
}

/// NAME, PROTOCOL, URI, LABELS.
pub fn databases_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                str_at(v, "/spec/protocol"),
                str_at(v, "/spec/uri"),
                labels(v),
            ]
        })
        .collect();
    table(&["NAME", "PROTOCOL", "URI", "LABELS"], rows)
}

/// NAME, LOGINS, MAX TTL, DESCRIPTION.
pub fn roles_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                list_at(v, "/spec/allow/logins"),
                str_at(v, "/spec/options/max_ttl"),
                str_at(v, "/metadata/description"),
            ]
        })
        .collect();
    table(&["NAME", "LOGINS", "MAX TTL", "DESCRIPTION"], rows)
}

/// NAME, ROLES, CREATED.
pub fn bots_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                list_at(v, "/spec/roles"),
                created(v),
            ]
        })
        .collect();
    table(&["NAME", "ROLES", "CREATED"], rows)
}

/// The creation time, wherever the server recorded it; `-` if it did not.
fn created(v: &Value) -> String {
    const PLACES: [&str; 4] = [
        "/metadata/created",
        "/metadata/created_at",
        "/spec/created_at",
        "/metadata/labels/created",
    ];
    PLACES
        .iter()
        .map(|p| str_at(v, p))
        .find(|s| s != "-")
        .map(|s| short_time(&s))
        .unwrap_or_else(|| "-".to_string())
}

/// TOKEN (prefix only: the name is the secret), BOT, JOIN METHOD, EXPIRES.
pub fn tokens_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            // Only a `token`-method token's name is a secret (listed by a
            // prefix of its hash form); other methods' names are plain.
            let name = str_at(v, "/metadata/name");
            let shown = if str_at(v, "/spec/join_method") == "token" {
                token_prefix(&name)
            } else {
                name
            };
            vec![
                shown,
                str_at(v, "/spec/bot_name"),
                str_at(v, "/spec/join_method"),
                time_at(v, "/metadata/expires"),
            ]
        })
        .collect();
    table(&["TOKEN", "BOT", "JOIN METHOD", "EXPIRES"], rows)
}

/// ID, TARGET, MESSAGE, EXPIRES.
pub fn locks_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                lock_target(v),
                str_at(v, "/spec/message"),
                match time_at(v, "/metadata/expires") {
                    t if t == "-" => "never".to_string(),
                    t => t,
                },
            ]
        })
        .collect();
    table(&["ID", "TARGET", "MESSAGE", "EXPIRES"], rows)
}

/// `kind=value` of a lock's target (a one-key map); token targets show a prefix.
pub fn lock_target(v: &Value) -> String {
    match v.pointer("/spec/target") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, val)| {
                let val = crate::output::scalar(val);
                let shown = if k == "token" {
                    token_prefix(&val)
                } else {
                    val
                };
                format!("{k}={shown}")
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// ID, BOT, JOIN METHOD, GENERATION, LAST SEEN, HOSTNAME.
pub fn instances_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            let id = match str_at(v, "/spec/instance_id") {
                s if s == "-" => str_at(v, "/metadata/name"),
                s => s,
            };
            vec![
                id,
                str_at(v, "/spec/bot_name"),
                str_at(v, "/spec/join_method"),
                str_at(v, "/spec/generation"),
                last_seen(v),
                str_at(v, "/spec/heartbeats/0/hostname"),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "BOT",
            "JOIN METHOD",
            "GENERATION",
            "LAST SEEN",
            "HOSTNAME",
        ],
        rows,
    )
}

/// The later of the newest authentication and the newest heartbeat.
fn last_seen(v: &Value) -> String {
    let parse = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    let latest = match (
        parse("/spec/authentications/0/time"),
        parse("/spec/heartbeats/0/time"),
    ) {
        (Some(a), Some(h)) => Some(a.max(h)),
        (a, h) => a.or(h),
    };
    latest
        .and_then(|t| t.format(&Rfc3339).ok())
        .map(|s| short_time(&s))
        .unwrap_or_else(|| "-".to_string())
}

/// NAME, SPIFFE ID TEMPLATE, LABELS, RULES (how many allow and deny entries).
pub fn workload_identities_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                str_at(v, "/spec/spiffe/id"),
                labels(v),
                rule_counts(v),
            ]
        })
        .collect();
    table(&["NAME", "SPIFFE ID TEMPLATE", "LABELS", "RULES"], rows)
}

/// NAME, SERVER, LABELS.
pub fn kubernetes_clusters_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                str_at(v, "/spec/server"),
                labels(v),
            ]
        })
        .collect();
    table(&["NAME", "SERVER", "LABELS"], rows)
}

/// `k=v,k2=v2` of the metadata labels, or `-`.
fn labels(v: &Value) -> String {
    match v.pointer("/metadata/labels") {
        Some(Value::Object(map)) if !map.is_empty() => map
            .iter()
            .map(|(k, val)| format!("{k}={}", crate::output::scalar(val)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// `2 allow, 1 deny`; `allow all` when there are no rules (every workload gets it).
fn rule_counts(v: &Value) -> String {
    let count = |p: &str| v.pointer(p).and_then(Value::as_array).map_or(0, Vec::len);
    match (count("/spec/rules/allow"), count("/spec/rules/deny")) {
        (0, 0) => "allow all".to_string(),
        (allow, deny) => format!("{allow} allow, {deny} deny"),
    }
}

/// SERIAL, REVOKED, REASON.
pub fn revocations_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|v| {
            vec![
                str_at(v, "/metadata/name"),
                time_at(v, "/spec/revoked_at"),
                str_at(v, "/spec/reason"),
            ]
        })
        .collect();
    table(&["SERIAL", "REVOKED", "REASON"], rows)
}

/// An RFC 3339 time at a pointer shortened to seconds, or `-`.
fn time_at(v: &Value, pointer: &str) -> String {
    match str_at(v, pointer) {
        s if s == "-" => s,
        s => short_time(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_table_shows_only_a_prefix() {
        let secret = "abcdef0123456789abcdef0123456789";
        let t = json!({"kind":"token","metadata":{"name":secret,"expires":"2030-01-01T00:00:00.5Z"},
                       "spec":{"bot_name":"ci","join_method":"token"}});
        let out = tokens_table(&[t]);
        assert!(out.contains("abcdef01…"), "{out}");
        assert!(!out.contains(secret), "{out}");
        assert!(out.contains("2030-01-01T00:00:00Z"), "{out}");
        assert!(out.lines().next().unwrap().contains("JOIN METHOD"));
        // Other methods' names are not secrets: shown whole.
        let named = json!({"kind":"token","metadata":{"name":"ci-github-deploys"},
                           "spec":{"bot_name":"ci","join_method":"github"}});
        assert!(tokens_table(&[named]).contains("ci-github-deploys"));
    }

    #[test]
    fn locks_table_columns_and_token_targets() {
        let l1 =
            json!({"metadata":{"name":"l-1"},"spec":{"target":{"bot":"ci"},"message":"incident"}});
        let l2 = json!({"metadata":{"name":"l-2","expires":"2030-01-01T00:00:00Z"},
                        "spec":{"target":{"token":"abcdef0123456789"}}});
        let out = locks_table(&[l1, l2]);
        assert!(out.starts_with("ID"), "{out}");
        assert!(
            out.contains("bot=ci") && out.contains("incident") && out.contains("never"),
            "{out}"
        );
        assert!(
            out.contains("token=abcdef01…") && !out.contains("abcdef0123456789"),
            "{out}"
        );
    }

    #[test]
    fn instances_table_last_seen_is_the_latest() {
        let i = json!({"metadata":{"name":"u"},"spec":{
            "bot_name":"ci","instance_id":"1111","join_method":"token","generation":3,
            "authentications":[{"time":"2030-01-01T00:00:00Z"}],
            "heartbeats":[{"time":"2030-01-02T00:00:00.25Z","hostname":"h1"}]}});
        let out = instances_table(&[i]);
        let header = out.lines().next().unwrap();
        for col in [
            "ID",
            "BOT",
            "JOIN METHOD",
            "GENERATION",
            "LAST SEEN",
            "HOSTNAME",
        ] {
            assert!(header.contains(col), "{out}");
        }
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.contains("1111") && row.contains("h1") && row.contains(" 3 "),
            "{out}"
        );
        assert!(row.contains("2030-01-02T00:00:00Z"), "{out}");
    }

    #[test]
    fn bots_and_roles_tables() {
        let b = json!({"metadata":{"name":"ci"},"spec":{"roles":["a","b"]}});
        let out = bots_table(&[b]);
        assert!(
            out.contains("NAME") && out.contains("ROLES") && out.contains("CREATED"),
            "{out}"
        );
        assert!(out.contains("a,b"), "{out}");
        let r = json!({"metadata":{"name":"dev"},"spec":{"allow":{"logins":["root"]},"options":{"max_ttl":"1h"}}});
        let out = kind_table(ResourceKind::Role, &[r]);
        assert!(
            out.contains("dev") && out.contains("root") && out.contains("1h"),
            "{out}"
        );
    }

    #[test]
    fn workload_identities_table_columns() {
        let wi = json!({"kind":"workload_identity","metadata":{"name":"payments","labels":{"env":"prod","team":"pay"}},
            "spec":{"spiffe":{"id":"/svc/payments/{{ workload.unix.uid }}"},
                    "rules":{"allow":[{"conditions":[]},{"conditions":[]}],"deny":[{"conditions":[]}]}}});
        let open = json!({"metadata":{"name":"open"},"spec":{"spiffe":{"id":"/svc/open"}}});
        let out = kind_table(ResourceKind::WorkloadIdentity, &[wi, open]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let header = lines[0];
        let cols = ["NAME", "SPIFFE ID TEMPLATE", "LABELS", "RULES"];
        let pos: Vec<usize> = cols.iter().map(|c| header.find(c).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
        let row = lines[1];
        assert_eq!(row.find("payments"), Some(0), "{out}");
        assert_eq!(
            row.find("/svc/payments/{{ workload.unix.uid }}"),
            Some(pos[1]),
            "{out}"
        );
        assert_eq!(row.find("env=prod,team=pay"), Some(pos[2]), "{out}");
        assert_eq!(row.find("2 allow, 1 deny"), Some(pos[3]), "{out}");
        let row = lines[2];
        assert!(row.starts_with("open"), "{out}");
        assert_eq!(row.find("allow all"), Some(pos[3]), "{out}");
        assert_eq!(row.find('-'), Some(pos[2]), "{out}");
    }

    #[test]
    fn revocations_table_columns() {
        let r = json!({"kind":"workload_identity_x509_revocation","metadata":{"name":"01a2ff"},
            "spec":{"reason":"key leaked","revoked_at":"2030-01-01T00:00:00.123Z"}});
        let out = kind_table(ResourceKind::WorkloadIdentityX509Revocation, &[r]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let header = lines[0];
        let revoked = header.find("REVOKED").unwrap();
        let reason = header.find("REASON").unwrap();
        assert!(header.starts_with("SERIAL") && revoked < reason, "{out}");
        assert!(lines[1].starts_with("01a2ff"), "{out}");
        assert_eq!(
            lines[1].find("2030-01-01T00:00:00Z"),
            Some(revoked),
            "{out}"
        );
        assert_eq!(lines[1].find("key leaked"), Some(reason), "{out}");
    }
}
