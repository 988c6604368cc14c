//! End to end: application access through `sigil proxy`. The real `sigil`
//! auth service, the real proxy (joined as its own bot), a Python upstream
//! that verifies the `Sigil-Jwt-Assertion` against the auth service's
//! `/jwks.json`, and the real `curl` with an agent's `identity` output.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "grafana.example.test";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    auth: Auth,
    work: tempfile::TempDir,
    port: u16,
    _upstream: Kill,
    _proxy: Kill,
}

impl Setup {
    fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A bot with `role`, joined once; the directory of its `identity` output.
    fn client(&self, bot: &str, role: &str) -> PathBuf {
        self.client_with_ttl(bot, role, "1h")
    }

    fn client_with_ttl(&self, bot: &str, role: &str, ttl: &str) -> PathBuf {
        let out = self
            .auth
            .ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
        let token = v["token"].as_str().expect("token");
        let dirs = self.dir(bot);
        let o = Command::new(sigil_bin())
            .args([
                "agent",
                "start",
                "--oneshot",
                "--auth-server",
                &self.auth.addr(),
            ])
            .args(["--ca-pin", &self.auth.pin, "--token", token])
            .arg("--storage")
            .arg(dirs.join("storage"))
            .arg("--output")
            .arg(format!("identity:{}", dirs.join("out").display()))
            .args(["--credential-ttl", ttl, "--renewal-interval", "30s"])
            .output()
            .expect("run agent");
        assert!(o.status.success(), "{}", text(&o));
        dirs.join("out")
    }

    /// `curl` through the proxy with `ident`'s certificate; extra args first.
    fn curl(&self, ident: Option<&Path>, extra: &[&str], urls: &[&str]) -> Output {
        let mut c = Command::new("curl");
        c.args(["-sS", "-m", "15", "--cacert"])
            .arg(self.dir("proxy-ca.crt"))
            .args([
                "--resolve",
                &format!("{HOST}:{}:127.0.0.1", self.port),
                "--resolve",
                &format!("unknown.example.test:{}:127.0.0.1", self.port),
            ]);
        if let Some(i) = ident {
            c.arg("--cert").arg(i.join("tls.crt"));
            c.arg("--key").arg(i.join("tls.key"));
        }
        c.args(extra);
        for u in urls {
            c.arg(u.replace("PORT", &self.port.to_string()));
        }
        c.output().expect("run curl")
    }

    /// (status, body) of one GET.
    fn get(&self, ident: &Path, path: &str) -> (u16, String) {
        let o = self.curl(
            Some(ident),
            &["-w", "\n%{http_code}"],
            &[&format!("https://{HOST}:PORT{path}")],
        );
        let t = stdout(&o);
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn py_client(&self, mode: &str, ident: &Path) -> Command {
        let mut c = Command::new("python3");
        c.arg(fixture("app_client.py"))
            .arg(mode)
            .arg(self.port.to_string())
            .arg(self.dir("proxy-ca.crt"))
            .arg(ident.join("tls.crt"))
            .arg(ident.join("tls.key"));
        c
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn start() -> Setup {
    let auth = Auth::start();
    let work = tempfile::tempdir().expect("tempdir");
    let up_port = free_port();
    let jwks = format!("https://127.0.0.1:{}/jwks.json", auth.public_port);
    let upstream = Command::new("python3")
        .arg(fixture("app_upstream.py"))
        .arg(up_port.to_string())
        .arg(&jwks)
        .arg(format!("https://{HOST}"))
        .stderr(std::fs::File::create(work.path().join("upstream.log")).expect("log"))
        .spawn()
        .expect("python3 (the test venv has PyJWT and cryptography)");
    let upstream = Kill(upstream);
    auth.create(
        "roles.yaml",
        "kind: role\nversion: v1\nmetadata: {name: app-proxy}\nspec: {allow: {app_server_labels: {env: prod}}}\n\
         ---\nkind: role\nversion: v1\nmetadata: {name: app-user}\nspec: {allow: {app_labels: {env: prod}}}\n\
         ---\nkind: role\nversion: v1\nmetadata: {name: dev-user}\nspec: {allow: {app_labels: {env: dev}}}\n",
    );
    auth.create(
        "app.yaml",
        &format!(
            "kind: app\nversion: v1\nmetadata: {{name: grafana, labels: {{env: prod}}}}\n\
             spec:\n  upstream: http://127.0.0.1:{up_port}\n  public_addr: {HOST}\n\
             \x20 rewrite_headers: {{X-Forwarded-User: \"{{{{ identity.name }}}}\"}}\n"
        ),
    );
    assert!(auth.ok(&["get", "apps"]).contains(HOST));
    // Another app on the same name is refused, naming the field.
    let dup = work_dup(&auth);
    assert!(
        !dup.status.success() && text(&dup).contains("spec.public_addr"),
        "{}",
        text(&dup)
    );
    // The proxy's server certificate (the operator's; any CA the clients trust).
    let w = |name: &str| work.path().join(name).display().to_string();
    std::fs::write(
        w("ext.cnf"),
        "subjectAltName=DNS:grafana.example.test,DNS:unknown.example.test\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext.cnf");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_key, ca_crt, key, csr, crt, ext) = (
        w("proxy-ca.key"),
        w("proxy-ca.crt"),
        w("proxy-tls.key"),
        w("proxy.csr"),
        w("proxy-tls.crt"),
        w("ext.cnf"),
    );
    for args in [
        [
            &["req", "-x509", "-days", "1", "-subj", "/CN=proxy-ca"][..],
            &ec,
            &["-keyout", &ca_key, "-out", &ca_crt],
        ]
        .concat(),
        [
            &["req", "-subj", "/CN=proxy"][..],
            &ec,
            &["-keyout", &key, "-out", &csr],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    ] {
        let o = run("openssl", &args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let out = auth.ok(&[
        "bots",
        "add",
        "proxy",
        "--roles",
        "app-proxy",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let token = v["token"].as_str().expect("token");
    let agent_cfg = work.path().join("proxy-agent.yaml");
    std::fs::write(
        &agent_cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\n\
             onboarding: {{join_method: token, token: {token}}}\n\
             storage: {{type: directory, path: {}}}\ncredential_ttl: 1h\noutputs: []\n",
            auth.addr(),
            auth.pin,
            work.path().join("proxy-storage").display()
        ),
    )
    .expect("write agent config");
    let port = free_port();
    let cfg = work.path().join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\ntls_cert_file: proxy-tls.crt\ntls_key_file: proxy-tls.key\n\
             agent_config: proxy-agent.yaml\ntimeouts: {{upstream_response: 2s}}\n\
             audit: {{allowed: all, flush_every: 200ms}}\n"
        ),
    )
    .expect("write proxy config");
    let proxy = Command::new(sigil_bin())
        .args(["proxy", "start", "--config"])
        .arg(&cfg)
        .env("SIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("proxy.log")).expect("log"))
        .spawn()
        .expect("start sigil proxy");
    let s = Setup {
        auth,
        work,
        port,
        _upstream: upstream,
        _proxy: Kill(proxy),
    };
    // Listening, with the client CAs from the auth service.
    let probe = s.client("probe", "dev-user");
    wait_until("the proxy", Duration::from_secs(30), || {
        s.get(&probe, "/").0 == 403
    });
    s
}

fn work_dup(auth: &Auth) -> Output {
    let p = auth.dir.path().join("dup.yaml");
    std::fs::write(
        &p,
        "kind: app\nversion: v1\nmetadata: {name: other}\n\
         spec: {upstream: \"http://127.0.0.1:1\", public_addr: GRAFANA.example.test}\n",
    )
    .expect("write");
    auth.admin(&["create", "-f", p.to_str().expect("utf8")])
}

fn proxy_log(s: &Setup) -> String {
    std::fs::read_to_string(s.dir("proxy.log")).unwrap_or_default()
}

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

/// Runs `mode` (hold or ws) on an open connection, locks `bot`, and returns
/// the seconds the proxy took to close the connection after the lock.
fn closed_after_lock(s: &Setup, ident: &Path, mode: &str, bot: &str, expect: &str) -> f64 {
    let mut child = s
        .py_client(mode, ident)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    assert!(first.contains(expect), "{first}\n{}", proxy_log(s));
    s.auth
        .ok(&["locks", "add", "--bot", bot, "--message", "e2e"]);
    writeln!(child.stdin.as_mut().expect("stdin")).expect("go");
    let secs: f64 = lines
        .next()
        .expect("a line")
        .expect("utf8")
        .parse()
        .expect("seconds");
    let _ = child.wait();
    secs
}

#[test]
fn a_lock_closes_open_connections_and_websockets() {
    let s = start();
    let held = s.client("held", "app-user");
    let ws = s.client("wsbot", "app-user");
    let secs = closed_after_lock(&s, &held, "hold", "held", "HTTP/1.1 200");
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
        "wsbot",
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
    // One local keep-alive connection across several renewals of the agent:
    // the proxy refuses a superseded agent credential, so the tunnel
    // reconnects with each new one and every request still goes through.
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
    // A lock on the bot reaches tunnelled requests too.
    s.auth.ok(&["locks", "add", "--bot", "tool"]);
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
