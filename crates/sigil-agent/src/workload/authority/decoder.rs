//! An HPACK decoder (RFC 7541) that follows the client's dynamic table and
//! hands each decoded field to a callback.
//!
//! Written for the rewriter rather than taken from a crate: the one used
//! before (`loona-hpack`) rebuilt its Huffman tables, hash maps of all 257
//! codes, for every Huffman-coded string, which was 14 % of the agent's CPU
//! per Workload API call (benches/README.md). Every malformed input is an
//! [`io::ErrorKind::InvalidData`] error, never a panic: the connection is then
//! closed as a protocol error.

use std::collections::VecDeque;
use std::io;

use super::hpack::{invalid, release_if_large};
use super::huffman;

/// Per-entry overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// An integer may take at most this many octets after its prefix; values
/// then stay below 2^28, as `h2` requires too.
const MAX_INTEGER_CONTINUATIONS: usize = 4;

/// One decoded header field, borrowed from the block, the static table, the
/// dynamic table or the decoder's scratch buffers.
pub(super) struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// The name's index in the static table, when it came from there.
    pub static_name: Option<usize>,
    /// Sent as "never indexed" (RFC 7541 §6.2.3): intermediaries must keep
    /// that representation.
    pub never_indexed: bool,
}

struct Entry {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The client's HPACK decoding context for one connection.
pub(super) struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    size: usize,
    /// The table's current maximum, as the client last set it.
    max_size: usize,
    /// The most the client may set (the server's SETTINGS_HEADER_TABLE_SIZE).
    max_allowed: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder for a peer allowed a table of up to `max_allowed` bytes; the
    /// table starts at the protocol default of 4,096 (or less, if that is all
    /// that is allowed).
    pub fn new(max_allowed: usize) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: max_allowed.min(4096),
            max_allowed,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decode one complete header block, calling `emit` for every field in
    /// order. An error from `emit` stops decoding and is returned.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut emit: impl FnMut(Field<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut pos = 0;
        let mut fields_seen = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = integer(block, &mut pos, 7)?;
                let (name, value, static_name) = self.lookup(index)?;
                emit(Field {
                    name,
                    value,
                    static_name,
                    never_indexed: false,
                })?;
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first
                // field of a block (§4.2).
                if fields_seen {
                    return Err(invalid("HPACK table size update after a header field"));
                }
                let size = integer(block, &mut pos, 5)?;
                if size > self.max_allowed {
                    return Err(invalid("HPACK table size update above the allowed size"));
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // Literal (§6.2): with incremental indexing (01), never
                // indexed (0001) or without indexing (0000).
                let (prefix, indexing, never_indexed) = match first & 0xf0 {
                    0x00 => (4, false, false),
                    0x10 => (4, false, true),
                    _ => (6, true, false),
                };
                let name_index = integer(block, &mut pos, prefix)?;
                self.decode_literal(
                    block,
                    &mut pos,
                    name_index,
                    indexing,
                    never_indexed,
                    &mut emit,
                )?;
                fields_seen = true;
            }
        }
        release_if_large(&mut self.name_buf);
        release_if_large(&mut self.value_buf);
        Ok(())
    }

    fn decode_literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        name_index: usize,
        indexing: bool,
        never_indexed: bool,
        emit: &mut impl FnMut(Field<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let literal_name = name_index == 0;
        if literal_name {
            string(block, pos, &mut self.name_buf)?;
        }
        string(block, pos, &mut self.value_buf)?;
        let (name, static_name) = if literal_name {
            (&self.name_buf[..], None)
        } else {
            let (name, _, static_name) = self.lookup(name_index)?;
            (name, static_name)
        };
        emit(Field {
            name,
            value: &self.value_buf,
            static_name,
            never_indexed,
        })?;
        if indexing {
            // Copy the name first: the insertion may evict the entry it came from (§4.4).
            let entry = Entry {
                name: name.into(),
                value: self.value_buf[..].into(),
            };
            self.insert(entry);
        }
        Ok(())
    }

    /// Name, value and (for the static table) index of table entry `index`.
    fn lookup(&self, index: usize) -> io::Result<(&[u8], &[u8], Option<usize>)> {
        if index == 0 {
            return Err(invalid("HPACK index 0"));
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name.as_bytes(), value.as_bytes(), Some(index)));
        }
        self.entries
            .get(index - STATIC_TABLE.len() - 1)
            .map(|e| (&e.name[..], &e.value[..], None))
            .ok_or_else(|| invalid("HPACK index beyond the dynamic table"))
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            // Not an error: the table is emptied (§4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Drop the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            self.entries = VecDeque::new();
        }
    }

    /// Bytes the dynamic table holds, by RFC 7541's measure.
    #[cfg(test)]
    pub fn table_size(&self) -> usize {
        self.size
    }
}

/// An integer with an `n`-bit prefix (§5.1) starting at `block[*pos]`.
fn integer(block: &[u8], pos: &mut usize, n: u8) -> io::Result<usize> {
    let truncated = || invalid("HPACK integer truncated");
    let mask = (1u8 << n) - 1;
    let first = *block.get(*pos).ok_or_else(truncated)?;
    *pos += 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    for i in 0..MAX_INTEGER_CONTINUATIONS {
        let b = *block.get(*pos).ok_or_else(truncated)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("HPACK integer too large"))
}

/// A string literal (§5.2) starting at `block[*pos]`, decoded into `out`
/// (cleared first).
fn string(block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> io::Result<()> {
    let huffman = block.get(*pos).is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= block.len())
        .ok_or_else(|| invalid("HPACK string longer than its block"))?;
    let raw = &block[*pos..end];
    *pos = end;
    out.clear();
    if huffman {
        huffman::decode(raw, out).map_err(|e| invalid(e.as_str()))
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// The static table (RFC 7541 Appendix A); index `i` is `STATIC_TABLE[i - 1]`.
pub(super) static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];
