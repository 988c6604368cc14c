//! The Workload API transport's frame reader (`AuthorityRewrite`), driven
//! over an in-memory client stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use sigil_agent::workload::authority::AuthorityRewrite;
use sigil_agent::workload::authority::fuzzing::CLIENT_PREFACE;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client that sends `data` in chunks of `chunk` bytes, then closes.
struct Client<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Everything the rewriter hands the server, and whether the stream ended
/// cleanly (`Ok`) or as a protocol error.
fn run(data: &[u8], chunk: usize) -> (Vec<u8>, io::Result<()>) {
    let mut rw = AuthorityRewrite::new(Client { data, chunk });
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: every poll consumes client bytes or yields output or ends.
    for _ in 0..(data.len() + 16) * 4 {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut rw).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return (out, Ok(())),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => return (out, Err(e)),
            Poll::Pending => panic!("an in-memory client never blocks"),
        }
    }
    panic!("the frame reader made no progress");
}

/// Input: byte 0 picks the read chunk size, the rest follows the client
/// preface. The result does not depend on how reads are chunked; a stream
/// accepted once is a fixed point (rewriting the output changes nothing).
pub fn frame_reader(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let mut stream = CLIENT_PREFACE.to_vec();
    stream.extend_from_slice(rest);
    let (out, result) = run(&stream, usize::from(chunk) + 1);
    let (whole_out, whole_result) = run(&stream, stream.len().max(1));
    assert_eq!(
        result.is_ok(),
        whole_result.is_ok(),
        "chunking changed the verdict"
    );
    if let (Ok(()), Ok(())) = (&result, &whole_result) {
        assert_eq!(out, whole_out, "chunking changed the output");
        let (again, again_result) = run(&out, out.len().max(1));
        assert!(
            again_result.is_ok(),
            "rewritten stream refused: {again_result:?}"
        );
        assert_eq!(again, out, "rewriting is not idempotent");
    }
}
