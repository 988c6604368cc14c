//! A server killed with `kill -9` mid-join and mid-renewal, with two auth
//! servers on one PostgreSQL database (`SIGIL_TEST_POSTGRES`): no token used
//! twice, no generation lost, the agent finishes on the other server.
//!
//! The lost join answer is made deterministic without touching the server:
//! the test speaks the Join RPC to server A itself with the key it seeded
//! into the agent's storage as its pending key, and never hands the answer to
//! the agent — exactly what an agent sees when A dies after committing. Then
//! A is killed and the real agent binary, with `auth_server: [A, B]`, joins
//! with the same token and key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::postgres::{fresh_db, psql};
use common::*;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{Credentials, JoinClientMessage, JoinInit};

fn server(url: &str, key: &Path) -> Auth {
    Auth::start_with(&["--store", url, "--audit-key", key.to_str().expect("utf8")])
}

/// An agent config for `servers`, pinning `pin`, joining with `token`.
fn config(agent: &AgentDirs, servers: &[String], pin: &str, token: &str, more: &str) -> PathBuf {
    let p = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &p,
        format!(
            "version: v1\nauth_server: [{}]\nca_pins: [{pin}]\nonboarding: {{join_method: token, token: {token}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 1h\n{more}outputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            servers.join(", "),
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

/// The Join RPC spoken directly to `addr` with `key`: the answer, or the
/// refusal's status.
fn raw_join(
    addr: &str,
    pin: &str,
    token: &str,
    key: &TlsKeyPair,
) -> Result<Credentials, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = sigil_agent::client::tls_config(&[pin.to_string()], None).expect("tls");
        let channel = sigil_agent::client::channel(addr, tls).expect("channel");
        let mut client = AuthServiceClient::new(channel);
        let init = JoinInit {
            join_method: "token".into(),
            token: token.into(),
            public_key_spki: key.spki_der(),
            ttl_seconds: 3600,
            ..Default::default()
        };
        let msgs = tokio_stream::iter(vec![JoinClientMessage {
            message: Some(ClientMsg::Init(init)),
        }]);
        let mut s = client.join(msgs).await?.into_inner();
        while let Some(m) = s.message().await? {
            if let Some(ServerMsg::Result(r)) = m.message {
                return Ok(r);
            }
        }
        Err(tonic::Status::internal("join ended without a result"))
    })
}

/// Seed `key` as the agent's pending key, as the agent writes it before a join.
fn seed_pending_key(agent: &AgentDirs, key: &TlsKeyPair) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&agent.storage)
        .expect("storage dir");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(agent.storage.join("next_key.pem"))
        .expect("next_key.pem");
    f.write_all(key.to_pkcs8_pem().as_bytes())
        .expect("write key");
}

fn stored(agent: &AgentDirs) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(agent.storage.join("credential.json")).expect("credential"),
    )
    .expect("json")
}

#[test]
fn a_join_whose_answer_was_lost_is_answered_again_by_the_other_server() {
    let url = fresh_db();
    let keydir = tempfile::tempdir().expect("tempdir");
    let audit_key = keydir.path().join("audit-key.json");
    let mut a = server(&url, &audit_key);
    let b = server(&url, &audit_key);
    let token = a.bot("lost", &["l"]);

    // The agent's pending key, and the join A commits but the agent never hears.
    let agent = AgentDirs::new();
    let key = TlsKeyPair::generate().expect("key");
    seed_pending_key(&agent, &key);
    let first = raw_join(&a.addr(), &a.pin, &token, &key).expect("the join on A");
    assert_eq!(
        psql(&url, "SELECT count(*) FROM audit WHERE type = 'bot.join'"),
        "1",
        "A committed the join"
    );
    a.kill();

    // The real agent, first server dead: the same token and key on B.
    let servers = [a.addr(), b.addr()];
    let cfg = config(&agent, &servers, &a.pin, &token, "");
    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    let cred = stored(&agent);
    assert_eq!(cred["instance_id"], first.instance_id.as_str());
    assert_eq!(cred["generation"], 1);
    assert_eq!(cred["key_pem"], key.to_pkcs8_pem().as_str());
    assert!(!agent.storage.join("next_key.pem").exists());
    let instances = b.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["metadata"]["name"], first.instance_id.as_str());
    assert_eq!(instances[0]["spec"]["generation"], 1);
    assert_eq!(b.audit("bot.join").len(), 1);
    let retries = b.audit("bot.join.retry");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(
        retries[0].to_string().contains(&first.instance_id),
        "{retries:?}"
    );
    let verify = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            agent.out.join("ca.crt").to_str().expect("utf8"),
            agent.out.join("tls.crt").to_str().expect("utf8"),
        ],
    );
    assert!(verify.status.success(), "{}", text(&verify));

    // Another agent (another key) with the same token: the plain denial.
    let thief = AgentDirs::new();
    let o = oneshot(&config(&thief, &[b.addr()], &b.pin, &token, ""));
    assert!(!o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("join denied"), "{out}");
    assert!(
        !out.contains("spent") && !out.contains("another key"),
        "{out}"
    );
    assert!(!thief.storage.join("credential.json").exists());
    let denials = b.audit("bot.join.denied");
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(
        denials[0].to_string().contains("another key"),
        "{denials:?}"
    );

    // A locked bot is not answered again, even with the right key.
    b.ok(&["locks", "add", "--bot", "lost", "--message", "looking"]);
    let refused = raw_join(&b.addr(), &b.pin, &token, &key).expect_err("locked");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "join denied");
    let locks: serde_json::Value =
        serde_json::from_str(&b.ok(&["locks", "ls", "--format", "json"])).expect("json");
    let lock = locks[0]["metadata"]["name"]
        .as_str()
        .expect("lock id")
        .to_string();
    b.ok(&["locks", "rm", &lock]);

    // After the first renewal, the old answer is gone for good.
    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    let refused = raw_join(&b.addr(), &b.pin, &token, &key).expect_err("renewed");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "join denied");
    let denials = b.audit("bot.join.denied");
    assert!(
        denials
            .iter()
            .any(|d| d.to_string().contains("renewed since")),
        "{denials:?}"
    );
    assert_eq!(b.audit("bot.join.retry").len(), 1);
    assert_eq!(b.audit("bot.join").len(), 1);
    assert_eq!(b.instances().len(), 1);
    assert!(b.audit("bot.generation_mismatch").is_empty());
}

#[test]
fn a_server_killed_while_the_agent_renews_loses_no_generation() {
    let url = fresh_db();
    let keydir = tempfile::tempdir().expect("tempdir");
    let audit_key = keydir.path().join("audit-key.json");
    let mut a = server(&url, &audit_key);
    let b = server(&url, &audit_key);
    let token = a.bot("steady", &["s"]);
    let agent = AgentDirs::new();
    let cfg = config(
        &agent,
        &[a.addr(), b.addr()],
        &a.pin,
        &token,
        "renewal_interval: 1s\n",
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
    let renewals = || {
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'bot.renewal'",
        )
        .parse::<u64>()
        .unwrap_or(0)
    };
    // The agent starts on A (listed first) and renews there every second.
    wait_until("renewals on A", Duration::from_secs(30), || renewals() >= 3);
    a.kill();
    let killed_at = agent.generation();
    wait_until(
        "renewals through B after A was killed",
        Duration::from_secs(60),
        || agent.storage.join("credential.json").exists() && agent.generation() >= killed_at + 3,
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the agent exited:\n{}",
        log()
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "agent exit on SIGTERM: {status:?}\n{}",
        log()
    );
    // One more renewal, so the agent's generation and the server's agree
    // even if the daemon stopped between a renewal's commit and its save.
    let o = oneshot(&cfg);
    assert!(o.status.success(), "{}", text(&o));

    // One instance, its generation the agent's, every step audited once.
    let instances = b.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let generation = agent.generation();
    assert_eq!(instances[0]["spec"]["generation"], generation);
    assert_eq!(b.audit("bot.join").len(), 1);
    // A renewal answered again after a lost answer is audited again, so
    // there may be more renewal events than generations, never fewer.
    let renewals = b.audit("bot.renewal");
    let steps: Vec<String> = renewals
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["fields"]["generation"],
                if e["fields"]["retry"] == true {
                    "r"
                } else {
                    ""
                }
            )
        })
        .collect();
    assert!(
        renewals.len() as u64 >= generation - 1,
        "renewals audited {steps:?} for generation {generation}\n{}",
        log()
    );
    assert!(b.audit("bot.generation_mismatch").is_empty(), "{}", log());
    assert!(b.audit("bot.credential_superseded").is_empty(), "{}", log());
    let locks: serde_json::Value =
        serde_json::from_str(&b.ok(&["locks", "ls", "--format", "json"])).expect("json");
    assert_eq!(locks.as_array().map(Vec::len), Some(0), "{locks}");
}

/// An output that cannot be written fails every cycle after its renewal
/// committed. The agent's background calls (here the CA rotation stream)
/// must still switch to each renewed credential: when they reconnect to
/// another server they must not present one two generations old, which the
/// server takes for a stolen copy and locks the instance.
#[test]
fn an_output_failing_while_the_agent_fails_over_locks_nothing() {
    let url = fresh_db();
    let keydir = tempfile::tempdir().expect("tempdir");
    let audit_key = keydir.path().join("audit-key.json");
    let mut a = server(&url, &audit_key);
    let b = server(&url, &audit_key);
    let token = a.bot("blocked", &["s"]);
    let agent = AgentDirs::new();
    let cfg = config(
        &agent,
        &[a.addr(), b.addr()],
        &a.pin,
        &token,
        "renewal_interval: 1s\n",
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
    wait_until("the first output", Duration::from_secs(30), || {
        agent.out.join("tls.crt").exists()
    });
    // The output directory becomes a file: every output write fails from
    // now on, while renewals go on committing.
    std::fs::remove_dir_all(&agent.out).expect("remove the output directory");
    std::fs::write(&agent.out, b"not a directory").expect("block the output");
    let blocked_at = agent.generation();
    wait_until(
        "renewals while the output fails",
        Duration::from_secs(30),
        || agent.generation() >= blocked_at + 3,
    );
    assert!(log().contains("renewal failed"), "{}", log());
    a.kill();
    let killed_at = agent.generation();
    wait_until(
        "renewals through B after A was killed",
        Duration::from_secs(60),
        || agent.generation() >= killed_at + 3,
    );
    std::fs::remove_file(&agent.out).expect("unblock the output");
    wait_until("the output written again", Duration::from_secs(30), || {
        agent.out.join("tls.crt").exists()
    });
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the agent exited:\n{}",
        log()
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait");

    assert!(b.audit("bot.generation_mismatch").is_empty(), "{}", log());
    assert!(b.audit("bot.credential_superseded").is_empty(), "{}", log());
    let locks: serde_json::Value =
        serde_json::from_str(&b.ok(&["locks", "ls", "--format", "json"])).expect("json");
    assert_eq!(locks.as_array().map(Vec::len), Some(0), "{locks}");
}
