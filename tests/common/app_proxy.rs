//! Shared by the application-access tests (`e2e_app_proxy*.rs`): the real
//! auth service, a Python upstream that verifies the `Sigil-Jwt-Assertion`
//! against `/jwks.json`, the real `sigil proxy` (joined as its own bot) and
//! `curl` with an agent's outputs.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const HOST: &str = "grafana.example.test";

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Setup {
    pub auth: Auth,
    pub work: tempfile::TempDir,
    pub port: u16,
    pub _upstream: Kill,
    pub _proxy: Kill,
}

impl Setup {
    pub fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A bot with `role`, joined once; the directory of its `identity` output.
    pub fn client(&self, bot: &str, role: &str) -> PathBuf {
        self.client_with_ttl(bot, role, "1h")
    }

    pub fn client_with_ttl(&self, bot: &str, role: &str, ttl: &str) -> PathBuf {
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
    pub fn curl(&self, ident: Option<&Path>, extra: &[&str], urls: &[&str]) -> Output {
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
    pub fn get(&self, ident: &Path, path: &str) -> (u16, String) {
        let o = self.curl(
            Some(ident),
            &["-w", "\n%{http_code}"],
            &[&format!("https://{HOST}:PORT{path}")],
        );
        let t = stdout(&o);
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn py_client(&self, mode: &str, ident: &Path) -> Command {
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

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn start() -> Setup {
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
             agent_config: proxy-agent.yaml\ntimeouts: {{upstream_response: 2s}}\nmax_body_bytes: 1048576\n\
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

pub fn work_dup(auth: &Auth) -> Output {
    let p = auth.dir.path().join("dup.yaml");
    std::fs::write(
        &p,
        "kind: app\nversion: v1\nmetadata: {name: other}\n\
         spec: {upstream: \"http://127.0.0.1:1\", public_addr: GRAFANA.example.test}\n",
    )
    .expect("write");
    auth.admin(&["create", "-f", p.to_str().expect("utf8")])
}

pub fn proxy_log(s: &Setup) -> String {
    std::fs::read_to_string(s.dir("proxy.log")).unwrap_or_default()
}

/// Runs `mode` (hold or ws) on an open connection, adds a lock (`lock`:
/// `sigil locks add` arguments naming its target), and returns
/// the seconds the proxy took to close the connection after the lock.
pub fn closed_after_lock(s: &Setup, ident: &Path, mode: &str, lock: &[&str], expect: &str) -> f64 {
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
        .ok(&[&["locks", "add"][..], lock, &["--message", "e2e"]].concat());
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
