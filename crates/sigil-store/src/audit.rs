//! The audit hash chain: canonical encoding and hashing.
//!
//! Each record's hash is
//! `hex(SHA-256(prev_hash_hex + "\n" + canonical_json))`, where `canonical_json` is the
//! compact JSON object `{"fields":…,"seq":…,"time":…,"type":…}` with the keys of every
//! object (nested ones too) sorted by their UTF-8 bytes, no whitespace, strings escaped
//! as serde_json does, and `time` written as RFC 3339 in UTC with exactly nine fractional
//! digits (`2024-05-01T12:00:00.000000000Z`). The first record's `prev_hash` is
//! [`GENESIS_HASH`].
//!
//! What the chain catches: any change to a record's fields, type, time, seq or hash, a
//! broken `prev_hash` link, a record removed from the middle (gap in seq). What it cannot
//! catch on its own: removal of the newest records; keep the head hash elsewhere for that.

use aws_lc_rs::digest;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// `prev_hash` of the first audit record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical time encoding: RFC 3339, UTC, nine fractional digits. Fixed width, so the
/// text order of stored times is their chronological order.
const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Formats `t` in the canonical audit time encoding (converted to UTC).
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(UtcOffset::UTC);
    // Formatting a UTC date with this description only fails for years outside
    // 0..=9999 in some `time` configurations; fall back to the full RFC 3339 so the
    // event is still recorded (and hashed consistently, since verify re-parses it).
    utc.format(TIME_FORMAT).unwrap_or_else(|_| {
        utc.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    })
}

/// Parses a time written by [`format_time`].
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(s, TIME_FORMAT)
        .map(PrimitiveDateTime::assume_utc)
        .ok()
        .or_else(|| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
}

/// Appends the canonical JSON of `v` to `out`: compact, object keys sorted at every depth.
///
/// Written by hand rather than relying on `serde_json::Map` being a `BTreeMap`, which
/// silently stops being true if any crate in the build enables `preserve_order`.
pub(crate) fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping cannot fail for a `str`.
    match serde_json::to_string(s) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("\"\""),
    }
}

/// The canonical fields JSON of `fields` (what the SQLite backend stores).
pub(crate) fn canonical_fields(fields: &serde_json::Value) -> String {
    let mut out = String::with_capacity(128);
    write_canonical(fields, &mut out);
    out
}

/// The canonical JSON that [`audit_hash`] hashes (after `prev_hash` and a newline).
pub fn canonical_event_json(
    seq: i64,
    time: OffsetDateTime,
    event_type: &str,
    fields: &serde_json::Value,
) -> String {
    event_json_from_parts(
        seq,
        &format_time(time),
        event_type,
        &canonical_fields(fields),
    )
}

/// Builds the canonical event JSON from an already-canonical fields text and time text.
fn event_json_from_parts(seq: i64, time: &str, event_type: &str, fields_json: &str) -> String {
    let mut out = String::with_capacity(fields_json.len() + event_type.len() + 96);
    out.push_str("{\"fields\":");
    out.push_str(fields_json);
    out.push_str(",\"seq\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"time\":");
    write_string(time, &mut out);
    out.push_str(",\"type\":");
    write_string(event_type, &mut out);
    out.push('}');
    out
}

/// The hash of an audit record: `hex(SHA-256(prev_hash + "\n" + canonical_json))`.
/// See the module documentation for the canonical JSON.
pub fn audit_hash(
    prev_hash: &str,
    seq: i64,
    time: OffsetDateTime,
    event_type: &str,
    fields: &serde_json::Value,
) -> String {
    hash_parts(
        prev_hash,
        seq,
        &format_time(time),
        event_type,
        &canonical_fields(fields),
    )
}

/// [`audit_hash`] over stored text: `time` in the canonical encoding and `fields_json`
/// already canonical. Verification hashes the stored bytes, so a record whose fields were
/// rewritten into a different (even equivalent) form is reported.
pub(crate) fn hash_parts(
    prev_hash: &str,
    seq: i64,
    time: &str,
    event_type: &str,
    fields_json: &str,
) -> String {
    let body = event_json_from_parts(seq, time, event_type, fields_json);
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(b"\n");
    ctx.update(body.as_bytes());
    hex::encode(ctx.finish().as_ref())
}

/// One stored audit row as text, the way both backends keep it.
pub(crate) struct StoredRow {
    pub seq: i64,
    pub time: String,
    pub event_type: String,
    pub fields: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Walks a chain row by row in seq order (what `Store::audit_verify` does).
pub(crate) struct ChainCheck {
    last_seq: i64,
    head: String,
}

impl ChainCheck {
    pub(crate) fn new() -> ChainCheck {
        ChainCheck {
            last_seq: 0,
            head: GENESIS_HASH.to_string(),
        }
    }

    /// The seq after which to read the next rows.
    pub(crate) fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// `Some(Broken)` for the first row that does not follow the chain so far.
    pub(crate) fn check(&mut self, r: StoredRow) -> Option<crate::AuditVerification> {
        let broken = |reason: String| Some(crate::AuditVerification::Broken { seq: r.seq, reason });
        if r.seq != self.last_seq + 1 {
            return broken(format!(
                "expected seq {}: records {}..={} are missing",
                self.last_seq + 1,
                self.last_seq + 1,
                r.seq - 1
            ));
        }
        if r.prev_hash != self.head {
            return broken(format!(
                "prev_hash does not match the hash of record {}",
                self.last_seq
            ));
        }
        if hash_parts(&r.prev_hash, r.seq, &r.time, &r.event_type, &r.fields) != r.hash {
            return broken("hash does not match the record's content".into());
        }
        self.head = r.hash;
        self.last_seq = r.seq;
        None
    }

    /// The verdict once every row has been checked.
    pub(crate) fn intact(self) -> crate::AuditVerification {
        crate::AuditVerification::Intact {
            count: self.last_seq,
            head_hash: self.head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn time_is_utc_with_nine_digits() {
        let t = datetime!(2024-05-01 14:00:00.5 +02:00);
        assert_eq!(format_time(t), "2024-05-01T12:00:00.500000000Z");
        assert_eq!(parse_time(&format_time(t)), Some(t));
        let t = datetime!(2024-05-01 12:00:00.123456789 UTC);
        assert_eq!(format_time(t), "2024-05-01T12:00:00.123456789Z");
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn canonical_json_sorts_nested_keys_and_is_compact() {
        let mut inner = serde_json::Map::new();
        inner.insert("z".into(), json!(1));
        inner.insert("a".into(), json!([{"y": true, "b": null}]));
        let mut outer = serde_json::Map::new();
        outer.insert("k2".into(), serde_json::Value::Object(inner));
        outer.insert("k1".into(), json!("q\"\n"));
        let got = canonical_fields(&serde_json::Value::Object(outer));
        assert_eq!(
            got,
            r#"{"k1":"q\"\n","k2":{"a":[{"b":null,"y":true}],"z":1}}"#
        );
    }

    #[test]
    fn canonical_event_json_layout() {
        let t = datetime!(2024-01-02 03:04:05.000000006 UTC);
        assert_eq!(
            canonical_event_json(7, t, "join.accepted", &json!({"node": "n1", "a": 1})),
            r#"{"fields":{"a":1,"node":"n1"},"seq":7,"time":"2024-01-02T03:04:05.000000006Z","type":"join.accepted"}"#
        );
    }

    #[test]
    fn audit_hash_matches_independent_sha256() {
        // Expected value computed with:
        // printf '%s\n%s' "$GENESIS" '{"fields":{"a":1},"seq":1,"time":"2024-01-02T03:04:05.000000006Z","type":"t"}' | sha256sum
        let t = datetime!(2024-01-02 03:04:05.000000006 UTC);
        let h = audit_hash(GENESIS_HASH, 1, t, "t", &json!({"a": 1}));
        assert_eq!(h, EXPECTED_VECTOR);
        // Every input matters.
        assert_ne!(h, audit_hash(GENESIS_HASH, 2, t, "t", &json!({"a": 1})));
        assert_ne!(h, audit_hash(GENESIS_HASH, 1, t, "u", &json!({"a": 1})));
        assert_ne!(h, audit_hash(GENESIS_HASH, 1, t, "t", &json!({"a": 2})));
        assert_ne!(
            h,
            audit_hash(
                GENESIS_HASH,
                1,
                t + time::Duration::NANOSECOND,
                "t",
                &json!({"a": 1})
            )
        );
        assert_ne!(h, audit_hash(&"1".repeat(64), 1, t, "t", &json!({"a": 1})));
    }

    const EXPECTED_VECTOR: &str =
        "c37aaeceacda32e6d7d1cdd7531ff65404ade8e6f45c032b0de4cd960f29450c";

    #[test]
    fn floats_survive_a_database_round_trip() {
        let fields = json!({"x": 0.1 + 0.2, "y": 1e300, "z": -0.0});
        let text = canonical_fields(&fields);
        let back: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(canonical_fields(&back), text);
    }
}
