//! Decode the client's header blocks and re-encode them statelessly.
//!
//! Decoding is our own [`Decoder`] (dynamic table, size updates, a
//! table-driven Huffman decoder). The output side needs no table: literals
//! without indexing (RFC 7541 §6.2.2), or never indexed when the client sent
//! them so (§6.2.3), with static-table names and raw (non-Huffman) strings,
//! which any decoder reads without state.

use std::io;

use super::decoder::{Decoder, Field};
use super::frame::{
    CONTINUATION, END_HEADERS, END_STREAM, FrameHeader, HEADERS, PADDED, PRIORITY,
    write_header_block,
};

/// Cap on one encoded header block (all its frames together). hyper's server
/// allows a 16 KiB header list by default; 1 MiB leaves room while bounding
/// what one connection can make us buffer.
pub(super) const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Cap on the decoded header list, counted as RFC 9113 §6.5.2 does
/// (name + value + 32 per field). Stops a small block of indexed references
/// to one large table entry from expanding without bound.
const MAX_HEADER_LIST: usize = 1 << 20;
/// What replaces an `:authority` that is not a valid URI authority.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// The block being collected until END_HEADERS.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
}

/// Per-connection header block state: the client's HPACK context and any
/// block still waiting for CONTINUATION frames.
pub(super) struct HeaderRewriter {
    decoder: Decoder,
    open: Option<OpenBlock>,
    block: Vec<u8>,
    encoded: Vec<u8>,
}

impl HeaderRewriter {
    /// `max_table_size` is the SETTINGS_HEADER_TABLE_SIZE the server
    /// advertises: the client may resize its table up to that and no further.
    /// The server never sees those size updates (we drop the dynamic table),
    /// so the limit has to be enforced here.
    pub fn new(max_table_size: usize) -> Self {
        HeaderRewriter {
            // The table starts at the protocol default; the client announces
            // any other size with a size update, which the decoder applies.
            decoder: Decoder::new(max_table_size),
            open: None,
            block: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// The stream whose header block awaits CONTINUATION, if any.
    pub fn continuation_stream(&self) -> Option<u32> {
        self.open.as_ref().map(|o| o.stream)
    }

    /// Take one HEADERS or CONTINUATION frame; on END_HEADERS append the
    /// re-encoded block as frames to `out`.
    pub fn frame(&mut self, h: FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let fragment = match h.kind {
            HEADERS => {
                self.open = Some(OpenBlock {
                    stream: h.stream,
                    end_stream: h.flags & END_STREAM != 0,
                });
                self.block.clear();
                headers_fragment(h.flags, payload)?
            }
            CONTINUATION => payload,
            _ => return Err(invalid("not a header block frame")),
        };
        if self.block.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(invalid("header block too large"));
        }
        self.block.extend_from_slice(fragment);
        if h.flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(open) = self.open.take() else {
            return Err(invalid("CONTINUATION without HEADERS"));
        };
        self.reencode()?;
        write_header_block(out, open.stream, open.end_stream, &self.encoded);
        // A connection that once sent a large block does not keep its buffers.
        release_if_large(&mut self.block);
        release_if_large(&mut self.encoded);
        self.block.clear();
        Ok(())
    }

    /// Decode `self.block` (updating the dynamic table) into `self.encoded`.
    fn reencode(&mut self) -> io::Result<()> {
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut list_size = 0usize;
        self.decoder.decode(&self.block, |f: Field<'_>| {
            list_size = list_size.saturating_add(f.name.len() + f.value.len() + 32);
            if list_size > MAX_HEADER_LIST {
                // The connection is closed, so the table need not stay in step.
                return Err(invalid("header list too large"));
            }
            let value = if f.name == b":authority" {
                fix_authority(f.value)
            } else {
                f.value
            };
            let name_index = f.static_name.or_else(|| static_name_index(f.name));
            encode_field(encoded, name_index, f.name, value, f.never_indexed);
            Ok(())
        })
    }
}

/// Scratch buffers up to this size are kept between header blocks.
const SPARE_CAPACITY: usize = 4 * 1024;

/// Drop `buf`'s allocation when it grew past [`SPARE_CAPACITY`].
pub(super) fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > SPARE_CAPACITY {
        *buf = Vec::new();
    }
}

/// The header block fragment of a HEADERS payload: padding stripped and the
/// PRIORITY fields dropped (RFC 9113 deprecates them and `h2` ignores them).
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, tail) = rest
            .split_first()
            .ok_or_else(|| invalid("PADDED HEADERS without a pad length"))?;
        pad = usize::from(n);
        rest = tail;
    }
    if flags & PRIORITY != 0 {
        rest = rest
            .get(5..)
            .ok_or_else(|| invalid("HEADERS too short for its PRIORITY fields"))?;
    }
    // Padding as long as or longer than what remains is a PROTOCOL_ERROR (§6.2).
    rest.len()
        .checked_sub(pad)
        .map(|end| &rest[..end])
        .ok_or_else(|| invalid("HEADERS padding exceeds the payload"))
}

/// An `:authority` that `http` (and so `h2`) would refuse becomes `localhost`.
fn fix_authority(value: &[u8]) -> &[u8] {
    if http::uri::Authority::try_from(value).is_ok() {
        value
    } else {
        REPLACEMENT_AUTHORITY
    }
}

/// Literal header field without indexing (RFC 7541 §6.2.2), or never
/// indexed (§6.2.3): a static-table name index when there is one, else a
/// literal name; raw string value.
fn encode_field(
    out: &mut Vec<u8>,
    name_index: Option<usize>,
    name: &[u8],
    value: &[u8],
    never_indexed: bool,
) {
    let flags = if never_indexed { 0x10 } else { 0x00 };
    match name_index {
        Some(i) => encode_integer(out, i, 4, flags),
        None => {
            out.push(flags);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

/// A string literal without Huffman coding (RFC 7541 §5.2, H = 0).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1); `flags` fills the
/// bits above the prefix in the first octet.
fn encode_integer(out: &mut Vec<u8>, mut value: usize, n: u8, flags: u8) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// First index of `name` in the HPACK static table (RFC 7541 Appendix A).
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// The error every malformed client stream turns into: the server then sees
/// a read error and closes the connection.
pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::decoder::STATIC_TABLE;
    use super::*;

    #[test]
    fn static_name_indices_match_the_table() {
        // Decode each re-encoded field with another implementation: a wrong
        // index would come back as a different name.
        let names = STATIC_TABLE
            .iter()
            .map(|(name, _)| *name)
            .chain(["grpc-timeout"]);
        for name in names {
            for never_indexed in [false, true] {
                let mut block = Vec::new();
                let index = static_name_index(name.as_bytes());
                encode_field(&mut block, index, name.as_bytes(), b"v", never_indexed);
                let decoded = loona_hpack::Decoder::new().decode(&block).expect("decodes");
                assert_eq!(decoded, vec![(name.as_bytes().to_vec(), b"v".to_vec())]);
            }
        }
    }

    #[test]
    fn long_integers_and_strings_are_encoded_as_rfc_7541_says() {
        // C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut block = Vec::new();
        let value = vec![b'x'; 300];
        encode_field(&mut block, None, b"x-long", &value, false);
        let decoded = loona_hpack::Decoder::new().decode(&block).expect("decodes");
        assert_eq!(decoded, vec![(b"x-long".to_vec(), value)]);
    }

    #[test]
    fn authority_is_replaced_only_when_invalid() {
        for (input, want) in [
            ("%2Ftmp%2Fx.sock", "localhost"),
            ("/tmp/agent.sock", "localhost"),
            ("", "localhost"),
            ("unix:/tmp/x", "localhost"),
            ("localhost:443", "localhost:443"),
            ("spire.example", "spire.example"),
        ] {
            let got = fix_authority(input.as_bytes());
            assert_eq!(got, want.as_bytes(), "{input:?}");
        }
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let mut payload = vec![2u8];
        payload.extend_from_slice(&[0, 0, 0, 3, 16]);
        payload.extend_from_slice(b"abc");
        payload.extend_from_slice(&[0, 0]);
        let got = headers_fragment(PADDED | PRIORITY, &payload).expect("valid");
        assert_eq!(got, b"abc");
        assert!(headers_fragment(PADDED, &[5, 1, 2]).is_err());
        assert!(headers_fragment(PADDED, &[]).is_err());
        assert!(headers_fragment(PRIORITY, &[0, 0, 0]).is_err());
    }
}
