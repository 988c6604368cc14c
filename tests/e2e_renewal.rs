//! End to end: renewal, the generation counter, locks, restarts and outages.

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn renewal_from_storage_needs_no_token_and_bumps_generation() {
    let auth = Auth::start();
    let token = auth.bot("svc", &["svc"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    assert_eq!(agent.generation(), 1);
    let before = std::fs::read_to_string(agent.out.join("tls.crt")).expect("crt");
    // Agent restart: no token, renews from storage.
    let o = agent.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    assert!(
        !agent.storage.join("next_key.pem").exists(),
        "pending key must be cleared"
    );
    let after = std::fs::read_to_string(agent.out.join("tls.crt")).expect("crt");
    assert_ne!(before, after, "outputs are refreshed on renewal");
    assert_eq!(auth.instances()[0]["spec"]["generation"], 2);
    assert_eq!(auth.audit("bot.renewal").len(), 1);
}

#[test]
fn copied_storage_is_detected_and_only_that_instance_locked() {
    let auth = Auth::start();
    let token = auth.bot("copyme", &["c"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    // An unrelated instance of the same bot must keep working.
    let t2 = stdout(&auth.admin(&["tokens", "add", "--bot", "copyme", "--format", "json"]));
    let t2: serde_json::Value = serde_json::from_str(&t2).expect("json");
    let other = AgentDirs::new();
    assert!(other.oneshot(&auth, t2["token"].as_str()).status.success());

    // The attacker copies the storage; the original keeps renewing.
    let stolen = AgentDirs::new();
    std::fs::create_dir_all(&stolen.storage).expect("dir");
    std::fs::copy(
        agent.storage.join("credential.json"),
        stolen.storage.join("credential.json"),
    )
    .expect("copy");
    assert!(agent.oneshot(&auth, None).status.success());
    assert_eq!(agent.generation(), 2);

    let o = stolen.oneshot(&auth, None);
    assert!(
        !o.status.success(),
        "a copied credential renewed:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("generation mismatch"), "{}", text(&o));

    let mismatches = auth.audit("bot.generation_mismatch");
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert_eq!(mismatches[0]["fields"]["presented_generation"], 1);
    assert_eq!(mismatches[0]["fields"]["stored_generation"], 2);
    // The instance is locked: the original is cut off too (it was copied).
    let o = agent.oneshot(&auth, None);
    assert!(!o.status.success());
    assert!(text(&o).contains("locked"), "{}", text(&o));
    // ...but only that instance.
    let o = other.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));
    let locks: serde_json::Value =
        serde_json::from_str(&auth.ok(&["locks", "ls", "--format", "json"])).expect("json");
    assert_eq!(locks.as_array().map(|a| a.len()), Some(1), "{locks}");
}

#[test]
fn retry_after_crash_mid_renewal_is_not_theft() {
    let auth = Auth::start();
    let token = auth.bot("crashy", &["c"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    let gen1 = std::fs::read(agent.storage.join("credential.json")).expect("cred");
    // A renewal the server completes...
    assert!(agent.oneshot(&auth, None).status.success());
    let gen2: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.storage.join("credential.json")).expect("cred"),
    )
    .expect("json");
    // ...but whose result the agent never saved: it still holds generation 1
    // and the next key it persisted before asking.
    std::fs::write(agent.storage.join("credential.json"), &gen1).expect("restore");
    std::fs::write(
        agent.storage.join("next_key.pem"),
        gen2["key_pem"].as_str().expect("key"),
    )
    .expect("key");
    let o = agent.oneshot(&auth, None);
    assert!(
        o.status.success(),
        "the retry was treated as theft:\n{}",
        text(&o)
    );
    assert_eq!(agent.generation(), 2);
    assert!(auth.audit("bot.generation_mismatch").is_empty());
    // And it carries on normally.
    assert!(agent.oneshot(&auth, None).status.success());
    assert_eq!(agent.generation(), 3);
}

#[test]
fn locks_refuse_renewal_and_expire() {
    let auth = Auth::start();
    let token = auth.bot("lockme", &["l"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());

    let out = auth.ok(&[
        "locks",
        "add",
        "--bot",
        "lockme",
        "--message",
        "incident 42",
        "--format",
        "json",
    ]);
    let lock: serde_json::Value = serde_json::from_str(&out).expect("lock json");
    let id = lock["metadata"]["name"]
        .as_str()
        .expect("lock id")
        .to_string();
    let o = agent.oneshot(&auth, None);
    assert!(!o.status.success(), "renewed while locked");
    assert!(
        text(&o).contains("incident 42"),
        "the error must name the lock's message:\n{}",
        text(&o)
    );
    // The identity output is refused on the admin API too.
    let idf = agent.out.join("identity");
    let remote = std::process::Command::new(sigil_bin())
        .args([
            "--auth-server",
            &auth.addr(),
            "--identity",
            idf.to_str().unwrap(),
            "get",
            "roles",
        ])
        .output()
        .expect("run");
    assert!(!remote.status.success());
    assert!(text(&remote).contains("incident 42"), "{}", text(&remote));

    auth.ok(&["locks", "rm", &id]);
    assert!(agent.oneshot(&auth, None).status.success());
    assert_eq!(auth.audit("lock.created").len(), 1);
    assert_eq!(auth.audit("lock.deleted").len(), 1);

    // A lock with a TTL lifts by itself.
    auth.ok(&[
        "locks",
        "add",
        "--role",
        "lockme-role",
        "--ttl",
        "2s",
        "--message",
        "brief",
    ]);
    let o = agent.oneshot(&auth, None);
    assert!(
        !o.status.success() && text(&o).contains("brief"),
        "{}",
        text(&o)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let o = agent.oneshot(&auth, None);
    assert!(
        o.status.success(),
        "expired lock still enforced:\n{}",
        text(&o)
    );
}

#[test]
fn state_survives_auth_restart() {
    let mut auth = Auth::start();
    let token = auth.bot("persist", &["p"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    let pin = auth.pin.clone();
    auth.stop();
    auth.spawn();
    assert_eq!(auth.pin, pin, "the CA must survive a restart");
    let o = agent.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    assert!(
        auth.ok(&["get", "role/persist-role", "-o", "yaml"])
            .contains("persist-role")
    );
    let v = auth.admin(&["audit", "verify"]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn agent_keeps_credentials_while_auth_is_down_and_recovers() {
    let mut auth = Auth::start();
    let token = auth.bot("steady", &["s"]);
    let agent = AgentDirs::new();
    let diag = free_port();
    let mut child = agent
        .command(&auth, Some(&token), false)
        .args([
            "--renewal-interval",
            "1s",
            "--diag-addr",
            &format!("127.0.0.1:{diag}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let ready = || {
        std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{diag}/readyz")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    wait_until("the agent to be ready", Duration::from_secs(20), ready);
    wait_until("a renewal", Duration::from_secs(20), || {
        agent.generation() >= 2
    });

    auth.stop();
    std::thread::sleep(Duration::from_millis(300));
    let crt = std::fs::read(agent.out.join("tls.crt")).expect("crt");
    let generation = agent.generation();
    wait_until(
        "readyz to report the outage",
        Duration::from_secs(20),
        || !ready(),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the agent exited while the auth service was down"
    );
    assert_eq!(
        std::fs::read(agent.out.join("tls.crt")).expect("crt"),
        crt,
        "files changed during the outage"
    );
    assert_eq!(agent.generation(), generation);

    auth.spawn();
    wait_until("recovery", Duration::from_secs(40), || {
        agent.generation() > generation && ready()
    });
    assert_ne!(std::fs::read(agent.out.join("tls.crt")).expect("crt"), crt);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

#[test]
fn sighup_forces_a_renewal() {
    let auth = Auth::start();
    let token = auth.bot("hup", &["h"]);
    let agent = AgentDirs::new();
    let mut child = agent
        .command(&auth, Some(&token), false)
        .args(["--renewal-interval", "30m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    wait_until("the first join", Duration::from_secs(20), || {
        agent.storage.join("credential.json").exists() && agent.out.join("identity").exists()
    });
    assert_eq!(agent.generation(), 1);
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("the SIGHUP renewal", Duration::from_secs(20), || {
        agent.generation() == 2
    });
    let _ = child.kill();
    let _ = child.wait();
}
