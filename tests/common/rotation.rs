//! A real auth service and a long-running agent (identity, X.509-SVID and JWT-SVID
//! outputs) for the CA rotation tests, and what they check with: openssl, ssh-keygen,
//! and a prober that keeps making mTLS calls and SVID checks while CAs change.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ROLE: &str = "kind: role
version: v1
metadata: {name: rot-role}
spec:
  allow:
    logins: [svc]
    workload_identity_labels: {env: [agent]}
    rules: [{resources: [role], verbs: [list, read]}]
  options: {max_ttl: 2h}
";

pub const SELF_ID: &str = "kind: workload_identity
version: v1
metadata: {name: rot-self, labels: {env: agent}}
spec:
  spiffe:
    id: /bot/{{ bot.name }}
";

/// Every CA type the auth service holds.
pub const TYPES: [&str; 8] = [
    "host",
    "client",
    "ssh-user",
    "ssh-host",
    "db-client",
    "spiffe",
    "jwt",
    "kubernetes",
];

pub struct Rig {
    pub auth: Auth,
    pub dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Rig {
    pub fn start() -> Rig {
        Rig::on(Auth::start())
    }

    /// An agent of a new bot on `auth`.
    pub fn on(auth: Auth) -> Rig {
        auth.create("role.yaml", ROLE);
        auth.create("self.yaml", SELF_ID);
        let token = bot_token(&auth, "rot-bot", "rot-role");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rig = Rig {
            auth,
            dir,
            agent: None,
        };
        let cfg = format!(
            "version: v1
auth_server: {addr}
ca_pins: [{pin}]
onboarding: {{join_method: token, token: {token}}}
storage: {{type: directory, path: {storage}}}
credential_ttl: 1h
renewal_interval: 30s
outputs:
  - type: identity
    destination: {{type: directory, path: {id}}}
  - type: workload-identity-x509
    selector: {{name: rot-self}}
    destination: {{type: directory, path: {x509}}}
  - type: workload-identity-jwt
    selector: {{name: rot-self}}
    audiences: [vault]
    destination: {{type: directory, path: {jwt}}}
",
            addr = rig.auth.addr(),
            pin = rig.auth.pin,
            storage = rig.storage().display(),
            id = rig.id().display(),
            x509 = rig.x509().display(),
            jwt = rig.jwt().display(),
        );
        let cfg_path = rig.dir.path().join("agent.yaml");
        std::fs::write(&cfg_path, cfg).expect("agent config");
        let log = std::fs::File::create(rig.dir.path().join("agent.log")).expect("log");
        rig.agent = Some(
            Command::new(sigil_bin())
                .args(["agent", "start", "--config"])
                .arg(&cfg_path)
                .env("SIGIL_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start agent"),
        );
        let (svid, jwt, identity) = (
            rig.x509().join("svid.pem"),
            rig.jwt().join("jwt_svid"),
            rig.id().join("identity"),
        );
        wait_until("the agent's outputs", Duration::from_secs(60), || {
            svid.exists() && jwt.exists() && identity.exists()
        });
        rig
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    pub fn id(&self) -> PathBuf {
        self.dir.path().join("id")
    }
    pub fn x509(&self) -> PathBuf {
        self.dir.path().join("x509")
    }
    pub fn jwt(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
    pub fn generation(&self) -> u64 {
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.storage().join("credential.json")).unwrap_or_default(),
        )
        .unwrap_or_default();
        c["generation"].as_u64().unwrap_or(0)
    }

    pub fn rotate(&self, ca: &str, phase: &str) {
        self.auth
            .ok(&["ca", "rotate", "--type", ca, "--phase", phase]);
    }

    /// The CA's public material as `sigil ca export` prints it, split into PEM
    /// blocks or key lines (two during a rotation: the new one first).
    pub fn export(&self, ca: &str) -> Vec<String> {
        let out = self.auth.ok(&["ca", "export", "--type", ca]);
        if out.contains("-----BEGIN") {
            pems(&out)
        } else {
            out.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        }
    }

    pub fn kids(&self) -> Vec<String> {
        let out = self.auth.ok(&["ca", "export", "--type", "jwt"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("jwks");
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.auth.ok(&["ca", "status", "--format", "json"]))
            .expect("ca status json")
    }

    /// Waits for a renewal after now and then for `what` to hold.
    pub fn wait_agent(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let g = self.generation();
        wait_until(
            &format!("the agent to renew: {what}"),
            Duration::from_secs(60),
            || self.generation() > g && cond(),
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

pub fn bot_token(auth: &Auth, bot: &str, role: &str) -> String {
    let out = auth.ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string()
}

pub fn pems(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| format!("{}\n", &b[i..]))
        })
        .collect()
}

pub fn count_certs(path: &Path) -> usize {
    pems(&std::fs::read_to_string(path).unwrap_or_default()).len()
}

/// `openssl verify` of `cert` against exactly `ca_pem`.
pub fn signed_by(dir: &Path, ca_pem: &str, cert: &Path) -> bool {
    let ca = dir.join(format!("ca-{}.pem", std::process::id()));
    std::fs::write(&ca, ca_pem).expect("write ca");
    let o = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    o.status.success()
}

/// The key ID in a JWT's header.
pub fn jwt_kid(path: &Path) -> String {
    use base64::Engine as _;
    let token = std::fs::read_to_string(path).unwrap_or_default();
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim())
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The certificates a TLS server at `addr` presents (`openssl s_client -showcerts`).
pub fn served_certs(addr: &str) -> String {
    stdout(&run(
        "sh",
        &[
            "-c",
            &format!("openssl s_client -connect {addr} -showcerts </dev/null 2>/dev/null"),
        ],
    ))
}

/// `SHA256:…` of the CA that signed an OpenSSH certificate.
pub fn ssh_signing_ca(cert: &Path) -> String {
    let o = run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]);
    text(&o)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Signing CA: "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

/// `SHA256:…` of an OpenSSH public key line.
pub fn ssh_fingerprint(dir: &Path, line: &str) -> String {
    let p = dir.join("key.pub");
    std::fs::write(&p, format!("{line}\n")).expect("write key");
    let o = run("ssh-keygen", &["-l", "-f", p.to_str().unwrap()]);
    stdout(&o)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// What a workload and a remote admin do all the time: an mTLS call with the
/// identity file, and the SVID checked against the bundle. Every failure is kept.
pub struct Prober {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    rounds: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    pub fn start(rig: &Rig) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(Mutex::new(0));
        let (s, f, r) = (stop.clone(), failures.clone(), rounds.clone());
        let addr = rig.auth.addr();
        let identity = rig.id().join("identity");
        let (bundle, svid) = (rig.x509().join("bundle.pem"), rig.x509().join("svid.pem"));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let o = Command::new(sigil_bin())
                    .args(["--auth-server", &addr, "--identity"])
                    .arg(&identity)
                    .args(["get", "roles"])
                    .output()
                    .expect("run sigil");
                if !o.status.success() {
                    f.lock().unwrap().push(format!("mTLS call: {}", text(&o)));
                }
                // -partial_chain: an imported intermediate in the bundle is an anchor.
                let o = run(
                    "openssl",
                    &[
                        "verify",
                        "-partial_chain",
                        "-CAfile",
                        bundle.to_str().unwrap(),
                        svid.to_str().unwrap(),
                    ],
                );
                if !o.status.success() {
                    f.lock().unwrap().push(format!("SVID verify: {}", text(&o)));
                }
                *r.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Prober {
            stop,
            failures,
            rounds,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let rounds = *self.rounds.lock().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (rounds, failures)
    }
}
