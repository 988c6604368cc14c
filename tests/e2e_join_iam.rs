//! End to end: join method `iam`. The agent signs `sts:GetCallerIdentity`
//! with AWS credentials; the auth service forwards it to an STS stand-in
//! (tests/common/sts.rs) that re-verifies the SigV4 signature for real.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::https::HttpsFixture;
use common::sts::{self, StsKey};
use common::*;

const TOKEN: &str = "aws-deployer";

const DEPLOYER: StsKey = StsKey {
    access_key_id: "AKIADEPLOYER0000001",
    secret: "deployer-secret-key-do-not-log",
    account: "123456789012",
    arn: "arn:aws:sts::123456789012:assumed-role/deployer/i-0abc",
    user_id: "AROADEPLOYER:i-0abc",
};
const OTHER: StsKey = StsKey {
    access_key_id: "AKIAOTHER0000000002",
    secret: "other-secret-key",
    account: "123456789012",
    arn: "arn:aws:sts::123456789012:assumed-role/builder/i-0def",
    user_id: "AROABUILDER:i-0def",
};

/// An auth service allowing only `fixture` as STS, a `deployer` bot and an
/// `iam` token for it.
fn setup(fixture: &HttpsFixture) -> Auth {
    let auth = Auth::start_with(&[
        "--outbound-ca-file",
        fixture.ca_pem.to_str().expect("utf8"),
        "--sts-endpoint",
        &fixture.url,
    ]);
    auth.bot("deployer", &["deploy"]);
    auth.create(
        "iam-token.yaml",
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: {TOKEN}}}\nspec:\n  bot_name: deployer\n  join_method: iam\n  iam:\n    allow:\n      - aws_account: \"123456789012\"\n        aws_arn: \"arn:aws:sts::123456789012:assumed-role/deployer/*\"\n"
        ),
    );
    auth
}

/// A oneshot `iam` agent run signing with `key` (secret `secret`) for `sts_url`.
fn join(auth: &Auth, agent: &AgentDirs, sts_url: &str, key: &str, secret: &str) -> Output {
    let cfg = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: iam, token: {TOKEN}, iam: {{sts_endpoint: \"{sts_url}\", region: us-east-1}}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 30m\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            auth.addr(),
            auth.pin,
            agent.storage.display(),
            agent.out.display()
        ),
    )
    .expect("write agent config");
    std::process::Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        // Never reach a real metadata service from a test.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("SIGIL_LOG", "debug")
        .output()
        .expect("run agent")
}

fn credential(storage: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(storage.join("credential.json")).expect("credential.json"),
    )
    .expect("json")
}

fn assert_denied(o: &Output) {
    assert!(!o.status.success(), "join should fail:\n{}", text(o));
    assert!(text(o).contains("join denied"), "{}", text(o));
}

fn assert_no_secret(auth: &Auth, o: &Output) {
    let all = stdout(&auth.admin(&["audit", "ls", "--format", "json"]));
    for (what, hay) in [("audit", all), ("auth log", auth.log()), ("agent", text(o))] {
        assert!(
            !hay.contains(DEPLOYER.secret) && !hay.contains("Signature="),
            "{what} holds a secret or signature:\n{hay}"
        );
    }
}

#[test]
fn iam_join_succeeds_records_attributes_and_reproves() {
    let fixture = sts::start(&[DEPLOYER]);
    let auth = setup(&fixture);
    let agent = AgentDirs::new();
    let o = join(
        &auth,
        &agent,
        &fixture.url,
        DEPLOYER.access_key_id,
        DEPLOYER.secret,
    );
    assert!(o.status.success(), "agent failed:\n{}", text(&o));
    assert!(agent.out.join("tls.crt").exists());
    assert_eq!(fixture.requests_to("/").len(), 1, "STS saw one request");
    let cred = credential(&agent.storage);
    assert_eq!(cred["renewable"], false, "{cred}");
    assert_eq!(cred["generation"], 1, "{cred}");
    let instance_id = cred["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();

    let instances = auth.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let inst = instances[0].to_string();
    for attr in [
        DEPLOYER.account,
        DEPLOYER.arn,
        DEPLOYER.user_id,
        "aws_arn",
        "aws_user_id",
    ] {
        assert!(inst.contains(attr), "instance lacks {attr}: {inst}");
    }
    let joins = auth.audit("bot.join");
    let j = joins.last().expect("a bot.join event").to_string();
    assert!(j.contains("\"matched_rule\":0"), "{j}");
    assert!(j.contains(DEPLOYER.arn) && j.contains("claims"), "{j}");
    assert_no_secret(&auth, &o);

    // The next run re-proves with fresh evidence and keeps the instance.
    let o = join(
        &auth,
        &agent,
        &fixture.url,
        DEPLOYER.access_key_id,
        DEPLOYER.secret,
    );
    assert!(o.status.success(), "re-proof failed:\n{}", text(&o));
    let cred = credential(&agent.storage);
    assert_eq!(cred["instance_id"], instance_id.as_str(), "{cred}");
    assert_eq!(cred["generation"], 2, "{cred}");
    assert_eq!(auth.instances().len(), 1);
    assert_eq!(fixture.requests_to("/").len(), 2, "STS saw the re-proof");
}

#[test]
fn iam_arn_matching_no_rule_is_denied() {
    let fixture = sts::start(&[DEPLOYER, OTHER]);
    let auth = setup(&fixture);
    let o = join(
        &auth,
        &AgentDirs::new(),
        &fixture.url,
        OTHER.access_key_id,
        OTHER.secret,
    );
    assert_denied(&o);
    let denied = auth.audit("bot.join.denied");
    let d = denied.last().expect("a denial").to_string();
    assert!(
        d.contains("rule_explanation") && d.contains(OTHER.arn),
        "{d}"
    );
    assert!(auth.instances().is_empty());
}

#[test]
fn iam_unknown_key_or_wrong_secret_is_denied_by_sts() {
    let fixture = sts::start(&[DEPLOYER]);
    let auth = setup(&fixture);
    let o = join(
        &auth,
        &AgentDirs::new(),
        &fixture.url,
        "AKIAUNKNOWN00000000",
        "x",
    );
    assert_denied(&o);
    let o = join(
        &auth,
        &AgentDirs::new(),
        &fixture.url,
        DEPLOYER.access_key_id,
        "wrong-secret",
    );
    assert_denied(&o);
    assert_eq!(fixture.requests_to("/").len(), 2, "both reached STS");
    // The two denials look identical (same reason and source), so the second is
    // counted into an aggregate row written when its 10-second window ends.
    let mut denied = Vec::new();
    wait_until("both denials audited", Duration::from_secs(30), || {
        denied = auth.audit("bot.join.denied");
        let n: u64 = denied
            .iter()
            .map(|r| r["fields"]["count"].as_u64().unwrap_or(1))
            .sum();
        n == 2
    });
    for d in &denied {
        assert!(d.to_string().contains("403"), "{d}");
    }
    assert!(auth.instances().is_empty());
    assert_no_secret(&auth, &o);
}

#[test]
fn iam_forged_sts_host_is_denied_without_contact() {
    let fixture = sts::start(&[DEPLOYER]);
    // An "STS" the attacker runs, vouching for anyone; not in --sts-endpoint.
    let forged = sts::start(&[DEPLOYER]);
    let auth = setup(&fixture);
    let o = join(
        &auth,
        &AgentDirs::new(),
        &forged.url,
        DEPLOYER.access_key_id,
        DEPLOYER.secret,
    );
    assert_denied(&o);
    assert!(
        forged.requests.lock().expect("requests").is_empty(),
        "the forged STS was contacted"
    );
    assert!(fixture.requests.lock().expect("requests").is_empty());
    let d = auth.audit("bot.join.denied");
    let d = d.last().expect("a denial").to_string();
    assert!(d.contains("not allowed"), "{d}");
    assert!(auth.instances().is_empty());
}

#[test]
fn iam_token_lock_refuses_the_join() {
    let fixture = sts::start(&[DEPLOYER]);
    let auth = setup(&fixture);
    auth.ok(&["locks", "add", "--token", TOKEN, "--message", "compromised"]);
    let o = join(
        &auth,
        &AgentDirs::new(),
        &fixture.url,
        DEPLOYER.access_key_id,
        DEPLOYER.secret,
    );
    assert!(
        !o.status.success(),
        "a locked token must not join:\n{}",
        text(&o)
    );
    assert!(auth.instances().is_empty());
    let d = auth.audit("bot.join.denied");
    let d = d.last().expect("a denial").to_string().to_lowercase();
    assert!(d.contains("lock"), "{d}");
}
