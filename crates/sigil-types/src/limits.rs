//! Bounds checked on resource and config text *before* it reaches a YAML or
//! JSON parser: size, number of documents, nesting depth, and no YAML
//! anchors or aliases.
//!
//! Why a pre-scan: libyaml's scanner takes super-linear time on deeply nested
//! flow collections (100,000 `[` stalled the auth service for seconds), and
//! aliases let a small file expand into a huge one ("billion laughs"). A
//! single linear pass over the bytes refuses both before any parser runs. The
//! scan is a conservative approximation of YAML's structure: it may count a
//! little more depth than a parser would, never less.

use std::fmt;

/// Largest resource file or request accepted (bytes).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most `---` documents (or JSON array elements) in one file.
pub const MAX_DOCUMENTS: usize = 1000;
/// Deepest nesting of mappings and sequences accepted. Real resources need
/// fewer than 10 levels; parsers give up at 128.
pub const MAX_DEPTH: usize = 32;

/// The bounds applied to one text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size in bytes.
    pub max_bytes: usize,
    /// Maximum nesting depth.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: MAX_DOCUMENT_BYTES,
            max_depth: MAX_DEPTH,
        }
    }
}

/// Which bound a text broke, and where (1-based line when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitError {
    /// The text is larger than `limit` bytes.
    TooLarge {
        /// Actual size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// Nesting deeper than `limit` at `line`.
    TooDeep {
        /// Line where the bound was passed.
        line: usize,
        /// The bound.
        limit: usize,
    },
    /// A YAML anchor (`&name`) or alias (`*name`) at `line`.
    Alias {
        /// Line of the anchor or alias.
        line: usize,
    },
}

impl LimitError {
    /// The line the error is on, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            LimitError::TooLarge { .. } => None,
            LimitError::TooDeep { line, .. } | LimitError::Alias { line } => Some(*line),
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::TooLarge { size, limit } => write!(
                f,
                "document is {size} bytes, over the limit of {limit} bytes; split it into several files"
            ),
            LimitError::TooDeep { limit, .. } => write!(
                f,
                "nesting is deeper than the limit of {limit} levels of mappings and lists"
            ),
            LimitError::Alias { .. } => f.write_str(
                "YAML anchors and aliases (&name, *name) are not allowed; write the value out in full",
            ),
        }
    }
}

impl std::error::Error for LimitError {}

/// Checks `text` against `limits` in one linear pass: size first, then depth
/// and aliases. Works for YAML and JSON (JSON is YAML flow syntax).
pub fn check_text(text: &str, limits: Limits) -> Result<(), LimitError> {
    if text.len() > limits.max_bytes {
        return Err(LimitError::TooLarge {
            size: text.len(),
            limit: limits.max_bytes,
        });
    }
    Scanner::new(limits.max_depth).scan(text)
}

/// What a quoted scalar opened with, when the scanner is inside one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Double,
    Single,
}

struct Scanner {
    max_depth: usize,
    /// Open `[` / `{` not yet closed.
    flow: usize,
    /// Block depth where the outermost open flow collection started.
    flow_base: usize,
    /// Block depth of the last line that had block structure.
    block_depth: usize,
    /// Indentation of the enclosing block levels, innermost last.
    indents: Vec<usize>,
    quote: Option<Quote>,
    /// Inside a `|` or `>` block scalar whose parent line had this indent.
    block_scalar: Option<usize>,
}

impl Scanner {
    fn new(max_depth: usize) -> Self {
        Scanner {
            max_depth,
            flow: 0,
            flow_base: 0,
            block_depth: 0,
            indents: Vec::new(),
            quote: None,
            block_scalar: None,
        }
    }

    fn scan(mut self, text: &str) -> Result<(), LimitError> {
        for (i, line) in text.split('\n').enumerate() {
            self.line(line.as_bytes(), i + 1)?;
        }
        Ok(())
    }

    fn too_deep(&self, depth: usize, line: usize) -> Result<(), LimitError> {
        if depth > self.max_depth {
            return Err(LimitError::TooDeep {
                line,
                limit: self.max_depth,
            });
        }
        Ok(())
    }

    fn line(&mut self, b: &[u8], lineno: usize) -> Result<(), LimitError> {
        let indent = b.iter().take_while(|&&c| c == b' ').count();
        let blank = b[indent..]
            .iter()
            .all(|c| matches!(c, b' ' | b'\t' | b'\r'));
        if let Some(parent) = self.block_scalar {
            // Literal text: its lines are content, not structure.
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let mut i = indent;
        // Block structure only outside quoted scalars and flow collections.
        let mut depth_here = if self.flow > 0 {
            self.flow_base
        } else {
            self.block_depth
        };
        if self.quote.is_none() && self.flow == 0 && !blank && b.get(indent) != Some(&b'#') {
            while self.indents.last().is_some_and(|&top| top >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            depth_here = self.indents.len();
            // `- - - x`: each dash opens one more sequence level on this line.
            while b.get(i) == Some(&b'-') && matches!(b.get(i + 1), None | Some(b' ' | b'\r')) {
                depth_here += 1;
                i += 1;
                while b.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            self.too_deep(depth_here, lineno)?;
            self.block_depth = depth_here;
        }
        // A block scalar's text must be indented past the node that owns it;
        // taking the column after any `- ` errs towards scanning more lines
        // as structure, never fewer.
        let owner_col = i;
        // True where a new node may start: after indentation, `- `, `: `,
        // `? `, `[`, `{` or `,`. Quotes, anchors, aliases, brackets and block
        // scalar indicators only mean something there, as in YAML.
        let mut node_start = true;
        while i < b.len() {
            let c = b[i];
            if let Some(q) = self.quote {
                match (q, c) {
                    (Quote::Double, b'\\') => i += 1,
                    (Quote::Double, b'"') => {
                        self.quote = None;
                        node_start = false;
                    }
                    (Quote::Single, b'\'') => {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                            node_start = false;
                        }
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            match c {
                b' ' | b'\t' | b'\r' => {}
                b'#' if i == 0 || matches!(b[i - 1], b' ' | b'\t') => break,
                b'"' if node_start => self.quote = Some(Quote::Double),
                b'\'' if node_start => self.quote = Some(Quote::Single),
                b'&' | b'*' if node_start && next_is_name(b, i) => {
                    return Err(LimitError::Alias { line: lineno });
                }
                b'[' | b'{' if node_start || self.flow > 0 => {
                    if self.flow == 0 {
                        self.flow_base = depth_here;
                    }
                    self.flow += 1;
                    self.too_deep(self.flow_base + self.flow, lineno)?;
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b':' if self.flow > 0
                    || matches!(b.get(i + 1), None | Some(b' ' | b'\t' | b'\r')) =>
                {
                    node_start = true;
                }
                // A tag (`!t`, `!!str`) leaves room for an anchor after it.
                b'!' if node_start => {
                    while i + 1 < b.len() && !matches!(b[i + 1], b' ' | b'\t' | b'\r') {
                        i += 1;
                    }
                }
                b'?' | b'-' if node_start && matches!(b.get(i + 1), None | Some(b' ')) => {}
                b'|' | b'>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some(owner_col);
                    break;
                }
                _ => node_start = false,
            }
            i += 1;
        }
        Ok(())
    }
}

/// True if an anchor/alias name follows the `&` or `*` at `i`.
fn next_is_name(b: &[u8], i: usize) -> bool {
    b.get(i + 1)
        .is_some_and(|c| !matches!(c, b' ' | b'\t' | b'\r' | b',' | b'[' | b']' | b'{' | b'}'))
}

#[cfg(test)]
mod tests;
