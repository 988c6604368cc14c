//! Let clients with a non-URI HTTP/2 `:authority` reach the server.
//!
//! grpcio (py-spiffe) dialling a Unix socket sends the percent-encoded socket
//! path (`%2Ftmp%2Fagent.sock`) as `:authority`; the `h2` server under tonic
//! refuses that as a malformed authority and resets the stream before any
//! handler runs. [`AuthorityRewrite`] sits between the accepted socket and the
//! HTTP/2 server and rewrites such a value to `localhost`.
//!
//! Client-to-server bytes are parsed as HTTP/2 frames. Every header block
//! (HEADERS plus CONTINUATION) is HPACK-decoded with our own decoder
//! (`decoder`, `huffman`: table-driven, nothing built per string) that follows
//! the client's dynamic table, and re-encoded without the dynamic table, so the
//! server's decoder never needs state we did not forward; that is why every
//! block is re-encoded, not only bad ones. HEADERS padding is stripped and the
//! deprecated PRIORITY fields are dropped (RFC 9113 §5.3.2; `h2` ignores them).
//! All other frames, and everything the server writes, pass byte for byte.
//! A malformed client stream becomes a read error, so the server closes the
//! connection.

mod decoder;
#[cfg(test)]
mod decoder_tests;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod hpack;
mod huffman;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use frame::{CONTINUATION, FrameHeader, HEADER_LEN, HEADERS, PREFACE};
use hpack::{HeaderRewriter, MAX_HEADER_BLOCK, invalid};

/// The SETTINGS_HEADER_TABLE_SIZE a server advertises unless configured
/// otherwise (RFC 9113 §6.5.2); tonic does not change it.
pub const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// How much to read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Buffers larger than this are released once drained, so a connection that
/// once carried a big header block does not keep it.
const SPARE_CAPACITY: usize = 4 * 1024;

/// Where the parser stands in the client's byte stream.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Checking the connection preface; this many bytes matched so far.
    Preface(usize),
    /// At a frame boundary.
    FrameHeader,
    /// Forwarding this many more payload bytes of a frame we do not touch.
    Forward(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload(FrameHeader),
    /// A malformed stream was reported; nothing more is read.
    Failed,
}

/// An accepted HTTP/2 server connection whose client header blocks are
/// rewritten so an invalid `:authority` becomes `localhost`.
///
/// Wrap the stream before handing it to the HTTP/2 server (tonic's
/// `serve_with_incoming`); [`tonic::transport::server::Connected`] is
/// forwarded to the inner stream, so `UdsConnectInfo` still works.
pub struct AuthorityRewrite<S> {
    inner: S,
    state: State,
    /// Client bytes read but not yet parsed.
    pending: Vec<u8>,
    /// Parsed (possibly rewritten) bytes not yet handed to the server.
    ready: Vec<u8>,
    ready_pos: usize,
    headers: HeaderRewriter,
    /// The client closed its side.
    eof: bool,
}

impl<S> AuthorityRewrite<S> {
    /// Wrap a connection to a server that advertises the default header
    /// table size.
    pub fn new(inner: S) -> Self {
        Self::with_header_table_size(inner, DEFAULT_HEADER_TABLE_SIZE)
    }

    /// Wrap a connection to a server that advertises `size` as its
    /// SETTINGS_HEADER_TABLE_SIZE: the client may grow its table up to that,
    /// and since the server never sees the client's table, the limit is
    /// enforced here.
    pub fn with_header_table_size(inner: S, size: usize) -> Self {
        AuthorityRewrite {
            inner,
            state: State::Preface(0),
            pending: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            headers: HeaderRewriter::new(size),
            eof: false,
        }
    }

    /// The wrapped stream (for peer credentials and the like).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Parse as much of `pending` as possible into `ready`.
    fn process(&mut self) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            let buf = &self.pending[at..];
            match self.state {
                State::Preface(matched) => {
                    let n = buf.len().min(PREFACE.len() - matched);
                    if n == 0 {
                        break Ok(());
                    }
                    if buf[..n] != PREFACE[matched..matched + n] {
                        break Err(invalid("not an HTTP/2 connection preface"));
                    }
                    self.ready.extend_from_slice(&buf[..n]);
                    at += n;
                    self.state = if matched + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(matched + n)
                    };
                }
                State::FrameHeader => {
                    let Some(raw) = buf.first_chunk::<HEADER_LEN>() else {
                        break Ok(());
                    };
                    let h = FrameHeader::parse(raw);
                    let open = self.headers.continuation_stream();
                    if let Some(stream) = open
                        && (h.kind != CONTINUATION || h.stream != stream)
                    {
                        // RFC 9113 §6.10: nothing may interleave a header block.
                        break Err(invalid("header block interrupted before END_HEADERS"));
                    }
                    at += HEADER_LEN;
                    if h.kind == HEADERS || open.is_some() {
                        if h.len > MAX_HEADER_BLOCK {
                            break Err(invalid("header block too large"));
                        }
                        self.state = State::HeaderPayload(h);
                    } else {
                        // Including a stray CONTINUATION: the server rejects it.
                        self.ready.extend_from_slice(raw);
                        self.state = State::Forward(h.len);
                    }
                }
                State::Forward(0) => self.state = State::FrameHeader,
                State::Forward(remaining) => {
                    let n = buf.len().min(remaining);
                    if n == 0 {
                        break Ok(());
                    }
                    self.ready.extend_from_slice(&buf[..n]);
                    at += n;
                    self.state = State::Forward(remaining - n);
                }
                State::HeaderPayload(h) => {
                    let Some(payload) = buf.get(..h.len) else {
                        break Ok(());
                    };
                    if let Err(e) = self.headers.frame(h, payload, &mut self.ready) {
                        break Err(e);
                    }
                    at += h.len;
                    self.state = State::FrameHeader;
                }
                State::Failed => break Err(failed()),
            }
        };
        self.pending.drain(..at);
        result
    }

    /// What the server reads once the client has closed its side.
    fn at_eof(&self) -> io::Result<()> {
        let clean = matches!(
            self.state,
            State::Preface(0) | State::FrameHeader | State::Forward(0)
        ) && self.pending.is_empty()
            && self.headers.continuation_stream().is_none();
        if clean {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection inside a frame",
            ))
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                    if this.ready.capacity() > SPARE_CAPACITY {
                        this.ready = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Failed) {
                return Poll::Ready(Err(failed()));
            }
            if this.eof {
                return Poll::Ready(this.at_eof());
            }
            if let State::Forward(remaining) = this.state
                && remaining > 0
                && this.pending.is_empty()
            {
                // DATA and the like go straight into the server's buffer.
                let want = remaining.min(buf.remaining());
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(want));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    this.eof = true;
                    continue;
                }
                buf.advance(n);
                this.state = State::Forward(remaining - n);
                return Poll::Ready(Ok(()));
            }
            // Read through a stack buffer: an idle connection (most of the
            // Workload API's, parked on a stream) then holds no read buffer.
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.pending.extend_from_slice(rb.filled());
            if let Err(e) = this.process() {
                this.state = State::Failed;
                return Poll::Ready(Err(e));
            }
            if this.pending.is_empty() && this.pending.capacity() > SPARE_CAPACITY {
                this.pending = Vec::new();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

fn failed() -> io::Error {
    invalid("the HTTP/2 stream from the client was malformed")
}
