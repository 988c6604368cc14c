//! End to end: CA rotation without downtime. A real auth service and agent (identity,
//! X.509-SVID and JWT-SVID outputs) while every CA type is rotated through init,
//! update_clients, update_servers and standby. Throughout, a prober makes mTLS calls
//! to the auth service with the agent's identity file and checks the SVID against the
//! agent's bundle with openssl: none may fail. At each phase the agent must have
//! renewed with the CA that phase calls for; afterwards credentials of the old CAs are
//! refused. Also: rollback, the standby guard for instances that have not renewed,
//! refusals, RBAC, and an automatic rotation on its schedule.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROLE: &str = "kind: role
version: v1
metadata: {name: rot-role}
spec:
  allow:
    logins: [svc]
    workload_identity_labels: {env: [agent]}
    rules: [{resources: [role], verbs: [list, read]}]
  options: {max_ttl: 2h}
";

const SELF_ID: &str = "kind: workload_identity
version: v1
metadata: {name: rot-self, labels: {env: agent}}
spec:
  spiffe:
    id: /bot/{{ bot.name }}
";

/// Every CA type the auth service holds.
const TYPES: [&str; 7] = [
    "host",
    "client",
    "ssh-user",
    "ssh-host",
    "db-client",
    "spiffe",
    "jwt",
];

struct Rig {
    auth: Auth,
    dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Rig {
    fn start() -> Rig {
        Rig::on(Auth::start())
    }

    /// An agent of a new bot on `auth`.
    fn on(auth: Auth) -> Rig {
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

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    fn id(&self) -> PathBuf {
        self.dir.path().join("id")
    }
    fn x509(&self) -> PathBuf {
        self.dir.path().join("x509")
    }
    fn jwt(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
    fn generation(&self) -> u64 {
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.storage().join("credential.json")).unwrap_or_default(),
        )
        .unwrap_or_default();
        c["generation"].as_u64().unwrap_or(0)
    }

    fn rotate(&self, ca: &str, phase: &str) {
        self.auth
            .ok(&["ca", "rotate", "--type", ca, "--phase", phase]);
    }

    /// The CA's public material as `sigil ca export` prints it, split into PEM
    /// blocks or key lines (two during a rotation: the new one first).
    fn export(&self, ca: &str) -> Vec<String> {
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

    fn kids(&self) -> Vec<String> {
        let out = self.auth.ok(&["ca", "export", "--type", "jwt"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("jwks");
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.auth.ok(&["ca", "status", "--format", "json"]))
            .expect("ca status json")
    }

    /// Waits for a renewal after now and then for `what` to hold.
    fn wait_agent(&self, what: &str, mut cond: impl FnMut() -> bool) {
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

fn bot_token(auth: &Auth, bot: &str, role: &str) -> String {
    let out = auth.ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string()
}

fn pems(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| format!("{}\n", &b[i..]))
        })
        .collect()
}

fn count_certs(path: &Path) -> usize {
    pems(&std::fs::read_to_string(path).unwrap_or_default()).len()
}

/// `openssl verify` of `cert` against exactly `ca_pem`.
fn signed_by(dir: &Path, ca_pem: &str, cert: &Path) -> bool {
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
fn jwt_kid(path: &Path) -> String {
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
fn served_certs(addr: &str) -> String {
    stdout(&run(
        "sh",
        &[
            "-c",
            &format!("openssl s_client -connect {addr} -showcerts </dev/null 2>/dev/null"),
        ],
    ))
}

/// `SHA256:…` of the CA that signed an OpenSSH certificate.
fn ssh_signing_ca(cert: &Path) -> String {
    let o = run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]);
    text(&o)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Signing CA: "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

/// `SHA256:…` of an OpenSSH public key line.
fn ssh_fingerprint(dir: &Path, line: &str) -> String {
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
struct Prober {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    rounds: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(rig: &Rig) -> Prober {
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
                let o = run(
                    "openssl",
                    &[
                        "verify",
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

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let rounds = *self.rounds.lock().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (rounds, failures)
    }
}

#[test]
fn every_ca_rotates_with_the_agent_renewing_and_nothing_failing() {
    let rig = Rig::start();
    let work = rig.dir.path();
    // Credentials from before the rotation, to show the old CAs are gone at the end.
    let old_identity = work.join("old-identity");
    std::fs::copy(rig.id().join("identity"), &old_identity).expect("copy identity");
    let old_tls = work.join("old-tls.crt");
    std::fs::copy(rig.id().join("tls.crt"), &old_tls).expect("copy tls.crt");
    let old_ssh_cert = work.join("old-ssh-cert.pub");
    std::fs::copy(rig.id().join("ssh.key-cert.pub"), &old_ssh_cert).expect("copy ssh cert");
    let old_kids = rig.kids();
    assert_eq!(old_kids.len(), 1, "{old_kids:?}");
    let old_pin = rig.auth.pin.clone();
    let before = rig.status();
    let prober = Prober::start(&rig);

    // init: the new CAs are trusted everywhere; the old ones still sign.
    for t in TYPES {
        rig.rotate(t, "init");
    }
    let st = rig.status();
    for (i, t) in TYPES.iter().enumerate() {
        assert_eq!(st[i]["type"], *t);
        assert_eq!(st[i]["phase"], "init", "{st}");
        assert_eq!(st[i]["mode"], "manual");
        assert_eq!(
            st[i]["signing_fingerprint"],
            before[i]["signing_fingerprint"]
        );
        assert_ne!(st[i]["new_fingerprint"], before[i]["signing_fingerprint"]);
    }
    let new_of = |t: &str| {
        let e = rig.export(t);
        assert_eq!(e.len(), 2, "{t} during a rotation exports both CAs: {e:?}");
        e[0].clone()
    };
    let (new_client, new_spiffe, new_ssh_user) =
        (new_of("client"), new_of("spiffe"), new_of("ssh-user"));
    let new_host = new_of("host");
    let kids = rig.kids();
    assert_eq!(kids.len(), 2, "the JWKS publishes both keys: {kids:?}");
    let new_kid = kids.iter().find(|k| !old_kids.contains(k)).unwrap().clone();
    rig.wait_agent("both CAs trusted in every output", || {
        count_certs(&rig.x509().join("bundle.pem")) == 2
            && count_certs(&rig.id().join("ca.crt")) == 4
            && std::fs::read_to_string(rig.id().join("known_hosts"))
                .unwrap_or_default()
                .lines()
                .count()
                == 2
    });
    assert!(
        !signed_by(work, &new_client, &rig.id().join("tls.crt")),
        "init: the old client CA still signs"
    );

    // update_clients: the new CAs sign what the agent is issued.
    for t in TYPES {
        rig.rotate(t, "update_clients");
    }
    let new_ssh_fp = ssh_fingerprint(work, &new_ssh_user);
    rig.wait_agent("credentials from the new CAs", || {
        signed_by(work, &new_client, &rig.id().join("tls.crt"))
            && signed_by(work, &new_spiffe, &rig.x509().join("svid.pem"))
            && jwt_kid(&rig.jwt().join("jwt_svid")) == new_kid
            && ssh_signing_ca(&rig.id().join("ssh.key-cert.pub")) == new_ssh_fp
    });

    // update_servers: the auth service serves with the new host CA.
    for t in TYPES {
        rig.rotate(t, "update_servers");
    }
    let status: serde_json::Value =
        serde_json::from_str(&rig.auth.ok(&["status", "--format", "json"])).expect("json");
    let new_pin = status["ca_pin"].as_str().unwrap().to_string();
    assert_ne!(new_pin, old_pin, "update_servers: the server's CA changed");
    let served = served_certs(&rig.auth.addr());
    assert!(
        pems(&served).contains(&new_host),
        "the auth service does not present the new host CA:\n{served}"
    );
    rig.wait_agent("a renewal through the new server certificate", || true);

    // standby: only the new CAs remain.
    for t in TYPES {
        rig.rotate(t, "standby");
    }
    rig.wait_agent("only the new CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
            && count_certs(&rig.id().join("ca.crt")) == 2
            && std::fs::read_to_string(rig.id().join("known_hosts"))
                .unwrap_or_default()
                .lines()
                .count()
                == 1
    });
    // A few more rounds of probing on the finished state.
    std::thread::sleep(Duration::from_secs(2));
    let (rounds, failures) = prober.finish();
    assert!(rounds >= 10, "only {rounds} probe rounds ran");
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed during the rotation: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(
        !rig.log().contains("renewal failed"),
        "a renewal failed during the rotation:\n{}",
        rig.log()
    );

    let st = rig.status();
    for (i, t) in TYPES.iter().enumerate() {
        assert_eq!(st[i]["phase"], "standby", "{t}: {st}");
        assert_ne!(
            st[i]["signing_fingerprint"], before[i]["signing_fingerprint"],
            "{t}"
        );
        assert_eq!(rig.export(t).len(), 1, "{t}");
    }
    assert_eq!(rig.kids(), vec![new_kid]);
    // The old CAs are gone: their credentials no longer work or verify.
    let o = rig.auth.remote(&old_identity, &["get", "roles"]);
    assert!(
        !o.status.success(),
        "an identity of the old client CA was accepted"
    );
    assert!(!signed_by(work, &rig.export("client")[0], &old_tls));
    assert_ne!(ssh_signing_ca(&old_ssh_cert), new_ssh_fp);
    assert_eq!(
        rig.export("client")[0],
        new_client,
        "standby made the new client CA the established one"
    );
    // A new agent joins with the pin `bots add` prints now.
    let token = bot_token(&rig.auth, "rot-late", "rot-role");
    let late = AgentDirs::new();
    let o = Command::new(sigil_bin())
        .args([
            "agent",
            "start",
            "--oneshot",
            "--auth-server",
            &rig.auth.addr(),
        ])
        .args(["--ca-pin", &new_pin, "--token", &token])
        .arg("--storage")
        .arg(&late.storage)
        .arg("--output")
        .arg(format!("identity:{}", late.out.display()))
        .output()
        .expect("agent");
    assert!(o.status.success(), "{}", text(&o));
    assert!(signed_by(work, &new_client, &late.out.join("tls.crt")));

    // Every step is audited, with who made it.
    let events = rig.auth.audit("ca.rotation");
    assert_eq!(events.len(), TYPES.len() * 4, "{events:#?}");
    assert!(
        events.iter().all(|e| e["fields"]["by"].is_string()),
        "{events:#?}"
    );
    let finished: Vec<_> = events
        .iter()
        .filter(|e| e["fields"]["outcome"] == "rotated")
        .collect();
    assert_eq!(finished.len(), TYPES.len());
}

#[test]
fn rollback_keeps_the_old_ca_and_standby_waits_for_instances_that_have_not_renewed() {
    let rig = Rig::start();
    let work = rig.dir.path();
    let old_client = rig.export("client").remove(0);
    // An instance that joins once and never renews (oneshot).
    let token = bot_token(&rig.auth, "rot-idle", "rot-role");
    let idle = AgentDirs::new();
    assert!(idle.oneshot(&rig.auth, Some(&token)).status.success());

    // Steps out of order are refused with the step that comes next.
    let o = rig.auth.admin(&[
        "ca",
        "rotate",
        "--type",
        "client",
        "--phase",
        "update_clients",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("the next phase is init"), "{}", text(&o));
    rig.rotate("client", "init");
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "client", "--phase", "standby"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("update_clients (or rollback)"),
        "{}",
        text(&o)
    );
    let o = rig.auth.admin(&["ca", "rotate", "--type", "client"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already in phase init"), "{}", text(&o));

    // A bot may not rotate a CA unless a rule grants it.
    let o = rig.auth.remote(
        &rig.id().join("identity"),
        &["ca", "rotate", "--type", "jwt", "--phase", "init"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("may not update cert_authority"),
        "{}",
        text(&o)
    );

    rig.rotate("client", "update_clients");
    let new_client = rig.export("client").remove(0);
    rig.wait_agent("a certificate from the new client CA", || {
        signed_by(work, &new_client, &rig.id().join("tls.crt"))
    });
    rig.rotate("client", "update_servers");

    // The idle instance still holds a credential of the old CA: standby waits.
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "client", "--phase", "standby"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("rot-idle/") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );

    // Roll back: the old CA signs again, the new one stays trusted until standby.
    rig.rotate("client", "rollback");
    rig.wait_agent("a certificate from the old client CA again", || {
        signed_by(work, &old_client, &rig.id().join("tls.crt"))
    });
    assert_eq!(rig.export("client").len(), 2);
    rig.rotate("client", "standby");
    assert_eq!(rig.export("client"), vec![old_client.clone()]);
    let st = rig.status();
    assert_eq!(st[1]["type"], "client");
    assert_eq!(st[1]["phase"], "standby");
    // Both agents keep working with the old CA.
    let o = rig
        .auth
        .remote(&rig.id().join("identity"), &["get", "roles"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(signed_by(work, &old_client, &idle.out.join("tls.crt")));
    let outcome: Vec<_> = rig
        .auth
        .audit("ca.rotation")
        .into_iter()
        .map(|e| {
            format!(
                "{}->{}{}",
                e["fields"]["from"].as_str().unwrap_or_default(),
                e["fields"]["to"].as_str().unwrap_or_default(),
                e["fields"]["outcome"]
                    .as_str()
                    .map(|o| format!(" {o}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            "standby->init",
            "init->update_clients",
            "update_clients->update_servers",
            "update_servers->rollback",
            "rollback->standby rolled_back"
        ]
    );
}

#[test]
fn an_automatic_rotation_advances_on_its_schedule() {
    let rig = Rig::start();
    let work = rig.dir.path();
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "spiffe", "--grace-period", "10s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("shorter than the minimum"),
        "{}",
        text(&o)
    );
    let out = rig
        .auth
        .ok(&["ca", "rotate", "--type", "spiffe", "--grace-period", "30s"]);
    assert!(
        out.contains("phase init (auto)") && out.contains("next: update_clients at"),
        "{out}"
    );
    let new_spiffe = rig.export("spiffe").remove(0);
    let prober = Prober::start(&rig);
    wait_until(
        "the automatic rotation to finish",
        Duration::from_secs(90),
        || rig.status()[5]["phase"] == "standby",
    );
    rig.wait_agent("only the new spiffe CA in the bundle", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
    });
    let (rounds, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(signed_by(work, &new_spiffe, &rig.x509().join("svid.pem")));
    assert_eq!(rig.export("spiffe"), vec![new_spiffe]);
    let steps: Vec<String> = rig
        .auth
        .audit("ca.rotation")
        .iter()
        .map(|e| {
            assert_eq!(e["fields"]["mode"], "auto", "{e}");
            e["fields"]["to"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        steps,
        ["init", "update_clients", "update_servers", "standby"]
    );
}

/// Two auth servers on one PostgreSQL: the rotation is driven through A while the
/// agent only knows B. B learns of every step from the change feed, serves with the
/// new host CA at update_servers, and the agent follows it through B alone.
#[test]
fn a_rotation_made_through_one_server_reaches_agents_of_another() {
    let url = common::postgres::fresh_db();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit-key.json");
    let server = || Auth::start_with(&["--store", &url, "--audit-key", key.to_str().unwrap()]);
    let a = server();
    let rig = Rig::on(server());
    let work = rig.dir.path();
    let prober = Prober::start(&rig);
    let served_by_b = || served_certs(&rig.auth.addr());
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "init"]);
    }
    let new_host = rig.export("host").remove(0);
    let new_spiffe = rig.export("spiffe").remove(0);
    assert_eq!(rig.status()[0]["phase"], "init", "B follows A's step");
    rig.wait_agent("both CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 2
            && count_certs(&rig.id().join("ca.crt")) == 3
    });
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "update_clients"]);
    }
    rig.wait_agent("an SVID from the new spiffe CA", || {
        signed_by(work, &new_spiffe, &rig.x509().join("svid.pem"))
    });
    assert!(!pems(&served_by_b()).contains(&new_host));
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "update_servers"]);
    }
    wait_until(
        "B to serve with the new host CA",
        Duration::from_secs(10),
        || pems(&served_by_b()).contains(&new_host),
    );
    rig.wait_agent("a renewal through B's new certificate", || true);
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "standby"]);
    }
    rig.wait_agent("only the new CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
            && count_certs(&rig.id().join("ca.crt")) == 2
    });
    let (rounds, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(!rig.log().contains("renewal failed"), "{}", rig.log());
    assert_eq!(rig.export("host"), vec![new_host.clone()]);
    assert_eq!(
        a.ok(&["ca", "export", "--type", "host"]).trim_end(),
        new_host.trim_end()
    );
}
