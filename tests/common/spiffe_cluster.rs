//! A Sigil cluster for SPIFFE tests (e2e_federation): an auth service with a
//! trust domain of its own and the `https_spiffe` bundle endpoint, and an agent
//! serving the Workload API to an identity that federates with a peer; the
//! Rust `spiffe` crate client (examples/spiffe_client) on its socket, and
//! mTLS between two workloads with openssl.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// One cluster: auth service (with the https_spiffe bundle endpoint) and an
/// agent serving the Workload API.
pub struct Cluster {
    pub td: String,
    pub auth: Auth,
    pub bundle_port: u16,
    pub dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Cluster {
    pub fn start(td: &str, peer: &str, extra: &[&str]) -> Cluster {
        let bundle_port = free_port();
        let listen = format!("127.0.0.1:{bundle_port}");
        let mut args = vec![
            "--cluster-name",
            td,
            "--spiffe-bundle-endpoint-listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let auth = Auth::start_with(&args);
        Cluster {
            td: td.to_string(),
            auth,
            bundle_port,
            dir: tempfile::tempdir().expect("tempdir"),
            agent: None,
        }
        .with_workload(peer)
    }

    /// A cluster around an auth service already running (`td` its trust domain).
    pub fn on(auth: Auth, td: &str, peer: &str) -> Cluster {
        Cluster {
            td: td.to_string(),
            auth,
            bundle_port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
            agent: None,
        }
        .with_workload(peer)
    }

    pub fn with_workload(mut self, peer: &str) -> Cluster {
        self.auth.create(
            "role.yaml",
            "kind: role\nversion: v1\nmetadata: {name: fed-role}\nspec:\n  allow:\n    logins: [svc]\n    workload_identity_labels: {env: [fed]}\n  options: {max_ttl: 2h}\n",
        );
        self.auth.create(
            "app.yaml",
            &format!(
                "kind: workload_identity\nversion: v1\nmetadata: {{name: app, labels: {{env: fed}}}}\nspec:\n  spiffe:\n    id: /app\n    federates_with: [{peer}]\n"
            ),
        );
        let out = self.auth.ok(&[
            "bots", "add", "fed-bot", "--roles", "fed-role", "--format", "json",
        ]);
        let token = serde_json::from_str::<serde_json::Value>(&out).expect("json")["token"]
            .as_str()
            .expect("token")
            .to_string();
        let cfg = format!(
            "version: v1
auth_server: {addr}
ca_pins: [{pin}]
onboarding: {{join_method: token, token: {token}}}
storage: {{type: directory, path: {storage}}}
outputs:
  - type: workload-identity-x509
    selector: {{name: app}}
    destination: {{type: directory, path: {x509}}}
services:
  - type: workload-api
    listen: unix://{sock}
    selector: {{labels: {{env: fed}}}}
",
            addr = self.auth.addr(),
            pin = self.auth.pin,
            storage = self.dir.path().join("storage").display(),
            x509 = self.dir.path().join("x509").display(),
            sock = self.sock().display(),
        );
        let cfg_path = self.dir.path().join("agent.yaml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        self.agent = Some(
            Command::new(sigil_bin())
                .args(["agent", "start", "--config"])
                .arg(&cfg_path)
                .env("SIGIL_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start agent"),
        );
        let (sock, svid) = (self.sock(), self.dir.path().join("x509/svid.pem"));
        wait_until(
            "the Workload API socket and outputs",
            Duration::from_secs(60),
            || sock.exists() && svid.exists(),
        );
        self
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("run/workload.sock")
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The Rust `spiffe` crate client on this cluster's Workload API.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(client_bin())
            .arg("--socket")
            .arg(self.sock())
            .args(args)
            .output()
            .expect("run spiffe_client")
    }

    pub fn client_json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.client(args);
        assert!(
            o.status.success(),
            "spiffe_client {args:?} on {}: {}\nagent log:\n{}\nauth log:\n{}",
            self.td,
            text(&o),
            self.agent_log(),
            self.auth.log()
        );
        serde_json::from_str(stdout(&o).trim()).expect("json line")
    }

    /// Trust domains of the Workload API's X.509 and JWT bundles.
    pub fn bundle_domains(&self) -> (Vec<String>, Vec<String>) {
        let v = self.client_json(&["bundles"]);
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        (list("x509"), list("jwt"))
    }

    pub fn has_bundle(&self, td: &str) -> bool {
        let id = td.to_string();
        let (x, j) = self.bundle_domains();
        x.contains(&id) && j.contains(&id)
    }

    /// PEM SVID, key and all bundles from the Workload API, in `dir`.
    pub fn pem(&self, dir: &Path) -> serde_json::Value {
        std::fs::create_dir_all(dir).unwrap();
        self.client_json(&["pem", dir.to_str().unwrap()])
    }

    pub fn spiffe_ca_pem(&self) -> String {
        self.auth.ok(&["ca", "export", "--type", "spiffe"])
    }

    /// Create or replace a `spiffe_federation`.
    pub fn federate(&self, name: &str, yaml: &str) {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        self.auth
            .ok(&["create", "--force", "-f", p.to_str().unwrap()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

pub fn client_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let debug = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = debug.join("examples/spiffe_client");
    assert!(
        bin.exists(),
        "{} missing: cargo test builds examples",
        bin.display()
    );
    bin
}

/// One TLS 1.3 connection with client certificates: `openssl s_server` with the
/// SVID, key and bundles in `server`, `openssl s_client` with those in `client`.
/// Whether both sides verified the other, and both sides' output.
pub fn mtls(server: &Path, client: &Path) -> (bool, String) {
    let port = free_port();
    let mut srv = Command::new("openssl")
        .args(["s_server", "-accept", &port.to_string(), "-naccept", "1"])
        .args(["-Verify", "1", "-verify_return_error", "-tls1_3"])
        .arg("-cert")
        .arg(server.join("svid.pem"))
        .arg("-key")
        .arg(server.join("key.pem"))
        .arg("-CAfile")
        .arg(server.join("bundle.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_server");
    std::thread::sleep(Duration::from_millis(500));
    let cli = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-verify_return_error", "-tls1_3"])
        .arg("-cert")
        .arg(client.join("svid.pem"))
        .arg("-key")
        .arg(client.join("key.pem"))
        .arg("-CAfile")
        .arg(client.join("bundle.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    std::thread::sleep(Duration::from_millis(300));
    let _ = srv.kill();
    let srv = srv.wait_with_output().expect("s_server output");
    let (c, s) = (text(&cli), text(&srv));
    let ok = c.contains("Verify return code: 0 (ok)")
        && s.contains("CIPHER is")
        && !s.to_lowercase().contains("error");
    (ok, format!("client:\n{c}\nserver:\n{s}"))
}
