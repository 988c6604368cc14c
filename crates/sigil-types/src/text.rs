//! Characters that must not reach a terminal or a log unescaped, and the
//! checks for free-text fields (labels, descriptions, lock messages).
//!
//! Control characters (including ESC, which starts terminal escape
//! sequences) and Unicode format characters (zero-width characters, bidi
//! overrides and isolates, tag characters) make text display as something
//! other than what it is. Input fields refuse them; output escapes them.

use std::borrow::Cow;
use std::fmt::Write as _;

/// True for characters that can change how surrounding text is displayed:
/// every control character (C0, DEL, C1), Unicode format characters
/// (category Cf: soft hyphen, zero-width space/joiners, bidi marks,
/// embeddings, overrides and isolates, word joiner, BOM, tags...) and the
/// line/paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// `s` with every [`is_unsafe_char`] written as an escape (`\n`, `\t`,
/// `\u{1b}`...), so it prints as what it is. Borrows when nothing changes.
/// A backslash is left alone: the output is for reading, not for parsing back.
pub fn escape_unsafe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Like [`escape_unsafe`] but keeps newlines and tabs (multi-line messages).
pub fn escape_unsafe_multiline(s: &str) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| is_unsafe_char(c) && !matches!(c, '\n' | '\t'))
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for line in s.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        for part in body.split_inclusive('\t') {
            let (p, tab) = match part.strip_suffix('\t') {
                Some(p) => (p, "\t"),
                None => (part, ""),
            };
            out.push_str(&escape_unsafe(p));
            out.push_str(tab);
        }
        out.push_str(nl);
    }
    Cow::Owned(out)
}

/// Checks a free-text field: at most `max_chars` characters and no
/// [`is_unsafe_char`] (newlines and tabs allowed when `multiline`).
/// Returns the reason; the caller names the field.
pub fn check_free_text(value: &str, max_chars: usize, multiline: bool) -> Result<(), String> {
    if value.chars().count() > max_chars {
        return Err(format!("longer than {max_chars} characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| is_unsafe_char(c) && !(multiline && matches!(c, '\n' | '\t')))
    {
        return Err(format!(
            "contains the control or invisible formatting character U+{:04X}; remove it",
            c as u32
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_characters() {
        for c in [
            '\0',
            '\u{1b}',
            '\u{7f}',
            '\u{9b}',
            '\n',
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{E0041}',
            '\u{00AD}',
            '\u{2028}',
        ] {
            assert!(is_unsafe_char(c), "{c:?}");
        }
        for c in ['a', 'é', '日', ' ', '*', '\\', '😀'] {
            assert!(!is_unsafe_char(c), "{c:?}");
        }
    }

    #[test]
    fn escapes() {
        assert!(matches!(escape_unsafe("plain é"), Cow::Borrowed(_)));
        assert_eq!(escape_unsafe("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(escape_unsafe("x\u{202E}y\n"), "x\\u{202e}y\\n");
        assert_eq!(escape_unsafe_multiline("a\n\tb\u{7}"), "a\n\tb\\u{7}");
        assert!(matches!(escape_unsafe_multiline("a\nb"), Cow::Borrowed(_)));
    }

    #[test]
    fn free_text() {
        check_free_text("deploy bot for prod — team é", 100, false).unwrap();
        assert!(check_free_text("a\nb", 100, false).is_err());
        check_free_text("a\nb", 100, true).unwrap();
        assert!(check_free_text("a\u{1b}b", 100, true).is_err());
        assert!(check_free_text("a\u{200B}b", 100, true).is_err());
        assert!(check_free_text(&"a".repeat(101), 100, true).is_err());
    }
}
