//! `AuthorityRewrite` against real `h2` servers and clients, raw frames, and garbage.

use std::time::Duration;

use h2::RecvStream;
use httlib_hpack::Encoder;
use http::{Request, Response};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::mpsc;

use super::AuthorityRewrite;
use super::frame::{CONTINUATION, END_HEADERS, END_STREAM, HEADERS, PADDED, PREFACE, PRIORITY};

const SETTINGS: u8 = 0x4;
const RST_STREAM: u8 = 0x3;
const DATA: u8 = 0x0;
const ACK: u8 = 0x1;
const GRPCIO_AUTHORITY: &str = "%2Ftmp%2Fx.sock";

/// What a test server saw of one request.
#[derive(Debug)]
struct Seen {
    authority: Option<String>,
    header_len: usize,
    body: Vec<u8>,
}

/// A raw frame as read back by a test client.
#[derive(Debug)]
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = len[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// An `h2` server answering every request with "echo: <body>", reporting
/// what it saw.
async fn serve<T>(io: T, seen: mpsc::UnboundedSender<Seen>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let authority = req.uri().authority().map(|a| a.to_string());
            let header_len = req.headers().get("x-big").map_or(0, |v| v.len());
            let body = read_body(req.into_body()).await;
            let reply = [b"echo: ".as_slice(), &body].concat();
            let _ = seen.send(Seen {
                authority,
                header_len,
                body,
            });
            if let Ok(mut send) = respond.send_response(Response::new(()), false) {
                let _ = send.send_data(Bytes::from(reply), true);
            }
        });
    }
}

async fn read_body(mut body: RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<RawFrame> {
    let mut h = [0u8; 9];
    rd.read_exact(&mut h).await?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0; len];
    rd.read_exact(&mut payload).await?;
    Ok(RawFrame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Send raw client bytes to an `h2` server (wrapped or not) and collect the
/// server's answer frames until each of `streams` got HEADERS or RST_STREAM.
async fn raw_exchange(wrap: bool, input: Vec<u8>, streams: &[u32]) -> (Vec<Seen>, Vec<RawFrame>) {
    let (client, server) = duplex(1 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = if wrap {
        tokio::spawn(serve(AuthorityRewrite::new(server), tx))
    } else {
        tokio::spawn(serve(server, tx))
    };
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(&input).await.expect("write");
    let mut answered = Vec::new();
    let mut frames = Vec::new();
    let collect = async {
        while !streams.iter().all(|s| answered.contains(s)) {
            let f = read_frame(&mut rd).await.expect("server frame");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                wr.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("ack");
            }
            if (f.kind == HEADERS || f.kind == RST_STREAM) && !answered.contains(&f.stream) {
                answered.push(f.stream);
            }
            frames.push(f);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), collect)
        .await
        .expect("the server answered every stream");
    drop((rd, wr));
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let mut seen = Vec::new();
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    (seen, frames)
}

/// Two grpcio-style requests: the first adds the bad `:authority` (Huffman)
/// to the dynamic table, the second (after a table size update) refers to it
/// by index only.
fn grpcio_style_requests() -> Vec<u8> {
    let mut enc = Encoder::default();
    let fields = |enc: &mut Encoder<'_>, dst: &mut Vec<u8>| {
        let best = Encoder::BEST_FORMAT;
        let huff_idx = Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING | best;
        for (name, value, flags) in [
            (":method", "POST", best),
            (":scheme", "http", best),
            (":path", "/SpiffeWorkloadAPI/FetchX509SVID", huff_idx),
            (":authority", GRPCIO_AUTHORITY, huff_idx),
            ("te", "trailers", best | Encoder::WITH_INDEXING),
            ("content-type", "application/grpc", huff_idx),
        ] {
            let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags);
            enc.encode(field, dst).expect("encode");
        }
    };
    let mut first = Vec::new();
    fields(&mut enc, &mut first);
    let mut second = Vec::new();
    enc.update_max_dynamic_size(256, &mut second)
        .expect("size update");
    fields(&mut enc, &mut second);
    // The value never travels in clear: Huffman first, then an index.
    assert!(!first.windows(6).any(|w| w == b"x.sock"));
    assert!(second.len() < 12, "second block is indexed: {second:?}");

    let mut out = client_start();
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    out
}

#[tokio::test]
async fn grpcio_authority_is_rewritten_and_dynamic_table_followed() {
    let (seen, frames) = raw_exchange(true, grpcio_style_requests(), &[1, 3]).await;
    assert!(
        !frames.iter().any(|f| f.kind == RST_STREAM),
        "no stream was reset: {frames:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.authority.as_deref(), Some("localhost"));
    }
}

#[tokio::test]
async fn without_the_wrapper_h2_resets_the_streams() {
    let (seen, frames) = raw_exchange(false, grpcio_style_requests(), &[1, 3]).await;
    assert!(seen.is_empty(), "no request reached the handler: {seen:?}");
    for stream in [1, 3] {
        let rst = frames
            .iter()
            .find(|f| f.kind == RST_STREAM && f.stream == stream)
            .expect("stream reset");
        assert_eq!(rst.payload, 1u32.to_be_bytes(), "PROTOCOL_ERROR");
    }
}

#[tokio::test]
async fn h2_client_works_through_the_wrapper() {
    let (client, server) = duplex(1 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(serve(AuthorityRewrite::new(server), tx));
    let (mut client, conn) = h2::client::handshake(client).await.expect("handshake");
    tokio::spawn(conn);
    // Several requests so the client's encoder uses its dynamic table; the
    // last header block is larger than one frame (HEADERS + CONTINUATION in
    // both directions of the rewrite).
    for (i, big) in [0usize, 10, 40_000].into_iter().enumerate() {
        client = client.ready().await.expect("ready");
        let req = Request::post("http://workload.local/echo")
            .header("x-big", "b".repeat(big.max(1)))
            .header("user-agent", "test")
            .body(())
            .expect("request");
        let (resp, mut send) = client.send_request(req, false).expect("send");
        send.send_data(Bytes::from(format!("hello {i}")), true)
            .expect("body");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = read_body(resp.into_body()).await;
        assert_eq!(body, format!("echo: hello {i}").as_bytes());
        let seen = rx.recv().await.expect("seen");
        assert_eq!(seen.authority.as_deref(), Some("workload.local"));
        assert_eq!(seen.header_len, big.max(1));
        assert_eq!(seen.body, format!("hello {i}").as_bytes());
    }
}

/// Everything the wrapper hands the server for `input`, or its error.
async fn rewrite_all(input: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let (mut client, server) = duplex(1 << 20);
    client.write_all(&input).await?;
    client.shutdown().await?;
    let mut wrapped = AuthorityRewrite::new(server);
    let mut out = Vec::new();
    wrapped.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn malformed_client_streams_are_errors() {
    let start = client_start();
    let with = |extra: Vec<u8>| [start.clone(), extra].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP/1.1 instead of a preface",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "bad HPACK index",
            with(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])),
        ),
        (
            "truncated HPACK string",
            with(frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])),
        ),
        (
            "padding too long",
            with(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82])),
        ),
        (
            "interleaved block",
            with([frame(HEADERS, 0, 1, &[0x82]), frame(DATA, 0, 1, b"x")].concat()),
        ),
        (
            "CONTINUATION on another stream",
            with(
                [
                    frame(HEADERS, 0, 1, &[0x82]),
                    frame(CONTINUATION, END_HEADERS, 3, &[]),
                ]
                .concat(),
            ),
        ),
        (
            "oversized size update",
            with(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f, 0x82])),
        ),
        (
            "closed mid-frame",
            with(frame(DATA, 0, 1, b"abc")[..7].to_vec()),
        ),
        (
            "garbage frame header",
            with(b"\x00\x00\x03\x01\x04\x00\x00\x00\x01\xff\xff\xff".to_vec()),
        ),
    ];
    for (what, input) in cases {
        let err = rewrite_all(input).await.expect_err(what);
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ),
            "{what}: {err}"
        );
    }
    // A clean close at a frame boundary is a plain EOF.
    let ok = with(frame(DATA, 0, 1, b"abc"));
    assert_eq!(rewrite_all(ok.clone()).await.expect("clean"), ok);
}

#[tokio::test]
async fn random_garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        let mut input = client_start();
        for _ in 0..600 {
            // xorshift64: deterministic, no extra dependency.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            input.push((x >> 24) as u8);
        }
        let _ = rewrite_all(input).await;
    }
}

/// A header block split over HEADERS (padded, with PRIORITY) and two
/// CONTINUATION frames, re-emitted as frames a fresh decoder can read.
#[tokio::test]
async fn continuation_frames_are_joined_and_resplit() {
    let mut enc = Encoder::default();
    let mut block = Vec::new();
    let big = "v".repeat(20_000);
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/x"),
        (":authority", GRPCIO_AUTHORITY),
        ("x-big", big.as_str()),
    ] {
        let flags = Encoder::WITH_INDEXING | Encoder::HUFFMAN_VALUE;
        let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags);
        enc.encode(field, &mut block).expect("encode");
    }
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut headers = vec![3u8, 0, 0, 0, 0, 16];
    headers.extend_from_slice(a);
    headers.extend_from_slice(&[0, 0, 0]);
    let mut input = client_start();
    input.extend(frame(HEADERS, END_STREAM | PADDED | PRIORITY, 1, &headers));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));

    let out = rewrite_all(input.clone()).await.expect("rewritten");
    let mut rd = &out[client_start().len()..];
    let mut joined = Vec::new();
    let mut kinds = Vec::new();
    while !rd.is_empty() {
        let f = read_frame(&mut rd).await.expect("frame");
        assert!(f.payload.len() <= 16_384);
        assert_eq!(f.stream, 1);
        kinds.push((f.kind, f.flags));
        joined.extend(f.payload);
    }
    assert_eq!(
        kinds,
        vec![(HEADERS, END_STREAM), (CONTINUATION, END_HEADERS)]
    );
    let fields = loona_hpack::Decoder::new()
        .decode(&joined)
        .expect("stateless block");
    let want: Vec<(Vec<u8>, Vec<u8>)> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/x"),
        (":authority", "localhost"),
        ("x-big", big.as_str()),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(fields, want);

    // And a real server takes it.
    let (seen, frames) = raw_exchange(true, input, &[1]).await;
    assert!(!frames.iter().any(|f| f.kind == RST_STREAM), "{frames:?}");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authority.as_deref(), Some("localhost"));
    assert_eq!(seen[0].header_len, 20_000);
}

#[test]
fn wrapper_is_unpin_send_and_sync() {
    // Servers take the stream as is and move it across tasks.
    fn check<T: Unpin + Send + Sync + 'static>() {}
    check::<AuthorityRewrite<DuplexStream>>();
}
