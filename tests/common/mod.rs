//! Test harness: starts the real `sigil` binary as processes.
#![allow(dead_code)]

pub mod app_proxy;
pub mod https;
pub mod kube_apiserver;
pub mod oidc_issuer;
pub mod postgres;
pub mod rotation;
pub mod spiffe_cluster;
pub mod sshd;
pub mod sts;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sigil_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sigil")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /readyz` on a server's public listener: (HTTP status, body).
pub fn readyz(auth: &Auth) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "-m", "3", "-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/readyz", auth.public_port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn text(o: &Output) -> String {
    format!(
        "exit={:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

/// A running auth service on its own data dir and ports.
pub struct Auth {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    pub public_port: u16,
    child: Option<Child>,
    pub pin: String,
    /// Extra `sigil auth start` flags (e.g. --outbound-ca-file, --sts-endpoint).
    pub extra_args: Vec<String>,
    /// Extra environment variables of the auth service (e.g. SOFTHSM2_CONF).
    pub envs: Vec<(String, String)>,
}

impl Auth {
    pub fn start() -> Auth {
        Auth::start_with(&[])
    }

    /// Start with extra `sigil auth start` flags.
    pub fn start_with(extra_args: &[&str]) -> Auth {
        Auth::start_with_env(extra_args, &[])
    }

    /// Start with extra `sigil auth start` flags and environment variables.
    pub fn start_with_env(extra_args: &[&str], envs: &[(&str, &str)]) -> Auth {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut a = Auth {
            data,
            dir,
            port: free_port(),
            public_port: free_port(),
            child: None,
            pin: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        a.spawn();
        a
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("auth.log")).expect("log");
        let child = Command::new(sigil_bin())
            .args(["auth", "start", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--public-listen",
                &format!("127.0.0.1:{}", self.public_port),
            ])
            .args(if self.extra_args.iter().any(|a| a == "--cluster-name") {
                &[][..]
            } else {
                &["--cluster-name", "example.test"][..]
            })
            .args(&self.extra_args)
            // Before `envs`, so a test may ask for more (e.g. debug) logging.
            .env("SIGIL_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sigil auth");
        self.child = Some(child);
        let sock = self.data.join("admin.sock");
        let mut exited = false;
        wait_until("the auth service", Duration::from_secs(30), || {
            // Another test may have bound the port between free_port() and
            // the bind: the service then exits; try again on fresh ports.
            exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            exited
                || (sock.exists() && self.admin(&["status", "--format", "json"]).status.success())
        });
        if exited {
            assert!(
                self.log().contains("address") || self.log().contains("bind"),
                "the auth service exited at start:\n{}",
                self.log()
            );
            self.port = free_port();
            self.public_port = free_port();
            return self.spawn();
        }
        let st: serde_json::Value =
            serde_json::from_str(&stdout(&self.admin(&["status", "--format", "json"])))
                .expect("status json");
        self.pin = st["ca_pin"].as_str().expect("ca_pin").to_string();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9`: no graceful shutdown, as when the machine dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("auth.log")).unwrap_or_default()
    }

    /// `sigil --data-dir DATA args...`
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(sigil_bin())
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("run sigil")
    }

    /// `sigil --auth-server ADDR --identity IDENTITY args...`: a remote admin
    /// call with an agent's `identity` output.
    pub fn remote(&self, identity: &Path, args: &[&str]) -> Output {
        Command::new(sigil_bin())
            .args(["--auth-server", &self.addr(), "--identity"])
            .arg(identity)
            .args(args)
            .output()
            .expect("run sigil")
    }

    /// Like `admin` but must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(o.status.success(), "sigil {args:?} failed:\n{}", text(&o));
        stdout(&o)
    }

    pub fn create(&self, name: &str, yaml: &str) {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).expect("write resource");
        self.ok(&["create", "-f", p.to_str().expect("utf8")]);
    }

    /// A role with the given logins and a bot holding it; returns a join token.
    pub fn bot(&self, bot: &str, logins: &[&str]) -> String {
        let role = format!("{bot}-role");
        self.create(
            &format!("{role}.yaml"),
            &format!(
                "kind: role\nversion: v1\nmetadata: {{name: {role}}}\nspec:\n  allow:\n    logins: [{}]\n  options: {{max_ttl: 2h}}\n",
                logins.join(", ")
            ),
        );
        let out = self.ok(&["bots", "add", bot, "--roles", &role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
        v["token"].as_str().expect("token").to_string()
    }

    pub fn audit(&self, event_type: &str) -> Vec<serde_json::Value> {
        stdout(&self.admin(&["audit", "ls", "--type", event_type, "--format", "json"]))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("audit json line"))
            .collect()
    }

    pub fn instances(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["bots", "instances", "ls", "--format", "json"]);
        serde_json::from_str(&out).expect("instances json")
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An agent's directories.
pub struct AgentDirs {
    pub dir: tempfile::TempDir,
    pub storage: PathBuf,
    pub out: PathBuf,
}

impl AgentDirs {
    pub fn new() -> AgentDirs {
        let dir = tempfile::tempdir().expect("tempdir");
        AgentDirs {
            storage: dir.path().join("storage"),
            out: dir.path().join("out"),
            dir,
        }
    }

    pub fn command(&self, auth: &Auth, token: Option<&str>, oneshot: bool) -> Command {
        let mut c = Command::new(sigil_bin());
        c.args([
            "agent",
            "start",
            "--auth-server",
            &auth.addr(),
            "--ca-pin",
            &auth.pin,
        ])
        .arg("--storage")
        .arg(&self.storage)
        .arg("--output")
        .arg(format!("identity:{}", self.out.display()))
        .args(["--credential-ttl", "1h"]);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        if oneshot {
            c.arg("--oneshot");
        }
        c
    }

    pub fn oneshot(&self, auth: &Auth, token: Option<&str>) -> Output {
        self.command(auth, token, true).output().expect("run agent")
    }

    pub fn generation(&self) -> u64 {
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.storage.join("credential.json"))
                .expect("credential.json"),
        )
        .expect("json");
        c["generation"].as_u64().expect("generation")
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}
