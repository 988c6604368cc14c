//! End to end: an agent and the CLI with several auth servers. Until the
//! PostgreSQL store lets two live servers share one database, "two servers of
//! one cluster" are a dead address beside a live one, or one server killed
//! with `kill -9` and a new one started on another port over the same data.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// An agent config with this `auth_server:` value.
fn config(agent: &AgentDirs, auth_server: &str, pins: &[&str], token: &str) -> std::path::PathBuf {
    config_with(agent, auth_server, pins, token, "")
}

/// The same with more lines at the end (under `outputs:`).
fn config_with(
    agent: &AgentDirs,
    auth_server: &str,
    pins: &[&str],
    token: &str,
    more: &str,
) -> std::path::PathBuf {
    let p = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &p,
        format!(
            "version: v1\nauth_server: {auth_server}\nca_pins: [{}]\nonboarding: {{join_method: token, token: {token}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 1h\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n{more}",
            pins.join(", "),
            agent.storage.display(),
            agent.out.display()
        ),
    )
    .expect("write config");
    p
}

fn oneshot(config: &Path) -> Output {
    Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(config)
        .env("SIGIL_LOG", "info")
        .output()
        .expect("run agent")
}

/// A bot whose role lets it list roles (for the remote admin calls); its
/// join token.
fn reader_bot(auth: &Auth, bot: &str) -> String {
    auth.create(
        "reader.yaml",
        &format!(
            "kind: role\nversion: v1\nmetadata: {{name: {bot}-role}}\nspec:\n  allow:\n    logins: [{bot}]\n    workload_identity_labels: {{env: [agent]}}\n    rules: [{{resources: [role], verbs: [list, read]}}]\n"
        ),
    );
    let out = auth.ok(&[
        "bots",
        "add",
        bot,
        "--roles",
        &format!("{bot}-role"),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
    v["token"].as_str().expect("token").to_string()
}

/// `sigil --identity FILE [--auth-server S] get roles`.
fn remote(identity: &Path, server: Option<&str>) -> Output {
    let mut c = Command::new(sigil_bin());
    if let Some(s) = server {
        c.args(["--auth-server", s]);
    }
    c.arg("--identity")
        .arg(identity)
        .args(["get", "roles"])
        .env_remove("SIGIL_AUTH_SERVER")
        .output()
        .expect("run sigil")
}

/// A certificate's serial as Sigil writes it (lower-case hex, no leading
/// zero bytes).
fn cert_serial(pem: &Path) -> String {
    let o = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            pem.to_str().expect("utf8"),
        ],
    );
    let mut hex = stdout(&o)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    hex
}

#[test]
fn a_dead_first_server_is_skipped_and_every_server_is_written_down() {
    let auth = Auth::start();
    let token = reader_bot(&auth, "fo");
    let dead = format!("127.0.0.1:{}", free_port());
    let live = auth.addr();
    let agent = AgentDirs::new();
    let cfg = config(&agent, &format!("[{dead}, {live}]"), &[&auth.pin], &token);

    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 1);
    let log = text(&o);
    assert!(
        log.contains("auth server failed") && log.contains(&dead),
        "the dead server's failure is logged:\n{log}"
    );
    assert!(
        log.contains("using auth server") && log.contains(&live),
        "the server in use is logged:\n{log}"
    );
    assert!(!log.contains(&token), "the token leaked into the log");

    // The identity file names both, in order; the first alone for old readers.
    let idf = agent.out.join("identity");
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idf).expect("identity")).expect("json");
    assert_eq!(id["auth_servers"], serde_json::json!([dead, live]));
    assert_eq!(id["auth_server"], dead.as_str());

    // The CLI fails over the same way: from the file's list, or the flag's.
    let o = remote(&idf, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("fo-role"), "{}", text(&o));
    let o = remote(&idf, Some(&format!("{dead},{live}")));
    assert!(o.status.success(), "{}", text(&o));
    // With only the dead one it is unreachable (exit 4), not denied.
    let o = remote(&idf, Some(&dead));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("no auth server reachable"),
        "{}",
        text(&o)
    );

    // Renewal from storage goes the same way, with the same instance.
    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    assert_eq!(auth.audit("bot.join").len(), 1);
    assert_eq!(auth.audit("bot.renewal").len(), 1);
}

#[test]
fn a_server_of_another_cluster_is_not_trusted_and_a_denial_is_final() {
    let mine = Auth::start();
    let other = Auth::start();
    assert_ne!(mine.pin, other.pin);
    let token = mine.bot("pinned", &["p"]);

    // The other cluster's server answers first, but its CA matches no pin:
    // a failed handshake, so the agent goes on to its own cluster.
    let agent = AgentDirs::new();
    let cfg = config(
        &agent,
        &format!("[{}, {}]", other.addr(), mine.addr()),
        &[&mine.pin],
        &token,
    );
    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ca_pins"), "{}", text(&o));
    assert_eq!(mine.instances().len(), 1);
    assert!(other.instances().is_empty());

    // Trusting both clusters, the first server is reachable and refuses the
    // token it does not know: that is an answer, not a reason to ask the next.
    let token = mine.bot("denied", &["d"]);
    let agent = AgentDirs::new();
    let cfg = config(
        &agent,
        &format!("[{}, {}]", other.addr(), mine.addr()),
        &[&other.pin, &mine.pin],
        &token,
    );
    let o = oneshot(&cfg);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    assert_eq!(other.audit("bot.join.denied").len(), 1);
    assert_eq!(
        mine.instances().len(),
        1,
        "the denied join was tried on the next server"
    );
    assert!(!agent.storage.join("credential.json").exists());
}

#[test]
fn a_killed_server_is_replaced_without_losing_the_identity() {
    let mut auth = Auth::start();
    let token = reader_bot(&auth, "survivor");
    let first = auth.addr();
    let second_port = free_port();
    let second = format!("127.0.0.1:{second_port}");
    // The agent's own SVID follows the Workload API feed (a watch).
    auth.create(
        "self.yaml",
        "kind: workload_identity\nversion: v1\nmetadata: {name: self, labels: {env: agent}}\nspec:\n  spiffe: {id: '/bot/{{ bot.name }}'}\n",
    );
    let agent = AgentDirs::new();
    let x509 = agent.dir.path().join("x509");
    let cfg = config_with(
        &agent,
        &format!("[{first}, {second}]"),
        &[&auth.pin],
        &token,
        &format!(
            "  - type: workload-identity-x509\n    selector: {{name: self}}\n    destination: {{type: directory, path: {}}}\nrenewal_interval: 1s\n",
            x509.display()
        ),
    );
    let log_path = agent.dir.path().join("agent.log");
    let mut child = Command::new(sigil_bin())
        .args(["agent", "start", "--config"])
        .arg(&cfg)
        .env("SIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("agent");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(
        "a renewal on the first server",
        Duration::from_secs(30),
        || agent.storage.join("credential.json").exists() && agent.generation() >= 2,
    );
    let instance = auth.instances()[0]["metadata"]["name"].clone();
    assert!(
        instance.as_str().is_some_and(|s| !s.is_empty()),
        "{instance}"
    );

    auth.kill();
    let generation = agent.generation();
    let crt = std::fs::read(agent.out.join("tls.crt")).expect("crt");
    auth.port = second_port;
    auth.spawn();
    assert_eq!(
        auth.port, second_port,
        "the second port was taken by another test; the agent does not list the new one"
    );

    wait_until(
        "a renewal on the second server",
        Duration::from_secs(60),
        || agent.generation() > generation,
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the agent exited:\n{}",
        log()
    );
    assert!(
        log().contains("now using auth server") && log().contains(&second),
        "the switch is logged:\n{}",
        log()
    );
    // The same instance went on: renewed, never joined again.
    let instances = auth.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["metadata"]["name"], instance);
    assert!(instances[0]["spec"]["generation"].as_u64() > Some(generation));
    assert_eq!(auth.audit("bot.join").len(), 1);
    assert!(auth.audit("bot.generation_mismatch").is_empty());
    // The renewal is saved to storage before the outputs are written.
    wait_until("the output rewritten", Duration::from_secs(30), || {
        std::fs::read(agent.out.join("tls.crt")).is_ok_and(|c| c != crt)
    });
    // The CLI with the agent's identity file reaches the new server too.
    let o = remote(&agent.out.join("identity"), None);
    assert!(o.status.success(), "{}", text(&o));
    // The workload feed follows the new server: a revocation made there
    // replaces the SVID.
    let svid = x509.join("svid.pem");
    let serial = cert_serial(&svid);
    auth.ok(&[
        "workload-identity",
        "revocations",
        "add",
        "--serial",
        &serial,
        "--reason",
        "failover test",
    ]);
    let start = std::time::Instant::now();
    while !(x509.join("svid-crl.pem").exists() && cert_serial(&svid) != serial) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no replacement SVID after 20 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

#[test]
fn a_server_that_answers_unavailable_is_left_for_the_next() {
    // Two live servers of one cluster: the second runs on a copy of the
    // first's data dir, taken after the join (same CAs, same instance).
    let mut a = Auth::start();
    let token = reader_bot(&a, "steady");
    let agent = AgentDirs::new();
    let cfg = config(&agent, &a.addr(), &[&a.pin], &token);
    assert!(oneshot(&cfg).status.success());
    let mut b = Auth::start();
    a.stop();
    b.stop();
    std::fs::remove_dir_all(&b.data).expect("rm");
    let cp = run(
        "cp",
        &[
            "-a",
            a.data.to_str().expect("utf8"),
            b.data.to_str().expect("utf8"),
        ],
    );
    assert!(cp.status.success(), "{}", text(&cp));
    a.spawn();
    b.spawn();
    assert_eq!(a.pin, b.pin);

    // The first server's database is locked by another writer: its renewal
    // fails with `Unavailable` (storage), while it still accepts connections.
    let db = a.data.join("sigil.db");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "locked");

    let cfg = config(
        &agent,
        &format!("[{}, {}]", a.addr(), b.addr()),
        &[&a.pin],
        &token,
    );
    let o = oneshot(&cfg);
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    assert!(log.contains("answered Unavailable"), "{log}");
    assert!(
        log.contains("now using auth server") && log.contains(&b.addr()),
        "{log}"
    );
    assert_eq!(agent.generation(), 2);
    assert_eq!(b.instances()[0]["spec"]["generation"], 2);
    assert_eq!(b.audit("bot.renewal").len(), 1);
    assert!(b.audit("bot.generation_mismatch").is_empty());
}
