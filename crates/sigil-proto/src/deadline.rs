//! [`ReadDeadline`]: a connection that must start talking within a fixed
//! time and then never go silent for longer than an idle bound, so a client
//! that connects and sends nothing, or drips its first bytes, cannot hold a
//! server connection (and its task and buffers) forever.
//!
//! It bounds the *transport*; the protocol layers bound the rest: hyper's
//! HTTP/1 `header_read_timeout` covers a request whose headers never end, and
//! HTTP/2 keep-alive pings make a live but quiet client answer within the
//! idle bound (their acknowledgements are reads), so only a dead or stuck
//! peer is cut off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The bounds of a [`ReadDeadline`].
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// The first `first_bytes` bytes must all arrive within this time of
    /// accepting the connection (not reset by a trickle).
    pub first: Duration,
    /// How many bytes make the opening (e.g. the HTTP/2 preface and a
    /// SETTINGS frame header).
    pub first_bytes: usize,
    /// After the opening, the longest time without reading a byte.
    pub idle: Duration,
}

/// An I/O stream whose reads fail with `TimedOut` once a [`Deadlines`]
/// bound passes. Writes pass through.
pub struct ReadDeadline<IO> {
    io: IO,
    limits: Deadlines,
    read_total: usize,
    /// When the next bound expires. Moved forward lazily (only when the
    /// timer fires), so a busy connection pays one clock read per read.
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<IO> ReadDeadline<IO> {
    /// Wraps a just-accepted connection.
    pub fn new(io: IO, limits: Deadlines) -> Self {
        let deadline = Instant::now() + limits.first;
        ReadDeadline {
            io,
            limits,
            read_total: 0,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.read_total = this.read_total.saturating_add(n);
                    if this.read_total >= this.limits.first_bytes {
                        this.deadline = Instant::now() + this.limits.idle;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                if this.sleep.deadline() != this.deadline {
                    let d = this.deadline;
                    this.sleep.as_mut().reset(d);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if Instant::now() >= this.deadline => {
                        let what = if this.read_total < this.limits.first_bytes {
                            "the client did not start talking in time"
                        } else {
                            "the connection was idle too long"
                        };
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                    }
                    Poll::Ready(()) => {}
                }
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Real time, short bounds; the assertions are about what happens, not when.
    fn limits() -> Deadlines {
        Deadlines {
            first: Duration::from_millis(300),
            first_bytes: 4,
            idle: Duration::from_secs(3),
        }
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (server, _client) = tokio::io::duplex(64);
        let mut s = ReadDeadline::new(server, limits());
        let mut buf = [0u8; 8];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("start talking"), "{e}");
    }

    #[tokio::test]
    async fn trickle_does_not_extend_the_opening() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut s = ReadDeadline::new(server, limits());
        let mut buf = [0u8; 8];
        let writer = tokio::spawn(async move {
            // Three of the four opening bytes, then silence (kept open).
            for _ in 0..3 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            client
        });
        let mut got = 0;
        let e = loop {
            match s.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(got <= 3);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn talking_client_outlives_the_opening_bound() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut s = ReadDeadline::new(server, limits());
        let mut buf = [0u8; 8];
        client.write_all(b"open").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        // Past the opening bound, reads keep working while the client talks.
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.write_all(b"y").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        // Then silence ends it.
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("idle"), "{e}");
    }
}
