//! End to end: SSH access with the stock OpenSSH server and client. Real
//! `sigil` auth service and agents (a host agent with an `ssh-host` output,
//! a client bot with an `identity` output), real `/usr/sbin/sshd` trusting
//! Sigil through the output's snippet, real `ssh`, `ssh-keygen` and Ansible.
//! Runs as root (sshd); logins are `root` (allowed) and `daemon` (refused).

mod common;

use common::sshd::{Sshd, require_sshd, safe_sigil_bin};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST_ROLE: &str = "kind: role
version: v1
metadata: {name: ssh-host}
spec:
  allow:
    ssh_host_principals: [\"*.example.test\", localhost, 127.0.0.1]
";

/// Logs in as root on hosts labelled env=prod only.
const DEPLOY_ROLE: &str = "kind: role
version: v1
metadata: {name: deploy}
spec:
  allow:
    logins: [root]
    node_labels: {env: prod}
  options: {max_ttl: 2h}
";

struct Cluster {
    auth: Auth,
    work: tempfile::TempDir,
    agents: Vec<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        require_sshd();
        let auth = Auth::start();
        auth.create("host-role.yaml", HOST_ROLE);
        auth.create("deploy-role.yaml", DEPLOY_ROLE);
        Cluster {
            auth,
            work: tempfile::tempdir().expect("tempdir"),
            agents: Vec::new(),
        }
    }

    fn token(&self, bot: &str, role: &str) -> String {
        let out = self
            .auth
            .ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
        v["token"].as_str().expect("token").to_string()
    }

    /// An agent config for a host bot with one ssh-host output.
    fn host_config(&self, bot: &str, principals: &str, labels: &str, extra: &str) -> PathBuf {
        let token = self.token(bot, "ssh-host");
        let d = self.work.path().join(bot);
        let cfg = d.with_extension("yaml");
        std::fs::write(
            &cfg,
            format!(
                "version: v1\nauth_server: {addr}\nca_pins: [{pin}]\n\
                 onboarding: {{join_method: token, token: {token}}}\n\
                 storage: {{type: directory, path: {d}/storage}}\n{extra}\
                 outputs:\n  - type: ssh-host\n    principals: {principals}\n    labels: {labels}\n\
                 \x20   destination: {{type: directory, path: {d}/ssh}}\n",
                addr = self.auth.addr(),
                pin = self.auth.pin,
                d = d.display(),
            ),
        )
        .expect("write agent config");
        cfg
    }

    /// Start a host agent (from a copy of sigil sshd accepts) and wait for its files.
    fn host(&mut self, bot: &str, principals: &str, labels: &str, extra: &str) -> PathBuf {
        let cfg = self.host_config(bot, principals, labels, extra);
        self.spawn_host(bot, &cfg)
    }

    /// Start a host agent on `cfg`; returns its ssh-host directory once written.
    fn spawn_host(&mut self, bot: &str, cfg: &Path) -> PathBuf {
        let log = std::fs::File::create(cfg.with_extension("log")).expect("log");
        let child = Command::new(safe_sigil_bin())
            .args(["agent", "start", "--config"])
            .arg(cfg)
            .env("SIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start host agent");
        self.agents.push(child);
        let dir = self.work.path().join(bot).join("ssh");
        let snippet = dir.join("sshd_config");
        wait_until("the ssh-host output", Duration::from_secs(60), || {
            snippet.exists()
        });
        dir
    }

    fn host_log(&self, bot: &str) -> String {
        std::fs::read_to_string(self.work.path().join(bot).with_extension("log"))
            .unwrap_or_default()
    }

    /// Join a client bot holding `deploy` once; its identity output is `.out`
    /// (ssh_config names files there by absolute path: keep it in place).
    fn client(&self, bot: &str) -> AgentDirs {
        let token = self.token(bot, "deploy");
        let agent = AgentDirs::new();
        let o = agent.oneshot(&self.auth, Some(&token));
        assert!(o.status.success(), "client join:\n{}", text(&o));
        agent
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ssh-keygen -Q -f KRL CERT`: true if the KRL revokes the certificate.
fn krl_revokes(krl: &Path, cert: &Path) -> bool {
    let o = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .expect("ssh-keygen -Q");
    let out = stdout(&o);
    assert!(
        out.contains(": ok") || out.contains("REVOKED"),
        "ssh-keygen -Q:\n{}",
        text(&o)
    );
    out.contains("REVOKED")
}

#[test]
fn per_host_access_locks_cut_off_and_ansible() {
    let mut c = Cluster::start();
    let prod_dir = c.host(
        "web-prod",
        "[web1.example.test, localhost, 127.0.0.1]",
        "{env: prod, team: web}",
        "",
    );
    let dev_dir = c.host("web-dev", "[localhost]", "{env: dev}", "");
    let prod = Sshd::start(c.work.path(), "prod", &prod_dir);
    let dev = Sshd::start(c.work.path(), "dev", &dev_dir);
    let client = c.client("deployer");
    let cfg = client.out.join("ssh_config");
    let cert = client.out.join("ssh.key-cert.pub");

    // What the host agent wrote.
    assert_eq!(mode(&prod_dir.join("ssh_host_ed25519_key")), 0o600);
    assert_eq!(mode(&prod_dir.join("access.json")), 0o600);
    let host_cert = run(
        "ssh-keygen",
        &[
            "-L",
            "-f",
            prod_dir
                .join("ssh_host_ed25519_key-cert.pub")
                .to_str()
                .unwrap(),
        ],
    );
    let host_cert = stdout(&host_cert);
    assert!(host_cert.contains("host certificate"), "{host_cert}");
    assert!(host_cert.contains("web1.example.test"), "{host_cert}");
    let user_cert = stdout(&run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]));
    // Least privilege: a bot's default is a pty and nothing else.
    assert!(user_cert.contains("permit-pty"), "{user_cert}");
    for ext in [
        "permit-port-forwarding",
        "permit-agent-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
    ] {
        assert!(!user_cert.contains(ext), "{ext} in\n{user_cert}");
    }

    // Allowed: root on the prod host, by name and by address.
    for host in ["root@localhost", "root@127.0.0.1"] {
        let o = prod.ssh(&cfg, host, &["echo", "hello-from-sigil"]);
        assert!(
            o.status.success(),
            "{host}:\n{}\nsshd:\n{}",
            text(&o),
            prod.log()
        );
        assert_eq!(stdout(&o).trim(), "hello-from-sigil");
    }
    // Refused: another user on the same host; the dev host (labels);
    assert!(
        !prod
            .ssh(&cfg, "daemon@localhost", &["true"])
            .status
            .success()
    );
    let o = dev.ssh(&cfg, "root@localhost", &["true"]);
    assert!(
        !o.status.success(),
        "dev host let deployer in:\n{}",
        text(&o)
    );
    assert!(
        dev.log().contains("refused") || dev.log().contains("principal"),
        "{}",
        dev.log()
    );
    // a host whose certificate does not name what the client connected to.
    let o = dev.ssh(&cfg, "root@127.0.0.1", &["true"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Host key verification failed"),
        "{}",
        text(&o)
    );

    // Ansible over the generated ssh_config.
    ansible_ping(&c, &cfg, prod.port);

    // Not revoked yet; then a lock on the bot: new logins refused, the open session ended.
    let krl = prod_dir.join("revoked_keys.krl");
    assert!(!krl_revokes(&krl, &cert));
    let mut session = prod
        .ssh_command(&cfg, "root@localhost", &["sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("open a session");
    let sessions = prod_dir.join("sessions");
    wait_until(
        "the session to be recorded",
        Duration::from_secs(20),
        || std::fs::read_dir(&sessions).is_ok_and(|d| d.count() > 0),
    );
    let locked_at = Instant::now();
    let lock = c.auth.ok(&[
        "locks",
        "add",
        "--bot",
        "deployer",
        "--message",
        "incident 7",
        "--format",
        "json",
    ]);
    let lock: serde_json::Value = serde_json::from_str(&lock).expect("lock json");
    let lock_id = lock["metadata"]["name"]
        .as_str()
        .expect("lock id")
        .to_string();
    wait_until("the open session to end", Duration::from_secs(10), || {
        session.try_wait().ok().flatten().is_some()
    });
    let ended = locked_at.elapsed();
    wait_until("new logins to be refused", Duration::from_secs(10), || {
        !prod.ssh(&cfg, "root@localhost", &["true"]).status.success()
    });
    let refused = locked_at.elapsed();
    eprintln!("lock → open session ended in {ended:?}, new login refused by {refused:?}");
    assert!(krl_revokes(&krl, &cert), "the KRL agrees with the lock");
    assert!(
        c.host_log("web-prod").contains("ended an SSH session"),
        "{}",
        c.host_log("web-prod")
    );

    // Lock removed: the same certificate logs in again.
    c.auth.ok(&["locks", "rm", &lock_id]);
    wait_until("logins to work again", Duration::from_secs(10), || {
        prod.ssh(&cfg, "root@localhost", &["true"]).status.success()
    });
    assert!(!krl_revokes(&krl, &cert));

    // A lock on the one instance (named by its id alone) reaches the KRL too:
    // the server looks the instance's bot up in the store.
    let instance = c
        .auth
        .instances()
        .into_iter()
        .find(|i| i["spec"]["bot_name"] == "deployer")
        .and_then(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .expect("the deployer's instance");
    let lock = c.auth.ok(&[
        "locks",
        "add",
        "--bot-instance",
        &instance,
        "--message",
        "incident 8",
        "--format",
        "json",
    ]);
    let lock: serde_json::Value = serde_json::from_str(&lock).expect("lock json");
    let lock_id = lock["metadata"]["name"]
        .as_str()
        .expect("lock id")
        .to_string();
    wait_until(
        "the KRL to revoke the instance",
        Duration::from_secs(10),
        || krl_revokes(&krl, &cert),
    );
    assert!(!prod.ssh(&cfg, "root@localhost", &["true"]).status.success());
    c.auth.ok(&["locks", "rm", &lock_id]);
    wait_until(
        "the instance's lock to lift",
        Duration::from_secs(10),
        || !krl_revokes(&krl, &cert),
    );

    // A bot removed and created again under the same name has a new uid: the
    // old bot's certificate logs in nowhere, though the new bot may.
    c.auth.ok(&["bots", "rm", "deployer"]);
    c.auth.ok(&["bots", "add", "deployer", "--roles", "deploy"]);
    let bot: serde_json::Value =
        serde_json::from_str(&c.auth.ok(&["get", "bot/deployer", "-o", "json"])).expect("bot json");
    let uid = bot["spec"]["uid"].as_str().expect("uid").to_string();
    assert!(!uid.is_empty() && !user_cert.contains(&uid));
    let access = prod_dir.join("access.json");
    wait_until(
        "the host to learn the new bot",
        Duration::from_secs(10),
        || std::fs::read_to_string(&access).is_ok_and(|a| a.contains(&uid)),
    );
    let o = prod.ssh(&cfg, "root@localhost", &["true"]);
    assert!(
        !o.status.success(),
        "the removed bot's certificate still logs in"
    );

    // Host bots are instances like any other, and host certificates are audited.
    let bots: Vec<String> = c
        .auth
        .instances()
        .iter()
        .filter_map(|i| i["spec"]["bot_name"].as_str().map(String::from))
        .collect();
    assert!(
        bots.iter().any(|b| b == "web-prod") && bots.iter().any(|b| b == "web-dev"),
        "{bots:?}"
    );
    let issued = c.auth.audit("cert.issued");
    let host = issued
        .iter()
        .map(|e| &e["fields"])
        .find(|e| e["kind"] == "ssh_host" && e["bot"] == "web-prod")
        .unwrap_or_else(|| panic!("no ssh_host cert.issued event: {issued:?}"));
    assert!(
        host["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{host}"
    );
    assert!(host["ttl_seconds"].as_u64().is_some(), "{host}");
    assert_eq!(host["principals"][0], "web1.example.test", "{host}");
}

/// `ansible all -m ping` over the identity output's ssh_config.
fn ansible_ping(c: &Cluster, cfg: &Path, port: u16) {
    let inventory = c.work.path().join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "[web]\nlocalhost ansible_host=localhost ansible_port={port} ansible_user=root \
             ansible_ssh_common_args='-F {}' ansible_connection=ssh\n",
            cfg.display()
        ),
    )
    .expect("inventory");
    let ansible = which("ansible").expect(
        "ansible is missing: scripts/test installs ansible-core into its virtual environment and puts it on PATH",
    );
    let o = Command::new(ansible)
        .args(["all", "-i"])
        .arg(&inventory)
        .args(["-m", "ping"])
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", c.work.path().join("ansible-tmp"))
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .output()
        .expect("run ansible");
    assert!(o.status.success(), "ansible ping:\n{}", text(&o));
    assert!(stdout(&o).contains("\"ping\": \"pong\""), "{}", text(&o));
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

#[test]
fn unknown_host_ca_is_refused_by_the_client() {
    let c = Cluster::start();
    let client = c.client("deployer");
    // A host certified by a CA of its own, for the right name.
    let d = c.work.path().join("rogue");
    std::fs::create_dir_all(&d).unwrap();
    let key = d.join("host_key");
    let ca = d.join("ca");
    for k in [&key, &ca] {
        assert!(
            run(
                "ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-f", k.to_str().unwrap()]
            )
            .status
            .success()
        );
    }
    let signed = run(
        "ssh-keygen",
        &[
            "-q",
            "-s",
            ca.to_str().unwrap(),
            "-h",
            "-I",
            "rogue",
            "-n",
            "localhost,127.0.0.1",
            &format!("{}.pub", key.display()),
        ],
    );
    assert!(signed.status.success(), "{}", text(&signed));
    let rogue = Sshd::start_with(
        c.work.path(),
        "rogue",
        &format!(
            "HostKey {k}\nHostCertificate {k}-cert.pub\n",
            k = key.display()
        ),
    );
    let o = rogue.ssh(&client.out.join("ssh_config"), "root@localhost", &["true"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Host key verification failed"),
        "{}",
        text(&o)
    );
}

#[test]
fn host_certificate_renews_and_reaches_sshd_without_a_restart() {
    let mut c = Cluster::start();
    // The pid file exists only once sshd runs; the first reload fails harmlessly.
    let sshd_dir = c.work.path().join("sshd-renew");
    let extra = "credential_ttl: 1m\nrenewal_interval: 5s\n";
    let cfg = c.host_config("web-renew", "[localhost]", "{env: prod}", extra);
    // Add the reload command to the output.
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        "    destination:",
        &format!(
            "    reload_command: [sh, -c, 'kill -HUP $(cat {}/sshd.pid)']\n    destination:",
            sshd_dir.display()
        ),
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let dir = c.spawn_host("web-renew", &cfg);
    let sshd = Sshd::start(c.work.path(), "renew", &dir);
    let pid = std::fs::read_to_string(sshd.pid_file()).unwrap();
    let served = || {
        let o = run(
            "ssh-keyscan",
            &["-c", "-p", &sshd.port.to_string(), "127.0.0.1"],
        );
        stdout(&o)
            .lines()
            .find(|l| l.contains("cert-v01"))
            .and_then(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("AAAA"))
                    .map(String::from)
            })
            .unwrap_or_default()
    };
    let first = served();
    assert!(!first.is_empty(), "sshd serves no host certificate");
    // A renewal writes a new certificate and reloads sshd (same pid).
    wait_until(
        "sshd to serve a renewed host certificate",
        Duration::from_secs(60),
        || {
            let now = served();
            !now.is_empty() && now != first
        },
    );
    assert_eq!(
        std::fs::read_to_string(sshd.pid_file()).unwrap(),
        pid,
        "sshd was restarted, not reloaded"
    );
    let client = c.client("deployer");
    let o = sshd.ssh(&client.out.join("ssh_config"), "root@localhost", &["true"]);
    assert!(o.status.success(), "{}\n{}", text(&o), sshd.log());
}

#[test]
fn bad_ssh_input_is_named_and_nothing_is_written() {
    let c = Cluster::start();
    // Principals the roles do not allow: refused, nothing written.
    let cfg = c.host_config("web-bad", "[db1.other.test]", "{env: prod}", "");
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("db1.other.test") && text(&o).contains("ssh_host_principals"),
        "{}",
        text(&o)
    );
    let out = c.work.path().join("web-bad/ssh");
    assert!(!out.join("sshd_config").exists() && !out.join("ssh_host_ed25519_key").exists());
    let denied = c.auth.audit("cert.denied");
    assert!(
        denied.iter().any(|e| e["fields"]["bot"] == "web-bad"),
        "{denied:?}"
    );
    // A role principal that is not a host name, IP or glob; a bad login.
    for (yaml, field) in [
        (
            "kind: role\nversion: v1\nmetadata: {name: bad1}\nspec: {allow: {ssh_host_principals: ['bad host']}}\n",
            "ssh_host_principals",
        ),
        (
            "kind: role\nversion: v1\nmetadata: {name: bad2}\nspec: {allow: {logins: ['ro ot']}}\n",
            "logins",
        ),
    ] {
        let p = c.work.path().join("bad.yaml");
        std::fs::write(&p, yaml).unwrap();
        let o = c.auth.admin(&["create", "-f", p.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(text(&o).contains(field), "{field}: {}", text(&o));
    }
    // An output principal that is not a host name: a config error, exit 2.
    let cfg2 = c.host_config("web-bad2", "['web 1']", "{env: prod}", "");
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg2)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("outputs[0].principals[0]"),
        "{}",
        text(&o)
    );
    assert!(!c.work.path().join("web-bad2/ssh").exists());
}
