//! End to end: application access through `sigil proxy`. The real `sigil`
//! auth service, the real proxy (joined as its own bot), a Python upstream
//! that verifies the `Sigil-Jwt-Assertion` against the auth service's
//! `/jwks.json`, and the real `curl` with an agent's `identity` output.

mod common;

use common::app_proxy::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn app_access_through_the_proxy() {
    let s = start();
    let ci = s.client("ci", "app-user");
    let dev = s.client("dev", "dev-user");

    // Allowed: the upstream verified the JWT against /jwks.json.
    let (code, body) = s.get(&ci, "/dash?x=1");
    assert_eq!(code, 200, "{body}\n{}", proxy_log(&s));
    let v: serde_json::Value = serde_json::from_str(&body).expect("upstream json");
    assert_eq!(v["claims"]["sigil_bot"], "ci");
    assert_eq!(v["claims"]["app"], "grafana");
    assert_eq!(v["claims"]["roles"], serde_json::json!(["app-user"]));
    assert_eq!(v["claims"]["aud"], format!("https://{HOST}"));
    assert_eq!(v["user"], "ci", "rewrite_headers");
    assert_eq!(v["path"], "/dash?x=1");
    // The signing is on record, naming the proxy that asked.
    let signed = s.auth.audit("app.jwt_signed");
    assert!(
        signed
            .iter()
            .any(|e| e["fields"]["bot"] == "ci" && e["fields"]["proxy"] == "proxy"),
        "{signed:?}"
    );

    // A client's own assertion is stripped: the upstream sees exactly one, valid.
    let o = s.curl(
        Some(&ci),
        &["-H", "Sigil-Jwt-Assertion: forged", "-w", "\n%{http_code}"],
        &[&format!("https://{HOST}:PORT/")],
    );
    assert!(stdout(&o).ends_with("\n200"), "{}", text(&o));

    // Wrong labels: 403, the reason only in the audit log.
    let (code, body) = s.get(&dev, "/");
    assert_eq!(code, 403);
    assert!(!body.contains("app_labels"), "{body}");

    // Only WebSocket upgrades pass: h2c would be a raw HTTP/2 connection to
    // the upstream, past per-request decisions and audit. TRACE would echo
    // the JWT back; CONNECT would open a tunnel.
    let o = s.curl(
        Some(&ci),
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: h2c",
            "-H",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
        ],
        &[&format!("https://{HOST}:PORT/")],
    );
    assert_eq!(stdout(&o), "400", "{}", text(&o));
    let o = s.curl(
        Some(&ci),
        &["-X", "TRACE", "-o", "/dev/null", "-w", "%{http_code}"],
        &[&format!("https://{HOST}:PORT/")],
    );
    assert_eq!(stdout(&o), "405", "{}", text(&o));

    // Unknown app: 404.
    let o = s.curl(
        Some(&ci),
        &["-o", "/dev/null", "-w", "%{http_code}"],
        &["https://unknown.example.test:PORT/"],
    );
    assert_eq!(stdout(&o), "404", "{}", text(&o));

    // No SNI (an IP address dialled): the session names no app, 421.
    let o = s.curl(
        Some(&ci),
        &[
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {HOST}"),
        ],
        &["https://127.0.0.1:PORT/"],
    );
    assert_eq!(stdout(&o), "421", "{}", text(&o));
    // Both refusals are audited with the caller the certificate names.
    wait_until("404 and 421 audited", Duration::from_secs(10), || {
        let ev = s.auth.audit("app.request");
        [404, 421].iter().all(|code| {
            ev.iter()
                .any(|e| e["fields"]["status"] == *code && e["fields"]["bot"] == "ci")
        })
    });

    // Request bodies over max_body_bytes (1 MiB here): 413, with a length
    // or chunked; one under it passes.
    let body = s.dir("body.bin");
    std::fs::write(&body, vec![b'x'; 1024 * 1024 + 1]).expect("write");
    let at_body = format!("@{}", body.display());
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let o = s.curl(
            Some(&ci),
            &[
                &["--http1.1", "-o", "/dev/null", "-w", "%{http_code}"][..],
                extra,
                &["--data-binary", &at_body],
            ]
            .concat(),
            &[&format!("https://{HOST}:PORT/upload")],
        );
        assert_eq!(
            stdout(&o),
            "413",
            "{extra:?}: {}\n{}",
            text(&o),
            proxy_log(&s)
        );
    }
    let o = s.curl(
        Some(&ci),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "small",
        ],
        &[&format!("https://{HOST}:PORT/upload")],
    );
    assert_eq!(stdout(&o), "200", "{}", text(&o));

    // No client certificate: refused at the handshake (no HTTP status at all).
    let o = s.curl(
        None,
        &["-o", "/dev/null", "-w", "%{http_code}"],
        &[&format!("https://{HOST}:PORT/")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "000");

    // HTTP/2.
    let o = s.curl(
        Some(&ci),
        &[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ],
        &[&format!("https://{HOST}:PORT/")],
    );
    assert_eq!(stdout(&o), "2 200", "{}", text(&o));

    // HTTP/1.1 keep-alive: two requests, one connection.
    let o = s.curl(
        Some(&ci),
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} %{http_code}\n",
        ],
        &[
            &format!("https://{HOST}:PORT/a"),
            &format!("https://{HOST}:PORT/b"),
        ],
    );
    assert_eq!(stdout(&o), "1 200\n0 200\n", "{}", text(&o));

    // Smuggling: ambiguous framing is refused (400); both Content-Length and
    // Transfer-Encoding is read as chunked (RFC 9112 6.3) and the connection
    // closed after one response, so the tail never becomes a request.
    let o = s.py_client("smuggle", &ci).output().expect("python3");
    assert_eq!(
        stdout(&o),
        "te_cl 1 HTTP/1.1 200 OK \ntwo_cl 1 HTTP/1.1 400 Bad Request \n\
         te_not_chunked 1 HTTP/1.1 400 Bad Request \nte_http10 1 HTTP/1.1 400 Bad Request \n",
        "{}",
        text(&o)
    );
    // Oversized headers: 431.
    let o = s.py_client("bigheader", &ci).output().expect("python3");
    assert!(stdout(&o).contains(" 431"), "{}", text(&o));

    // An upstream that hangs: 504 after the configured 2 s; others still served.
    let t = Instant::now();
    let (code, _) = s.get(&ci, "/hang");
    assert_eq!(code, 504);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(s.get(&ci, "/").0, 200);

    // Audit: allowed and denied requests, the denial with its reason.
    wait_until("app.request events", Duration::from_secs(10), || {
        let ev = s.auth.audit("app.request");
        ev.iter().any(|e| e.to_string().contains("\"status\":403"))
            && ev.iter().any(|e| e.to_string().contains("\"status\":200"))
    });
    let ev = s.auth.audit("app.request");
    let denial = ev
        .iter()
        .find(|e| e.to_string().contains("\"status\":403") && e.to_string().contains("\"dev\""))
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert!(denial.to_string().contains("app_labels"), "{denial}");

    // Role removed: the next request is refused.
    s.auth
        .ok(&["bots", "update", "ci", "--set-roles", "dev-user"]);
    assert_eq!(s.get(&ci, "/").0, 403);
    s.auth
        .ok(&["bots", "update", "ci", "--set-roles", "app-user"]);
    assert_eq!(s.get(&ci, "/").0, 200);
    // The JWT names the caller's current roles, not those of a cached one.
    s.auth
        .ok(&["bots", "update", "ci", "--set-roles", "app-user,dev-user"]);
    let (code, body) = s.get(&ci, "/");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("upstream json");
    assert_eq!(
        v["claims"]["roles"],
        serde_json::json!(["app-user", "dev-user"])
    );
}

#[test]
fn a_lock_closes_open_connections_and_websockets() {
    let s = start();
    let held = s.client("held", "app-user");
    let ws = s.client("wsbot", "app-user");
    let secs = closed_after_lock(&s, &held, "hold", &["--bot", "held"], "HTTP/1.1 200");
    assert!(
        secs <= 1.0,
        "closed {secs}s after the lock\n{}",
        proxy_log(&s)
    );
    // And the locked caller gets nothing more.
    assert_eq!(s.get(&held, "/").0, 403);

    let secs = closed_after_lock(
        &s,
        &ws,
        "ws",
        &["--bot", "wsbot"],
        "HTTP/1.1 101 Switching Protocols hello",
    );
    assert!(secs <= 1.0, "WebSocket closed {secs}s after the lock");

    // A locked proxy serves nobody: it fails closed (503) without a decision.
    let other = s.client("other", "app-user");
    assert_eq!(s.get(&other, "/").0, 200);
    s.auth.ok(&["locks", "add", "--bot", "proxy"]);
    wait_until("the locked proxy to refuse", Duration::from_secs(5), || {
        s.get(&other, "/").0 == 503
    });
}

#[test]
fn expired_or_foreign_client_certificates_are_refused_at_the_handshake() {
    let s = start();
    let short = s.client_with_ttl("short", "app-user", "1m");
    assert_eq!(s.get(&short, "/").0, 200);
    // Not signed by the cluster's client CA.
    let foreign = s.dir("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    let o = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=short",
            "-keyout",
            foreign.join("tls.key").to_str().expect("utf8"),
            "-out",
            foreign.join("tls.crt").to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let refused = |ident: &Path| {
        let o = s.curl(
            Some(ident),
            &["-o", "/dev/null", "-w", "%{http_code}"],
            &[&format!("https://{HOST}:PORT/")],
        );
        !o.status.success() && stdout(&o) == "000"
    };
    assert!(refused(&foreign));
    // The same identity once its certificate has expired.
    let not_after = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-enddate",
            "-in",
            short.join("tls.crt").to_str().expect("utf8"),
        ],
    );
    assert!(not_after.status.success());
    std::thread::sleep(Duration::from_secs(62));
    assert!(refused(&short), "{}", stdout(&not_after));
}

#[test]
fn application_tunnel_lets_a_plain_http_client_through() {
    let s = start();
    let out = s.auth.ok(&[
        "bots", "add", "tool", "--roles", "app-user", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let token = v["token"].as_str().expect("token");
    let tport = free_port();
    let cfg = s.dir("tunnel-agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\n\
             onboarding: {{join_method: token, token: {token}}}\n\
             storage: {{type: directory, path: {}}}\ncredential_ttl: 1h\nrenewal_interval: 1s\noutputs: []\n\
             services:\n  - type: application-tunnel\n    listen: 127.0.0.1:{tport}\n\
             \x20   app: {HOST}\n    proxy: 127.0.0.1:{}\n    proxy_ca_file: {}\n",
            s.auth.addr(),
            s.auth.pin,
            s.dir("tunnel-storage").display(),
            s.port,
            s.dir("proxy-ca.crt").display(),
        ),
    )
    .expect("write agent config");
    let _agent = Kill(
        Command::new(sigil_bin())
            .args(["agent", "start", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(s.dir("tunnel-agent.log")).expect("log"))
            .spawn()
            .expect("start the tunnel agent"),
    );
    // A plain HTTP client (no TLS, no certificate): the tunnel adds the bot's identity.
    let get = || {
        let o = Command::new("curl")
            .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{tport}/via-tunnel"))
            .output()
            .expect("curl");
        let t = stdout(&o);
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().to_string(), body.to_string())
    };
    let t = Instant::now();
    while get().0 != "200" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the tunnel: {:?}\n{}\n{}",
            get(),
            std::fs::read_to_string(s.dir("tunnel-agent.log")).unwrap_or_default(),
            proxy_log(&s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = get();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["claims"]["sigil_bot"], "tool");
    assert_eq!(v["path"], "/via-tunnel");
    // Not addressed to the tunnel: a rebound DNS name, or a cross-site page.
    for header in ["Host: evil.example", "Origin: http://evil.example"] {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                header,
            ])
            .arg(format!("http://127.0.0.1:{tport}/"))
            .output()
            .expect("curl");
        assert_eq!(stdout(&o), "403", "{header}: {}", text(&o));
    }
    // One local keep-alive connection across several renewals of the agent
    // (every second here): the tunnel presents a certificate of its own,
    // which no renewal supersedes, so every request goes through — none is
    // refused for racing a renewal.
    let o = Command::new("python3")
        .args([
            "-c",
            "import http.client,sys,time\n\
             c=http.client.HTTPConnection('127.0.0.1',int(sys.argv[1]),timeout=10)\n\
             for i in range(5):\n\
             \x20 c.request('GET','/keep-alive');r=c.getresponse();r.read();print(r.status,flush=True);time.sleep(1.2)\n",
        ])
        .arg(tport.to_string())
        .output()
        .expect("python3");
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["200"; 5],
        "{}\n{}",
        text(&o),
        proxy_log(&s)
    );
    // The proxy refuses an agent credential a renewal superseded (a copy
    // left behind), as every other call does — within its 5 s decision reuse.
    let stored = || -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(s.dir("tunnel-storage").join("credential.json"))
                .expect("credential.json"),
        )
        .expect("json")
    };
    let old = stored();
    let old_dir = s.dir("superseded");
    std::fs::create_dir_all(&old_dir).expect("mkdir");
    std::fs::write(
        old_dir.join("tls.crt"),
        old["cert_pem"].as_str().expect("cert"),
    )
    .expect("write");
    std::fs::write(
        old_dir.join("tls.key"),
        old["key_pem"].as_str().expect("key"),
    )
    .expect("write");
    wait_until("a renewal", Duration::from_secs(10), || {
        stored()["generation"].as_u64() > old["generation"].as_u64()
    });
    std::thread::sleep(Duration::from_secs(6));
    let (code, body) = s.get(&old_dir, "/");
    assert_eq!(code, 403, "{body}");
    // Reported in the proxy's next audit flush.
    wait_until(
        "the superseded denial audited",
        Duration::from_secs(15),
        || {
            s.auth.audit("app.request").iter().any(|e| {
                e["fields"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("superseded by a renewal"))
            })
        },
    );
    // A WebSocket through the tunnel; a lock on the bot closes it within
    // 1 s, and reaches tunnelled requests too.
    let mut ws = Command::new("python3")
        .arg(fixture("app_client.py"))
        .args(["ws", &tport.to_string(), "plain", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(ws.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    assert_eq!(
        first,
        "HTTP/1.1 101 Switching Protocols hello",
        "{}",
        proxy_log(&s)
    );
    // Still open after several renewals of the agent and past the proxy's
    // 5 s decision reuse: renewing does not cut a tunnelled WebSocket.
    std::thread::sleep(Duration::from_secs(7));
    writeln!(ws.stdin.as_mut().expect("stdin"), "echo").expect("echo");
    let again = lines.next().expect("a line").expect("utf8");
    assert_eq!(again, "again", "{}", proxy_log(&s));
    s.auth.ok(&["locks", "add", "--bot", "tool"]);
    writeln!(ws.stdin.as_mut().expect("stdin")).expect("go");
    let secs: f64 = lines
        .next()
        .expect("a line")
        .expect("utf8")
        .parse()
        .expect("seconds");
    let _ = ws.wait();
    assert!(
        secs <= 1.0,
        "tunnelled WebSocket closed {secs}s after the lock"
    );
    wait_until("the lock", Duration::from_secs(5), || get().0 == "403");
    // Non-loopback listen addresses are refused at start, naming the field.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace(&format!("127.0.0.1:{tport}"), "0.0.0.0:1"),
    )
    .expect("write");
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--config"])
        .arg(&cfg)
        .output()
        .expect("agent");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("services[0].listen"), "{}", text(&o));
}
