//! No false theft lockouts: the real agent, built with the `fault-injection`
//! feature, is killed (`abort`, as a power loss) at every named point of a
//! join and of a renewal (`SIGIL_AGENT_FAULT`, sigil-agent `fault.rs`), then
//! restarted without the fault. It must recover — credentials, the same
//! instance where the server had committed — with no lock, no denial and no
//! generation mismatch. For `token` joins and renewals, for `bound_keypair`
//! joins, recoveries and key rotations, and for a bound_keypair answer lost on
//! the server side (PostgreSQL, two servers: the first commits and its answer
//! never arrives). And the proof that a real copy is still caught: a copied
//! storage directory run beside the original locks the instance (generation
//! mismatch) and the token (stale join state).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::postgres::{fresh_db, psql};
use common::*;

const SECRET: &str = "registration-secret-0123456789";

/// An agent config: `servers`, `pin`, joining with `onboarding` (a YAML flow mapping).
fn config(agent: &AgentDirs, servers: &[String], pin: &str, onboarding: &str) -> PathBuf {
    let cfg = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: [{}]\nca_pins: [{pin}]\nonboarding: {onboarding}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 30m\nrenewal_interval: 10m\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            servers.join(", "),
            agent.storage.display(),
            agent.out.display()
        ),
    )
    .expect("config");
    cfg
}

fn token_onboarding(token: &str) -> String {
    format!("{{join_method: token, token: {token}}}")
}

fn keypair_onboarding(token: &str) -> String {
    format!(
        "{{join_method: bound_keypair, token: {token}, bound_keypair: {{registration_secret: {SECRET}}}}}"
    )
}

/// One agent run (`--oneshot`), killed at `fault` if given.
fn run_agent(cfg: &Path, fault: Option<&str>) -> Output {
    let mut c = Command::new(sigil_bin());
    c.args(["agent", "start", "--oneshot", "--config"])
        .arg(cfg)
        .env("SIGIL_LOG", "info");
    match fault {
        Some(f) => c.env("SIGIL_AGENT_FAULT", f),
        None => c.env_remove("SIGIL_AGENT_FAULT"),
    };
    c.output().expect("run agent")
}

/// Run with the fault and check the agent really died there.
fn crash_at(cfg: &Path, fault: &str) {
    let o = run_agent(cfg, Some(fault));
    let point = fault.split('@').next().unwrap_or(fault);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGABRT),
        "the agent did not abort at {fault}:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains(&format!("aborting at {point}")),
        "{fault}: {}",
        text(&o)
    );
}

/// Restart without a fault: it must succeed.
fn recover(cfg: &Path, after: &str) {
    let o = run_agent(cfg, None);
    assert!(
        o.status.success(),
        "the agent did not recover after a crash at {after}:\n{}",
        text(&o)
    );
}

fn credential(agent: &AgentDirs) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(agent.storage.join("credential.json")).expect("credential.json"),
    )
    .expect("json")
}

fn lose_credential(agent: &AgentDirs) {
    let p = agent.storage.join("credential.json");
    if p.exists() {
        std::fs::remove_file(p).expect("rm credential");
    }
}

/// Nothing the server reads as theft, nor any refusal: no lock, no mismatch,
/// no denied join or renewal.
fn assert_no_false_alarm(auth: &Auth, after: &str) {
    for ev in [
        "lock.created",
        "bot.generation_mismatch",
        "bot.join.denied",
        "bot.renewal.denied",
    ] {
        let found = auth.audit(ev);
        assert!(found.is_empty(), "after a crash at {after}: {ev} {found:?}");
    }
}

fn instances_of(auth: &Auth, bot: &str) -> Vec<serde_json::Value> {
    auth.instances()
        .into_iter()
        .filter(|i| i["spec"]["bot_name"] == bot)
        .collect()
}

const JOIN_POINTS: [&str; 5] = [
    "join.before_send",
    "join.after_send",
    "join.after_answer",
    "join.after_method_state",
    "join.after_credential",
];

/// Points a one-challenge join (no rotation) passes before the server commits it.
fn before_commit(point: &str) -> bool {
    matches!(point, "join.before_send" | "join.after_send@1")
}

const RENEW_POINTS: [&str; 4] = [
    "renew.before_send",
    "renew.after_send",
    "renew.after_answer",
    "renew.after_credential",
];

/// Kill the renewal at every point and restart: the same instance, the
/// generation moves on, and a key left pending by a crash after the credential
/// was saved is not reused.
fn renewals_survive_every_point(auth: &Auth, agent: &AgentDirs, cfg: &Path) {
    let instance = credential(agent)["instance_id"].clone();
    for point in RENEW_POINTS {
        let before = credential(agent);
        crash_at(cfg, point);
        let crashed = credential(agent);
        recover(cfg, point);
        let after = credential(agent);
        assert_eq!(after["instance_id"], instance, "{point}");
        assert!(
            after["generation"].as_u64() > before["generation"].as_u64(),
            "{point}: {before:?} -> {after:?}"
        );
        if point == "renew.after_credential" {
            assert_eq!(
                crashed["generation"].as_u64(),
                before["generation"].as_u64().map(|g| g + 1),
                "the crashed renewal saved its credential"
            );
            assert_ne!(
                after["key_pem"], crashed["key_pem"],
                "the pending key equal to the current one was reused"
            );
        }
        assert!(!agent.storage.join("next_key.pem").exists(), "{point}");
        assert_no_false_alarm(auth, point);
    }
    // Retried renewals are audited as such.
    let renewals = auth.audit("bot.renewal");
    assert!(
        renewals.iter().any(|r| r["fields"]["retry"] == true),
        "{renewals:?}"
    );
}

#[test]
fn token_joins_and_renewals_survive_a_crash_at_every_point() {
    let auth = Auth::start();
    let servers = [auth.addr()];
    let mut last = None;
    for (n, point) in JOIN_POINTS.iter().enumerate() {
        let bot = format!("crash{n}");
        let token = auth.bot(&bot, &["svc"]);
        let agent = AgentDirs::new();
        let cfg = config(&agent, &servers, &auth.pin, &token_onboarding(&token));
        crash_at(&cfg, point);
        recover(&cfg, point);
        let c = credential(&agent);
        let instances = instances_of(&auth, &bot);
        assert_eq!(instances.len(), 1, "{point}: {instances:?}");
        assert_eq!(
            instances[0]["metadata"]["name"], c["instance_id"],
            "{point}"
        );
        // A crash after the credential was saved renews; otherwise generation 1.
        let want = if *point == "join.after_credential" {
            2
        } else {
            1
        };
        assert_eq!(c["generation"], want, "{point}");
        assert!(!agent.storage.join("next_key.pem").exists(), "{point}");
        assert_no_false_alarm(&auth, point);
        last = Some((agent, cfg));
    }
    // The server committed before the crash at these: answered again.
    let retries = auth.audit("bot.join.retry");
    assert_eq!(
        retries.len(),
        3,
        "after_send, after_answer, after_method_state: {retries:?}"
    );

    let (agent, cfg) = last.expect("an agent");
    renewals_survive_every_point(&auth, &agent, &cfg);

    // A real copy is still caught: the same storage on a second machine.
    let copy = AgentDirs::new();
    copy_dir(&agent.storage, &copy.storage);
    let copy_cfg = config(
        &copy,
        &servers,
        &auth.pin,
        "{join_method: token, token: unused}",
    );
    let o = run_agent(&cfg, None);
    assert!(o.status.success(), "{}", text(&o));
    let o = run_agent(&copy_cfg, None);
    assert!(!o.status.success(), "the copy renewed:\n{}", text(&o));
    assert_copy_caught(&auth, "bot_instance=");
}

fn copy_dir(from: &Path, to: &Path) {
    let o = run("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Exactly the theft response: one lock on a `target` (prefix), after a
/// generation mismatch or a stale join state.
fn assert_copy_caught(auth: &Auth, target: &str) {
    let locks = auth.audit("lock.created");
    assert!(
        locks.iter().any(|l| l["fields"]["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with(target)),
        "no lock on {target}: {locks:?}"
    );
    let why = if target.starts_with("token=") {
        auth.audit("bot.join.denied")
            .iter()
            .any(|d| d.to_string().contains("stale join state"))
    } else {
        !auth.audit("bot.generation_mismatch").is_empty()
    };
    assert!(why, "the lock on {target} was not audited with its cause");
}

/// A bound_keypair token `name` (registration secret) for a new bot; `more`
/// is added to its `spec.bound_keypair`.
fn keypair_token(auth: &Auth, name: &str, more: &str) {
    auth.bot(&format!("{name}-bot"), &["svc"]);
    auth.create(
        &format!("{name}.yaml"),
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: {name}}}\nspec:\n  bot_name: {name}-bot\n  join_method: bound_keypair\n  bound_keypair: {{onboarding: {{registration_secret: {SECRET}}}, recovery: {{limit: 50}}{more}}}\n"
        ),
    );
}

#[test]
fn bound_keypair_joins_and_recoveries_survive_a_crash_at_every_point() {
    let auth = Auth::start();
    keypair_token(&auth, "vm", "");
    let agent = AgentDirs::new();
    let cfg = config(&agent, &[auth.addr()], &auth.pin, &keypair_onboarding("vm"));
    // The first point registers the key; every later one is a recovery (a new
    // instance), which is what a lost answer used to lock.
    let points = [
        "join.before_send",
        "join.after_send@1",
        "join.after_send@2",
        "join.after_answer",
        "join.after_method_state",
        "join.after_credential",
    ];
    for (n, point) in points.iter().enumerate() {
        lose_credential(&agent);
        let retries = auth.audit("bot.join.retry").len();
        crash_at(&cfg, point);
        recover(&cfg, point);
        let c = credential(&agent);
        assert_no_false_alarm(&auth, point);
        // One committed join per point: a retry makes no second instance and
        // does not move the sequence.
        let joins = auth.audit("bot.join");
        assert_eq!(joins.len(), n + 1, "{point}: {joins:?}");
        assert_eq!(instances_of(&auth, "vm-bot").len(), n + 1, "{point}");
        let last = joins.last().expect("a join");
        assert_eq!(last["fields"]["sequence"], n as u64 + 1, "{point}");
        let answered_again = !before_commit(point) && *point != "join.after_credential";
        assert_eq!(
            auth.audit("bot.join.retry").len(),
            retries + usize::from(answered_again),
            "{point}"
        );
        if answered_again {
            assert_eq!(c["generation"], 1, "{point}");
            assert_eq!(c["instance_id"], last["fields"]["bot_instance"], "{point}");
        }
        assert!(!agent.storage.join("next_key.pem").exists(), "{point}");
    }
    renewals_survive_every_point(&auth, &agent, &cfg);

    // Still recovers after all that: the state it holds is the current one.
    lose_credential(&agent);
    recover(&cfg, "the end");
    assert_no_false_alarm(&auth, "the end");
}

#[test]
fn bound_keypair_key_rotation_survives_a_crash_at_every_point() {
    let auth = Auth::start();
    let points = [
        "join.after_send@1",
        "join.after_send@2",
        "join.after_rotation_key",
        "join.after_send@3",
        "join.after_answer",
        "join.after_bound_key",
        "join.after_method_state",
        "join.after_credential",
    ];
    for (n, point) in points.iter().enumerate() {
        let name = format!("rot{n}");
        keypair_token(&auth, &name, ", rotate_after: \"2020-01-01T00:00:00Z\"");
        let agent = AgentDirs::new();
        let cfg = config(
            &agent,
            &[auth.addr()],
            &auth.pin,
            &keypair_onboarding(&name),
        );
        crash_at(&cfg, point);
        recover(&cfg, point);
        assert_no_false_alarm(&auth, point);
        let joins: Vec<_> = auth
            .audit("bot.join")
            .into_iter()
            .filter(|j| j["fields"]["token"] == name.as_str())
            .collect();
        assert_eq!(joins.len(), 1, "{point}: {joins:?}");
        assert_eq!(joins[0]["fields"]["rotated"], true, "{point}");
        assert!(
            !agent.storage.join("bound_keypair.next.key").exists(),
            "{point}"
        );
        // The agent holds the rotated, bound key and the current state: a
        // recovery proves it (and would lock the token otherwise).
        lose_credential(&agent);
        recover(&cfg, point);
        assert_no_false_alarm(&auth, point);
        assert_eq!(
            instances_of(&auth, &format!("{name}-bot")).len(),
            2,
            "{point}"
        );
    }
}

#[test]
fn a_copied_bound_keypair_agent_is_still_caught() {
    let auth = Auth::start();
    keypair_token(&auth, "dup", "");
    let servers = [auth.addr()];
    let agent = AgentDirs::new();
    let cfg = config(&agent, &servers, &auth.pin, &keypair_onboarding("dup"));

    // Copied mid-join (the answer committed, not saved): both hold the pending
    // key, so both are answered as a retry — the same instance, generation 1 —
    // and the generation counter tells them apart at the first renewal.
    crash_at(&cfg, "join.after_answer");
    let copy = AgentDirs::new();
    copy_dir(&agent.storage, &copy.storage);
    let copy_cfg = config(&copy, &servers, &auth.pin, &keypair_onboarding("dup"));
    recover(&cfg, "join.after_answer");
    recover(&copy_cfg, "join.after_answer");
    assert_eq!(
        credential(&agent)["instance_id"],
        credential(&copy)["instance_id"]
    );
    assert_eq!(instances_of(&auth, "dup-bot").len(), 1);
    assert_no_false_alarm(&auth, "a copy's retry");
    recover(&cfg, "renewal");
    let o = run_agent(&copy_cfg, None);
    assert!(!o.status.success(), "the copy renewed:\n{}", text(&o));
    assert_copy_caught(&auth, "bot_instance=");

    // Copied at rest: the original recovers, the copy shows the old join state
    // with its own key — two machines: the token is locked.
    let copy2 = AgentDirs::new();
    copy_dir(&agent.storage, &copy2.storage);
    let copy2_cfg = config(&copy2, &servers, &auth.pin, &keypair_onboarding("dup"));
    lose_credential(&agent);
    recover(&cfg, "a recovery");
    lose_credential(&copy2);
    let o = run_agent(&copy2_cfg, None);
    assert!(!o.status.success(), "the copy joined:\n{}", text(&o));
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    assert_copy_caught(&auth, "token=");
}

fn joins_committed(url: &str) -> u64 {
    psql(url, "SELECT count(*) FROM audit WHERE type = 'bot.join'")
        .parse()
        .expect("count")
}

/// A TCP relay to `to` that passes everything on until the database at `url`
/// holds more than `joins` committed joins, then drops the connection instead
/// of passing the server's next bytes and stops listening: the answer is lost
/// and the server is gone, as when it dies right after committing.
fn answer_losing_relay(to: String, url: String, joins: u64) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let (Ok(client), Ok(server)) = (conn, TcpStream::connect(&to)) else {
                return;
            };
            let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut client, mut server) = (client, server);
            let mut buf = [0u8; 16 * 1024];
            let mut lost = false;
            while let Ok(n @ 1..) = server.read(&mut buf) {
                if joins_committed(&url) > joins {
                    lost = true;
                    break;
                }
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            if lost {
                return;
            }
        }
    });
    addr
}

#[test]
fn a_bound_keypair_answer_lost_by_a_dying_server_is_answered_again_by_the_other() {
    let url = fresh_db();
    let keydir = tempfile::tempdir().expect("tempdir");
    let audit_key = keydir.path().join("audit-key.json");
    let server = || {
        Auth::start_with(&[
            "--store",
            &url,
            "--audit-key",
            audit_key.to_str().expect("utf8"),
        ])
    };
    let mut a = server();
    let b = server();
    keypair_token(&a, "lost", ", rotate_after: \"2020-01-01T00:00:00Z\"");
    let agent = AgentDirs::new();
    let onboarding = keypair_onboarding("lost");

    for (round, what) in ["the first join (with a rotation)", "a recovery"]
        .iter()
        .enumerate()
    {
        lose_credential(&agent);
        let relay = answer_losing_relay(a.addr(), url.clone(), joins_committed(&url));
        let cfg = config(&agent, &[relay, b.addr()], &a.pin, &onboarding);
        // The agent may fail over to B in the same run, or exit and be restarted.
        let first = run_agent(&cfg, None);
        if !first.status.success() {
            assert!(!text(&first).contains("join denied"), "{}", text(&first));
            recover(&cfg, what);
        }
        assert_no_false_alarm(&b, what);
        assert_eq!(joins_committed(&url), round as u64 + 1, "{what}");
        let retries = b.audit("bot.join.retry");
        assert_eq!(retries.len(), round + 1, "{what}: {retries:?}");
        let c = credential(&agent);
        assert_eq!(c["generation"], 1);
        assert!(
            retries[round]
                .to_string()
                .contains(c["instance_id"].as_str().expect("id")),
            "{retries:?}"
        );
        assert_eq!(instances_of(&b, "lost-bot").len(), round + 1);
    }
    a.kill();
    // Renewals on B, and a later recovery, see nothing wrong.
    let cfg = config(&agent, &[b.addr()], &b.pin, &onboarding);
    recover(&cfg, "a renewal");
    lose_credential(&agent);
    recover(&cfg, "a later recovery");
    assert_no_false_alarm(&b, "the end");
}

#[test]
fn a_lost_bound_keypair_answer_survives_a_jwt_ca_rotation() {
    let auth = Auth::start();
    keypair_token(&auth, "ca", "");
    let agent = AgentDirs::new();
    let cfg = config(&agent, &[auth.addr()], &auth.pin, &keypair_onboarding("ca"));
    recover(&cfg, "the first join");
    lose_credential(&agent);
    // A recovery commits, its answer is lost; then the JWT CA that signed the
    // join states is rotated out entirely before the agent comes back.
    crash_at(&cfg, "join.after_answer");
    for phase in ["init", "update_clients", "update_servers"] {
        auth.ok(&["ca", "rotate", "--type", "jwt", "--phase", phase]);
    }
    auth.ok(&[
        "ca", "rotate", "--type", "jwt", "--phase", "standby", "--force",
    ]);
    recover(&cfg, "join.after_answer, then a JWT CA rotation");
    assert_eq!(auth.audit("bot.join.retry").len(), 1);
    assert_eq!(instances_of(&auth, "ca-bot").len(), 2);
    // The state answered again (signed by the old CA) is the current one.
    lose_credential(&agent);
    recover(&cfg, "a recovery after the rotation");
    assert_eq!(instances_of(&auth, "ca-bot").len(), 3);
    assert_no_false_alarm(&auth, "a JWT CA rotation");
}
