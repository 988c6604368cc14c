//! Printing: borderless aligned tables, JSON and YAML, and small formatting helpers
//! shared by the admin verbs. Everything returns `String`s so it can be tested;
//! the callers print.

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;
use std::borrow::Cow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Text for a terminal: control characters (ESC starts escape sequences) and
/// invisible formatting characters (zero-width, bidi overrides) written as
/// `\u{..}` escapes; newlines and tabs kept. Everything the CLI prints that
/// came from the server or a file goes through this, so stored data cannot
/// rewrite the screen or disguise itself.
pub fn safe(text: &str) -> Cow<'_, str> {
    sigil_types::text::escape_unsafe_multiline(text)
}

/// JSON text with every unsafe character (see [`safe`]) as a JSON `\uXXXX`
/// escape: the same JSON value, safe to print. Such characters can only be
/// inside strings, where the escape means the same character.
pub fn safe_json(text: &str) -> Cow<'_, str> {
    use std::fmt::Write as _;
    if !text
        .chars()
        .any(|c| sigil_types::text::is_unsafe_char(c) && c != '\n')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if sigil_types::text::is_unsafe_char(c) && c != '\n' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes `text` to stdout, adding a final newline if it lacks one (nothing for
/// empty text), with unsafe characters escaped ([`safe`]). A closed pipe
/// (`sigil tokens ls | head`) comes back as an `io::Error` of kind
/// `BrokenPipe`, which `main` treats as a quiet success.
pub fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if text.is_empty() {
        return Ok(());
    }
    let text = safe(text);
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        lock.write_all(b"\n")?;
    }
    lock.flush()
}

/// An aligned table without borders, with an upper-case header row.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        // One line per cell: a newline would break the table's layout.
        t.add_row(
            row.iter()
                .map(|c| sigil_types::text::escape_unsafe(c).into_owned()),
        );
    }
    // comfy-table pads every cell on both sides; trim the left margin and trailing
    // spaces so the first column starts at column 0 like other CLI tools.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pretty JSON.
pub fn json(value: &Value) -> anyhow::Result<String> {
    let text = serde_json::to_string_pretty(value).context("formatting JSON output")?;
    Ok(safe_json(&text).into_owned())
}

/// YAML for one or more documents: several are separated by `---` so the output
/// can be fed back to `sigil create -f`.
pub fn yaml_docs(values: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(v).context("formatting YAML output")?);
    }
    Ok(out)
}

/// Parses JSON documents returned by the server.
pub fn parse_json_docs(docs: &[String]) -> anyhow::Result<Vec<Value>> {
    docs.iter()
        .map(|d| serde_json::from_str(d).context("the auth service returned invalid JSON"))
        .collect()
}

/// RFC 3339 UTC time (seconds precision) of a Unix timestamp; `-` for 0.
pub fn unix_time(secs: i64) -> String {
    if secs == 0 {
        return "-".to_string();
    }
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Shortens an RFC 3339 time to whole seconds (`2024-05-01T12:00:00Z`) for tables.
pub fn short_time(s: &str) -> String {
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => t
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok())
            .unwrap_or_else(|| s.to_string()),
        Err(_) => s.to_string(),
    }
}

/// "in 14m" / "3m ago" relative to now, for humans.
pub fn relative(secs: i64) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let delta = secs - now;
    let s = human_secs(delta.unsigned_abs());
    if delta >= 0 {
        format!("in {s}")
    } else {
        format!("{s} ago")
    }
}

/// A rough duration for humans: the two largest units, e.g. `1h30m`, `14m5s`, `2d3h`.
pub fn human_secs(secs: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut rest = secs;
    let mut parts = Vec::new();
    for (name, size) in UNITS {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            parts.push(format!("{n}{name}"));
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "0s".to_string()
    } else {
        parts.concat()
    }
}

/// A token name is the secret: tables show only its first 8 characters.
pub fn token_prefix(name: &str) -> String {
    let prefix: String = name.chars().take(8).collect();
    if prefix.len() < name.len() {
        format!("{prefix}…")
    } else {
        prefix
    }
}

/// The string at a JSON pointer, or `-`.
pub fn str_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(Value::String(_)) => "-".to_string(),
        Some(other) => scalar(other),
    }
}

/// A list of strings at a JSON pointer, comma-joined, or `-`.
pub fn list_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(scalar).collect::<Vec<_>>().join(",")
        }
        _ => "-".to_string(),
    }
}

/// A scalar without JSON quotes; compact JSON for anything else.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `k=v k2=v2` summary of a JSON object's fields (nested values as compact JSON),
/// at most `max` characters.
pub fn summary(v: &Value, max: usize) -> String {
    let text = match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                // Lists of scalars read better as a,b,c than as JSON.
                Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    format!(
                        "{k}={}",
                        items.iter().map(scalar).collect::<Vec<_>>().join(",")
                    )
                }
                _ => format!("{k}={}", scalar(v)),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => scalar(other),
    };
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_are_aligned_without_borders() {
        let out = table(
            &["NAME", "ROLES"],
            vec![
                vec!["a".into(), "r1,r2".into()],
                vec!["longer-name".into(), "x".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME"), "{out}");
        let col = lines[0].find("ROLES").unwrap();
        assert_eq!(lines[1].find("r1,r2"), Some(col), "{out}");
        assert_eq!(lines[2].find('x'), Some(col), "{out}");
        assert!(!out.contains('│') && !out.contains('|'), "{out}");
    }

    #[test]
    fn server_text_is_escaped_for_the_terminal() {
        let hostile = "x\u{1b}]0;owned\u{7}\u{202E}y\u{200B}";
        let t = table(
            &["NAME"],
            vec![vec![hostile.to_string()], vec!["a\nb".into()]],
        );
        assert!(
            !t.chars()
                .any(|c| c == '\u{1b}' || c == '\u{202E}' || c == '\u{200B}'),
            "{t}"
        );
        assert!(
            t.contains("x\\u{1b}]0;owned\\u{7}\\u{202e}y\\u{200b}"),
            "{t}"
        );
        assert!(t.contains("a\\nb"), "{t}");
        assert_eq!(safe("ok\n\tline"), "ok\n\tline");
        // JSON stays the same value, and prints safely.
        let v = serde_json::json!({"name": hostile, "tag": "\u{E0041}"});
        let text = json(&v).unwrap();
        assert!(
            !text
                .chars()
                .any(|c: char| c != '\n' && sigil_types::text::is_unsafe_char(c)),
            "{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn token_prefix_hides_the_rest() {
        assert_eq!(token_prefix("0123456789abcdef"), "01234567…");
        assert_eq!(token_prefix("short"), "short");
        assert_eq!(token_prefix("12345678"), "12345678");
    }

    #[test]
    fn times() {
        assert_eq!(unix_time(0), "-");
        assert_eq!(unix_time(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(
            short_time("2024-05-01T12:00:00.123456789Z"),
            "2024-05-01T12:00:00Z"
        );
        assert_eq!(short_time("not a time"), "not a time");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(relative(now + 3600).starts_with("in "));
        assert!(relative(now - 3600).ends_with(" ago"));
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(5400), "1h30m");
        assert_eq!(human_secs(90_061), "1d1h");
        assert_eq!(human_secs(845), "14m5s");
    }

    #[test]
    fn json_helpers() {
        let v = json!({"metadata": {"name": "b"}, "spec": {"roles": ["r1", "r2"], "n": 3}});
        assert_eq!(str_at(&v, "/metadata/name"), "b");
        assert_eq!(str_at(&v, "/metadata/missing"), "-");
        assert_eq!(str_at(&v, "/spec/n"), "3");
        assert_eq!(list_at(&v, "/spec/roles"), "r1,r2");
        assert_eq!(list_at(&v, "/spec/none"), "-");
        assert_eq!(
            summary(&json!({"bot": "b", "ok": true}), 100),
            "bot=b ok=true"
        );
        assert_eq!(summary(&json!({"bot": "abcdefghij"}), 6), "bot=a…");
        assert_eq!(
            summary(&json!({"cas": ["a", "b"], "m": {"x": 1}}), 100),
            "cas=a,b m={\"x\":1}"
        );
    }

    #[test]
    fn yaml_multi_document() {
        let out = yaml_docs(&[json!({"kind": "role"}), json!({"kind": "bot"})]).unwrap();
        assert_eq!(out, "kind: role\n---\nkind: bot\n");
    }
}
