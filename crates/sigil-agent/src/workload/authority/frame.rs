//! The few HTTP/2 framing facts (RFC 9113 §4.1, §6.2, §6.10) the rewriter needs.

/// The client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of every frame header.
pub(super) const HEADER_LEN: usize = 9;
/// Frame type of HEADERS.
pub(super) const HEADERS: u8 = 0x1;
/// Frame type of CONTINUATION.
pub(super) const CONTINUATION: u8 = 0x9;
/// HEADERS flag: last frame of the stream from this side.
pub(super) const END_STREAM: u8 = 0x1;
/// HEADERS/CONTINUATION flag: last frame of the header block.
pub(super) const END_HEADERS: u8 = 0x4;
/// HEADERS flag: a pad length byte leads and padding trails.
pub(super) const PADDED: u8 = 0x8;
/// HEADERS flag: 5 bytes of (deprecated) priority fields lead the fragment.
pub(super) const PRIORITY: u8 = 0x20;
/// Frame size every peer must accept before SETTINGS say otherwise; we emit
/// header block frames no larger, so the server's settings never matter.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;

/// One parsed frame header. The 24-bit length field caps a payload at
/// 16 MiB - 1, so a length is never larger than that.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier with the reserved bit cleared.
    pub stream: u32,
}

impl FrameHeader {
    /// Parse the first nine bytes of `b` (the caller checked the length).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        FrameHeader {
            len,
            kind: b[3],
            flags: b[4],
            stream,
        }
    }
}

/// Append a frame header; `len` must fit 24 bits (callers chunk to 16 KiB).
fn put_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// Append `block` as one HEADERS frame, or HEADERS followed by CONTINUATION
/// frames when it exceeds the default maximum frame size.
pub(super) fn write_header_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(DEFAULT_MAX_FRAME).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        // An empty block still needs its HEADERS frame.
        put_header(out, 0, kind, flags | END_HEADERS, stream);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        put_header(out, chunk.len(), kind, flags, stream);
        out.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}
