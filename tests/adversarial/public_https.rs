//! The public HTTPS listener (health, bundles, JWKS): hostile HTTP/1 spoken
//! over a real TLS connection. Each is answered with an error status or cut
//! off within its bound, and the listener keeps serving.

use crate::common::*;
use crate::harness::*;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

static AUTH: Slot = Slot::new(None);

fn auth() -> Arc<Auth> {
    shared(&AUTH, Auth::start)
}

/// A TLS connection to the public listener speaking HTTP/1.1.
fn connect(auth: &Auth) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut cfg =
        sigil_agent::client::tls_config(std::slice::from_ref(&auth.pin), None).expect("tls config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", auth.public_port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends `request` raw; returns everything the server answers until it closes.
fn exchange(auth: &Auth, request: &[u8]) -> String {
    let mut s = connect(auth);
    // A server that stops reading (a refused oversized request) may reset
    // the connection under the write: then read what it answered, if anything.
    let _ = s.write_all(request).and_then(|_| s.flush());
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The listener still answers a plain health check.
fn still_serves(auth: &Auth) {
    let r = exchange(
        auth,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
}

/// attack: public HTTPS | slow headers: a request line and half the headers, then silence | connection closed within the 10 s header timeout (bounded), no answer
#[test]
fn slow_headers() {
    let auth = auth();
    let mut s = connect(&auth);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    s.flush().expect("flush");
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "kept {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("200 OK"), "{text}");
    still_serves(&auth);
}

/// attack: public HTTPS | one 1 MB header | 431 Request Header Fields Too Large, or closed without an answer
#[test]
fn oversized_header() {
    let auth = auth();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = exchange(&auth, req.as_bytes());
    assert!(matches!(status_of(&r), 431 | 0), "{r}");
    assert!(!r.contains("200 OK"), "{r}");
    still_serves(&auth);
}

/// attack: public HTTPS | 10 000 small headers | 431 Request Header Fields Too Large
#[test]
fn too_many_headers() {
    let auth = auth();
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let r = exchange(&auth, req.as_bytes());
    assert_eq!(status_of(&r), 431, "{r}");
    assert!(!r.contains("200 OK"), "{r}");
    still_serves(&auth);
}

/// attack: public HTTPS | HTTP/1.0 request without Host | answered as HTTP/1.1 200 for the public health path only, connection closed
#[test]
fn http_1_0_request() {
    let auth = auth();
    let r = exchange(&auth, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("ok\n"), "{r}");
    let r = exchange(&auth, b"GET /../../etc/passwd HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&r), 404, "{r}");
}

/// attack: public HTTPS | path traversal `/../../etc/passwd` | 404, no file content
#[test]
fn path_traversal() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 404, "{r}");
    assert!(!r.contains("root:"), "{r}");
}

/// attack: public HTTPS | percent-encoded traversal `/%2e%2e/%2e%2e/etc/passwd` | 404, no file content
#[test]
fn percent_encoded_traversal() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 404, "{r}");
    assert!(!r.contains("root:"), "{r}");
}

/// attack: public HTTPS | traversal dressed as a known route (`/.well-known/../../etc/passwd`) | 404
#[test]
fn traversal_below_a_known_route() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"GET /.well-known/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 404, "{r}");
}

/// attack: public HTTPS | a POST with a body to the JWKS route | 405 Method Not Allowed
#[test]
fn post_to_a_read_only_route() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"POST /jwks.json HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status_of(&r), 405, "{r}");
}

/// attack: public HTTPS | a malformed request line | 400 Bad Request
#[test]
fn malformed_request_line() {
    let auth = auth();
    let r = exchange(&auth, b"\x00\x01GARBAGE\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(!r.contains("200 OK"), "{r}");
    still_serves(&auth);
}

/// attack: public HTTPS | plaintext HTTP to the TLS port | connection closed, no HTTP answer
#[test]
fn plaintext_http_to_the_tls_port() {
    let auth = auth();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", auth.public_port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("HTTP/1.1 200"), "{text}");
    still_serves(&auth);
}

/// attack: public HTTPS | a NUL byte in the path | 400 Bad Request
#[test]
fn nul_in_the_path() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"GET /healthz\x00.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    still_serves(&auth);
}

/// attack: public HTTPS | request smuggling: Content-Length and Transfer-Encoding both set, a second request hidden in the body | 405 for the POST only; the hidden request is not answered
#[test]
fn content_length_and_transfer_encoding() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 405, "{r}");
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
}

/// attack: public HTTPS | an admin gRPC method called on the public listener (`POST /sigil.v1.AdminService/CreateResource`) | 404 Not Found: the public listener serves no gRPC
#[test]
fn admin_grpc_on_the_public_listener() {
    let auth = auth();
    let r = exchange(
        &auth,
        b"POST /sigil.v1.AdminService/CreateResource HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0",
    );
    assert_eq!(status_of(&r), 404, "{r}");
}

/// attack: public HTTPS | a 100 KB request path | 414 URI Too Long; the listener keeps serving
#[test]
fn very_long_uri() {
    let auth = auth();
    let req = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = exchange(&auth, req.as_bytes());
    assert_eq!(status_of(&r), 414, "{}", r.lines().next().unwrap_or(""));
    still_serves(&auth);
}
