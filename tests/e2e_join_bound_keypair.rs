//! End to end: join method `bound_keypair` with real `sigil` processes —
//! registration with a secret, a pre-registered key, recovery limits, a
//! copied key pair detected through the join state, key rotation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const SECRET: &str = "registration-secret-0123456789";

/// A bot and a bound_keypair token `name` for it with `section` as its
/// `spec.bound_keypair` (YAML flow mapping).
fn token(auth: &Auth, name: &str, section: &str) {
    auth.bot(&format!("{name}-bot"), &["svc"]);
    auth.create(
        &format!("{name}.yaml"),
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: {name}}}\nspec:\n  bot_name: {name}-bot\n  join_method: bound_keypair\n  bound_keypair: {section}\n"
        ),
    );
}

/// An agent config for token `name`, with the registration secret if given.
fn config(auth: &Auth, agent: &AgentDirs, name: &str, secret: Option<&str>) -> PathBuf {
    let section = secret
        .map(|s| format!(", bound_keypair: {{registration_secret: {s}}}"))
        .unwrap_or_default();
    let cfg = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: bound_keypair, token: {name}{section}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 30m\nrenewal_interval: 10m\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            auth.addr(),
            auth.pin,
            agent.storage.display(),
            agent.out.display()
        ),
    )
    .expect("config");
    cfg
}

fn start(cfg: &Path) -> Output {
    std::process::Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(cfg)
        .output()
        .expect("run agent")
}

fn credential(agent: &AgentDirs) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(agent.storage.join("credential.json")).expect("credential.json"),
    )
    .expect("json")
}

/// Lose the credential, as after a wiped disk or a long outage.
fn lose_credential(agent: &AgentDirs) {
    std::fs::remove_file(agent.storage.join("credential.json")).expect("rm credential");
}

fn denied_reasons(auth: &Auth) -> Vec<String> {
    auth.audit("bot.join.denied")
        .iter()
        .map(|e| {
            e["fields"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn assert_denied(o: &Output, auth: &Auth, reason: &str) {
    assert!(!o.status.success(), "join accepted:\n{}", text(o));
    assert!(text(o).contains("join denied"), "{}", text(o));
    assert!(
        !text(o).contains(reason),
        "the client learnt why: {}",
        text(o)
    );
    let reasons = denied_reasons(auth);
    assert!(
        reasons.iter().any(|r| r.contains(reason)),
        "no denial for {reason:?} in {reasons:?}"
    );
}

/// `ssh-keygen -t ed25519` into `<storage>/bound_keypair.key`; the .pub line.
fn keygen(agent: &AgentDirs) -> String {
    std::fs::create_dir_all(&agent.storage).expect("storage");
    let key = agent.storage.join("bound_keypair.key");
    let o = run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "host",
            "-f",
            key.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let line = std::fs::read_to_string(key.with_extension("key.pub")).expect("pub");
    std::fs::remove_file(key.with_extension("key.pub")).expect("rm pub");
    line.trim().to_string()
}

#[test]
fn registration_secret_binds_the_key_and_the_identity_renews() {
    let auth = Auth::start();
    token(
        &auth,
        "vm1",
        &format!("{{onboarding: {{registration_secret: {SECRET}}}}}"),
    );

    // A wrong secret registers nothing.
    let wrong = AgentDirs::new();
    let o = start(&config(
        &auth,
        &wrong,
        "vm1",
        Some("not-the-secret-0123456789"),
    ));
    assert_denied(&o, &auth, "wrong registration secret");

    let agent = AgentDirs::new();
    let cfg = config(&auth, &agent, "vm1", Some(SECRET));
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    let c = credential(&agent);
    assert_eq!(c["renewable"], true, "{c}");
    assert_eq!(c["generation"], 1);
    for f in ["bound_keypair.key", "bound_keypair.state"] {
        assert_eq!(mode(&agent.storage.join(f)), 0o600, "{f}");
    }
    let key = std::fs::read_to_string(agent.storage.join("bound_keypair.key")).expect("key");
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let joins = auth.audit("bot.join");
    assert_eq!(joins.len(), 1);
    let f = &joins[0]["fields"];
    assert_eq!(f["token"], "vm1");
    assert_eq!(f["registered"], true);
    assert_eq!(f["sequence"], 1);
    assert!(
        !joins[0].to_string().contains(SECRET),
        "secret in the audit log"
    );

    // The next run renews: same instance, no new join.
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    let c2 = credential(&agent);
    assert_eq!(c2["generation"], 2);
    assert_eq!(c2["instance_id"], c["instance_id"]);
    assert_eq!(auth.audit("bot.join").len(), 1);
    assert_eq!(auth.instances().len(), 1);
}

#[test]
fn initial_public_key_joins_and_another_key_is_denied() {
    let auth = Auth::start();
    let agent = AgentDirs::new();
    let public = keygen(&agent);
    token(
        &auth,
        "metal",
        &format!("{{onboarding: {{initial_public_key: \"{public}\"}}}}"),
    );
    let o = start(&config(&auth, &agent, "metal", None));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(credential(&agent)["renewable"], true);
    let joins = auth.audit("bot.join");
    assert_eq!(joins[0]["fields"]["registered"], false);

    let other = AgentDirs::new();
    keygen(&other);
    let o = start(&config(&auth, &other, "metal", None));
    assert_denied(&o, &auth, "is not the key bound to the token");
    assert_eq!(auth.instances().len(), 1);
}

#[test]
fn recovery_is_limited() {
    let auth = Auth::start();
    token(
        &auth,
        "rec",
        &format!("{{onboarding: {{registration_secret: {SECRET}}}, recovery: {{limit: 2}}}}"),
    );
    let agent = AgentDirs::new();
    let cfg = config(&auth, &agent, "rec", Some(SECRET));
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    let first = credential(&agent)["instance_id"].clone();

    lose_credential(&agent);
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        credential(&agent)["instance_id"],
        first,
        "a recovery is a new instance"
    );
    assert_eq!(auth.instances().len(), 2);

    lose_credential(&agent);
    let o = start(&cfg);
    assert_denied(
        &o,
        &auth,
        "recovery limit 2 reached: raise spec.bound_keypair.recovery.limit",
    );
    assert_eq!(auth.instances().len(), 2);
}

fn copy_dir(from: &Path, to: &Path) {
    let o = run("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn copied_key_pair_is_detected_and_the_token_locked() {
    let auth = Auth::start();
    token(
        &auth,
        "dup",
        &format!("{{onboarding: {{registration_secret: {SECRET}}}, recovery: {{limit: 5}}}}"),
    );
    let agent = AgentDirs::new();
    let o = start(&config(&auth, &agent, "dup", Some(SECRET)));
    assert!(o.status.success(), "{}", text(&o));

    // Someone copies the storage, then the original recovers.
    let copy = AgentDirs::new();
    copy_dir(&agent.storage, &copy.storage);
    lose_credential(&agent);
    let o = start(&config(&auth, &agent, "dup", Some(SECRET)));
    assert!(o.status.success(), "{}", text(&o));
    assert!(auth.audit("lock.created").is_empty());

    // The copy's join state is one behind: denied and the token locked.
    lose_credential(&copy);
    let o = start(&config(&auth, &copy, "dup", Some(SECRET)));
    assert_denied(&o, &auth, "stale join state");
    let locks: serde_json::Value =
        serde_json::from_str(&auth.ok(&["locks", "ls", "--format", "json"])).expect("json");
    let locks = locks.as_array().expect("array").clone();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert!(locks[0].to_string().contains("token"), "{locks:?}");
    let created = auth.audit("lock.created");
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        created[0]["fields"]["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with("token=")
    );

    // The lock holds the original too until a person removes it.
    lose_credential(&agent);
    let o = start(&config(&auth, &agent, "dup", Some(SECRET)));
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn rotate_after_in_the_past_rotates_the_key_at_the_join() {
    let auth = Auth::start();
    let agent = AgentDirs::new();
    let public = keygen(&agent);
    token(
        &auth,
        "rot",
        &format!(
            "{{onboarding: {{initial_public_key: \"{public}\"}}, recovery: {{limit: 3}}, rotate_after: \"2020-01-01T00:00:00Z\"}}"
        ),
    );
    let key_file = agent.storage.join("bound_keypair.key");
    let before = std::fs::read_to_string(&key_file).expect("key");
    let cfg = config(&auth, &agent, "rot", None);
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(&key_file).expect("key");
    assert_ne!(before, after, "the key was not rotated");
    assert_eq!(mode(&key_file), 0o600);
    assert!(!agent.storage.join("bound_keypair.next.key").exists());
    assert_eq!(auth.audit("bot.join")[0]["fields"]["rotated"], true);

    // The next recovery proves the new key; no second rotation.
    lose_credential(&agent);
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&key_file).expect("key"), after);
    let joins = auth.audit("bot.join");
    assert_eq!(joins.len(), 2);
    assert!(
        joins.iter().any(|j| j["fields"]["rotated"] == false),
        "{joins:?}"
    );
}

#[test]
fn a_join_state_from_before_a_jwt_ca_rotation_still_recovers() {
    let auth = Auth::start();
    token(
        &auth,
        "rot",
        &format!("{{onboarding: {{registration_secret: {SECRET}}}, recovery: {{limit: 5}}}}"),
    );
    let agent = AgentDirs::new();
    let cfg = config(&auth, &agent, "rot", Some(SECRET));
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));

    // The join state was signed by the JWT CA, which is now rotated out entirely:
    // its key is no longer trusted anywhere.
    for phase in ["init", "update_clients", "update_servers"] {
        auth.ok(&["ca", "rotate", "--type", "jwt", "--phase", phase]);
    }
    auth.ok(&[
        "ca", "rotate", "--type", "jwt", "--phase", "standby", "--force",
    ]);

    // A genuine state is still the current one: the recovery goes through, no lock.
    lose_credential(&agent);
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(auth.audit("lock.created").is_empty());
    assert_eq!(auth.instances().len(), 2);

    // And the state issued now (by the new key) is checked just the same.
    lose_credential(&agent);
    let o = start(&cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(auth.audit("lock.created").is_empty());
}
