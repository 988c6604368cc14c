//! `parse_resources`: YAML (one or more `---` documents) or JSON (an object
//! or an array of objects) into typed, validated resources, with errors that
//! name the file, line, column and field.

use crate::bot::BotSpec;
use crate::bot_instance::BotInstanceSpec;
use crate::limits::{self, Limits, MAX_DOCUMENTS};
use crate::lock::LockSpec;
use crate::resource::{AnyResource, KNOWN_KINDS, Kind, Resource, ValidationError};
use crate::revocation::WorkloadIdentityX509RevocationSpec;
use crate::role::RoleSpec;
use crate::token::TokenSpec;
use crate::workload_identity::WorkloadIdentitySpec;
use serde::de::DeserializeOwned;
use std::fmt;

/// A resource file could not be parsed or failed validation.
///
/// Displays as `{source}:{line}:{column}: {field}: {message}`; parts that are
/// unknown are left out (e.g. `{source}: {message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Where the text came from (file name, `-` for stdin...).
    pub source: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted field path, e.g. `spec.allow`, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// One document of the input: its text and where it starts in the whole input.
struct Doc<'a> {
    text: &'a str,
    /// 0-based line of the document's first character in the whole input.
    base_line: usize,
    /// 0-based column of the document's first character (non-zero only for
    /// JSON array elements that do not start a line).
    base_col: usize,
    format: Format,
}

impl Doc<'_> {
    /// Converts a 1-based position inside the document into the whole input.
    fn abs(&self, line: usize, column: usize) -> (usize, usize) {
        if line <= 1 {
            (self.base_line + 1, self.base_col + column)
        } else {
            (self.base_line + line, column)
        }
    }

    fn error(
        &self,
        source: &str,
        pos: Option<(usize, usize)>,
        field: Option<String>,
        message: String,
    ) -> ParseError {
        let pos = pos.or_else(|| self.start()).map(|(l, c)| self.abs(l, c));
        ParseError {
            source: source.to_string(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            field,
            message,
        }
    }

    /// Position of the first meaningful line (skipping blanks, comments, `---`).
    fn start(&self) -> Option<(usize, usize)> {
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim_start();
            if !(t.is_empty() || t.starts_with('#') || is_separator(line)) {
                return Some((i + 1, line.len() - t.len() + 1));
            }
        }
        Some((1, 1))
    }
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches('\r');
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Parses resources from `text`; `source` names the input in errors.
///
/// JSON is detected by a leading `{` or `[` that parses as JSON; everything
/// else is YAML, split on `---` lines. Each document's `kind` picks the type,
/// unknown fields are rejected, then the resource is validated.
///
/// Before any parser runs, the text is checked against [`limits`]: at most
/// [`limits::MAX_DOCUMENT_BYTES`] bytes, [`MAX_DOCUMENTS`] documents and
/// [`limits::MAX_DEPTH`] levels of nesting, and no YAML anchors or aliases.
pub fn parse_resources(text: &str, source: &str) -> Result<Vec<AnyResource>, ParseError> {
    limits::check_text(text, Limits::default()).map_err(|e| ParseError {
        source: source.to_string(),
        line: e.line(),
        column: None,
        field: None,
        message: e.to_string(),
    })?;
    let docs = split_documents(text);
    if docs.len() > MAX_DOCUMENTS {
        return Err(ParseError {
            source: source.to_string(),
            line: None,
            column: None,
            field: None,
            message: format!(
                "{} documents, over the limit of {MAX_DOCUMENTS} per file; split it into several files",
                docs.len()
            ),
        });
    }
    if docs.is_empty() {
        return Err(ParseError {
            source: source.to_string(),
            line: None,
            column: None,
            field: None,
            message:
                "no resources found (expected YAML or JSON with kind, version, metadata, spec)"
                    .into(),
        });
    }
    docs.iter().map(|doc| parse_doc(doc, source)).collect()
}

fn split_documents(text: &str) -> Vec<Doc<'_>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text)
    {
        return items
            .into_iter()
            .map(|raw| {
                let item = raw.get();
                // `item` borrows from `text`, so the pointer difference is its byte offset.
                let offset = (item.as_ptr() as usize)
                    .saturating_sub(text.as_ptr() as usize)
                    .min(text.len());
                let before = &text[..offset];
                let base_line = before.matches('\n').count();
                let base_col = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
                Doc {
                    text: item,
                    base_line,
                    base_col,
                    format: Format::Json,
                }
            })
            .collect();
    }
    if trimmed.starts_with('{') && serde_json::from_str::<serde_json::Value>(text).is_ok() {
        return vec![Doc {
            text,
            base_line: 0,
            base_col: 0,
            format: Format::Json,
        }];
    }
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i > 0 && is_separator(line.trim_end_matches('\n')) {
            docs.push(Doc {
                text: &text[start..offset],
                base_line: start_line,
                base_col: 0,
                format: Format::Yaml,
            });
            start = offset;
            start_line = i;
        }
        offset += line.len();
    }
    docs.push(Doc {
        text: &text[start..],
        base_line: start_line,
        base_col: 0,
        format: Format::Yaml,
    });
    docs.retain(|d| has_content(d.text));
    docs
}

/// True if a YAML document has anything besides blanks, comments and markers.
fn has_content(doc: &str) -> bool {
    doc.lines().any(|line| {
        let line = line.trim_end_matches('\r');
        let rest = if is_separator(line) || line == "---" {
            &line[3..]
        } else {
            line
        };
        let t = rest.trim();
        !(t.is_empty() || t.starts_with('#') || t == "...")
    })
}

fn parse_doc(doc: &Doc<'_>, source: &str) -> Result<AnyResource, ParseError> {
    let kind = probe_kind(doc, source)?;
    match kind.as_str() {
        k if k == RoleSpec::KIND => typed::<RoleSpec>(doc, source).map(AnyResource::Role),
        k if k == BotSpec::KIND => typed::<BotSpec>(doc, source).map(AnyResource::Bot),
        k if k == TokenSpec::KIND => typed::<TokenSpec>(doc, source).map(AnyResource::Token),
        k if k == LockSpec::KIND => typed::<LockSpec>(doc, source).map(AnyResource::Lock),
        k if k == BotInstanceSpec::KIND => {
            typed::<BotInstanceSpec>(doc, source).map(AnyResource::BotInstance)
        }
        k if k == WorkloadIdentitySpec::KIND => {
            typed::<WorkloadIdentitySpec>(doc, source).map(AnyResource::WorkloadIdentity)
        }
        k if k == WorkloadIdentityX509RevocationSpec::KIND => {
            typed::<WorkloadIdentityX509RevocationSpec>(doc, source)
                .map(AnyResource::WorkloadIdentityX509Revocation)
        }
        k if k == crate::kubernetes_cluster::KubernetesClusterSpec::KIND => {
            typed::<crate::kubernetes_cluster::KubernetesClusterSpec>(doc, source)
                .map(AnyResource::KubernetesCluster)
        }
        k if k == crate::database::DatabaseSpec::KIND => {
            typed::<crate::database::DatabaseSpec>(doc, source).map(AnyResource::Database)
        }
        k if k == crate::spiffe_federation::SpiffeFederationSpec::KIND => {
            typed::<crate::spiffe_federation::SpiffeFederationSpec>(doc, source)
                .map(AnyResource::SpiffeFederation)
        }
        k if k == crate::app::AppSpec::KIND => {
            typed::<crate::app::AppSpec>(doc, source).map(AnyResource::App)
        }
        other => Err(doc.error(
            source,
            locate_field(doc.text, "kind"),
            Some("kind".into()),
            format!(
                "unknown kind {other:?}; expected one of: {}",
                KNOWN_KINDS.join(", ")
            ),
        )),
    }
}

/// Reads `kind` without the typed schema, so unknown kinds get a clear error.
fn probe_kind(doc: &Doc<'_>, source: &str) -> Result<String, ParseError> {
    let value: serde_json::Value = match doc.format {
        Format::Json => serde_json::from_str(doc.text)
            .map_err(|e| doc.error(source, json_pos(&e), None, strip_position(&e.to_string())))?,
        Format::Yaml => serde_norway::from_str(doc.text).map_err(|e| {
            let pos = e.location().map(|l| (l.line(), l.column()));
            doc.error(source, pos, None, strip_position(&e.to_string()))
        })?,
    };
    let expected = || format!("expected one of: {}", KNOWN_KINDS.join(", "));
    let Some(map) = value.as_object() else {
        return Err(doc.error(
            source,
            None,
            None,
            "expected a resource: a mapping with kind, version, metadata and spec".into(),
        ));
    };
    match map.get("kind") {
        Some(serde_json::Value::String(k)) => Ok(k.clone()),
        Some(_) => Err(doc.error(
            source,
            locate_field(doc.text, "kind"),
            Some("kind".into()),
            format!("kind must be a string; {}", expected()),
        )),
        None => Err(doc.error(
            source,
            None,
            Some("kind".into()),
            format!("missing field `kind`; {}", expected()),
        )),
    }
}

/// A deserialization error before it is placed: (position in the document,
/// serde field path, message).
type RawDeError = (Option<(usize, usize)>, String, String);

fn typed<S: Kind + DeserializeOwned>(
    doc: &Doc<'_>,
    source: &str,
) -> Result<Resource<S>, ParseError> {
    let result: Result<Resource<S>, RawDeError> = match doc.format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(doc.text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                (json_pos(&inner), path, strip_position(&inner.to_string()))
            })
        }
        Format::Yaml => {
            serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(doc.text))
                .map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let pos = inner.location().map(|l| (l.line(), l.column()));
                    (pos, path, strip_position(&inner.to_string()))
                })
        }
    };
    let res = result.map_err(|(pos, path, message)| {
        let message = strip_path_prefix(&message);
        let field = if path.is_empty() || path == "." {
            None
        } else {
            Some(path)
        };
        let pos = pos.or_else(|| field.as_deref().and_then(|f| locate_field(doc.text, f)));
        doc.error(source, pos, field, message)
    })?;
    res.validate()
        .map_err(|ValidationError { field, message }| {
            doc.error(source, locate_field(doc.text, &field), Some(field), message)
        })?;
    Ok(res)
}

fn json_pos(e: &serde_json::Error) -> Option<(usize, usize)> {
    (e.line() > 0).then(|| (e.line(), e.column().max(1)))
}

/// Drops the ` at line N column M` that serde_json and serde_norway put in
/// messages (usually at the end; libyaml puts it mid-message).
fn strip_position(msg: &str) -> String {
    const MARK: &str = " at line ";
    let mut search = 0;
    while let Some(rel) = msg[search..].find(MARK) {
        let i = search + rel;
        let tail = &msg[i + MARK.len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n1 = digits(tail);
        if n1 > 0
            && let Some(after) = tail[n1..].strip_prefix(" column ")
        {
            let n2 = digits(after);
            if n2 > 0 {
                let end = i + MARK.len() + n1 + " column ".len() + n2;
                return format!("{}{}", &msg[..i], &msg[end..]);
            }
        }
        search = i + MARK.len();
    }
    msg.to_string()
}

/// serde_norway prefixes messages with its own `path: `; we report the path as
/// `field`, so drop it from the message.
fn strip_path_prefix(msg: &str) -> String {
    if let Some((head, rest)) = msg.split_once(": ")
        && !head.is_empty()
        && !head.contains(char::is_whitespace)
        && !head.contains('`')
    {
        return rest.to_string();
    }
    msg.to_string()
}

/// Finds the 1-based (line, column) of the key named by a dotted field path
/// such as `spec.allow.logins[2]`, by looking for each key in turn after the
/// previous one. A heuristic over the text: returns the deepest key found.
fn locate_field(text: &str, field: &str) -> Option<(usize, usize)> {
    let mut cursor = 0usize;
    let mut found = None;
    for part in field.split('.') {
        let key = part.split('[').next().unwrap_or(part);
        if key.is_empty() {
            continue;
        }
        match find_key(text, key, cursor) {
            Some(pos) => {
                found = Some(pos);
                cursor = pos + key.len();
            }
            None => break,
        }
    }
    found.map(|pos| {
        let before = &text[..pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    })
}

/// Byte offset (of the key or its opening quote) of `key:` at or after `from`.
fn find_key(text: &str, key: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut search = from;
    while let Some(rel) = text.get(search..)?.find(key) {
        let p = search + rel;
        search = p + key.len();
        let prev = if p == 0 { None } else { Some(bytes[p - 1]) };
        let quote = match prev {
            Some(q @ (b'"' | b'\'')) => Some(q),
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'{' | b',') => None,
            _ => continue,
        };
        let mut q = p + key.len();
        if let Some(qc) = quote {
            if bytes.get(q) != Some(&qc) {
                continue;
            }
            q += 1;
        }
        while matches!(bytes.get(q), Some(b' ' | b'\t')) {
            q += 1;
        }
        if bytes.get(q) == Some(&b':') {
            return Some(if quote.is_some() { p - 1 } else { p });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_nested_keys() {
        let text = "kind: role\nspec:\n  allow:\n    logins: [a]\n  deny:\n    logins: [b]\n";
        assert_eq!(locate_field(text, "spec.deny.logins[0]"), Some((6, 5)));
        assert_eq!(locate_field(text, "spec.allow.logins"), Some((4, 5)));
        let json = "{\"spec\": {\"roles\": []}}";
        assert_eq!(locate_field(json, "spec.roles"), Some((1, 11)));
        assert_eq!(locate_field(text, "nothing"), None);
    }

    #[test]
    fn strips_positions_and_prefixes() {
        assert_eq!(strip_position("bad thing at line 3 column 7"), "bad thing");
        assert_eq!(strip_position("at line of fire"), "at line of fire");
        assert_eq!(
            strip_position("x at line 3 column 1, while y"),
            "x, while y"
        );
        assert_eq!(strip_position("x at line 3 col"), "x at line 3 col");
        assert_eq!(
            strip_path_prefix("spec.allow: unknown field `x`"),
            "unknown field `x`"
        );
        assert_eq!(
            strip_path_prefix("invalid type: string"),
            "invalid type: string"
        );
    }

    #[test]
    fn display_formats() {
        let mut e = ParseError {
            source: "r.yaml".into(),
            line: Some(3),
            column: Some(5),
            field: Some("spec.allow".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "r.yaml:3:5: spec.allow: bad");
        e.field = None;
        assert_eq!(e.to_string(), "r.yaml:3:5: bad");
        e.line = None;
        e.column = None;
        assert_eq!(e.to_string(), "r.yaml: bad");
    }
}
