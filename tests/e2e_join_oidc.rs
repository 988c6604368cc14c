//! End to end: the ID-token join methods (`github`, `gitlab`, `oidc`,
//! `kubernetes`) with real `sigil auth` and `sigil agent` processes against
//! a local OIDC issuer fixture (discovery, JWKS, key rotation, the GitHub
//! Actions runtime endpoint).

mod common;

use common::oidc_issuer::{
    ACTIONS_REQUEST_TOKEN, CLUSTER, GITLAB, K8S, OIDC, OidcIssuer, gitlab_claims,
    kubernetes_claims, now,
};
use common::*;
use serde_json::{Value, json};
use std::process::{Command, Output};

/// An issuer, an auth service trusting its CA, and the bot `deployer`.
fn setup() -> (OidcIssuer, Auth) {
    let issuer = OidcIssuer::start();
    let auth = Auth::start_with(&["--outbound-ca-file", &issuer.ca_pem()]);
    auth.bot("deployer", &["ubuntu"]);
    (issuer, auth)
}

/// A `kind: token` for the bot `deployer` with the method's section (YAML flow).
fn add_token(auth: &Auth, name: &str, method: &str, section: &str) {
    auth.create(
        &format!("{name}.yaml"),
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: {name}}}\nspec:\n  bot_name: deployer\n  join_method: {method}\n  {method}: {section}\n"
        ),
    );
}

fn gitlab_token(issuer: &OidcIssuer, auth: &Auth) {
    add_token(
        auth,
        "ci-gitlab",
        "gitlab",
        &format!(
            "{{domain: \"{}\", allow: [{{project_path: acme/web, ref_protected: true}}]}}",
            issuer.host()
        ),
    );
}

/// A one-shot agent joining through `gitlab` with `jwt` in SIGIL_ID_TOKEN.
fn gitlab_agent(auth: &Auth, dirs: &AgentDirs, jwt: &str) -> Output {
    dirs.command(auth, Some("ci-gitlab"), true)
        .args(["--join-method", "gitlab"])
        .env("SIGIL_ID_TOKEN", jwt)
        .output()
        .expect("run agent")
}

/// A one-shot agent from a config file with this `onboarding:` (YAML flow).
fn config_agent(auth: &Auth, dirs: &AgentDirs, onboarding: &str) -> Output {
    let cfg = dirs.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {onboarding}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 30m\nrenewal_interval: 10m\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            auth.addr(),
            auth.pin,
            dirs.storage.display(),
            dirs.out.display()
        ),
    )
    .expect("agent config");
    Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent")
}

fn credential(dirs: &AgentDirs) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(dirs.storage.join("credential.json")).expect("credential.json"),
    )
    .expect("json")
}

/// `join_attributes` of the identity extension in the output `tls.crt`.
fn cert_attributes(dirs: &AgentDirs) -> std::collections::BTreeMap<String, String> {
    let pem = std::fs::read_to_string(dirs.out.join("tls.crt")).expect("tls.crt");
    let ders = sigil_pki::pem_to_ders(&pem, "CERTIFICATE").expect("pem");
    let (id, _) = sigil_pki::read_client_identity(&ders[0]).expect("identity extension");
    id.join_attributes
}

/// The bot instance whose id is `id`.
fn instance(auth: &Auth, id: &str) -> Value {
    auth.instances()
        .into_iter()
        .find(|i| i["spec"]["instance_id"] == id)
        .unwrap_or_else(|| panic!("no bot instance {id}"))
}

/// The checks every successful ID-token join shares; returns the instance id.
fn assert_joined(
    auth: &Auth,
    dirs: &AgentDirs,
    o: &Output,
    method: &str,
    attr: (&str, &str),
) -> String {
    assert!(
        o.status.success(),
        "{method} join failed:\n{}\n{}",
        text(o),
        auth.log()
    );
    let c = credential(dirs);
    assert_eq!(c["renewable"], false, "{c}");
    let id = c["instance_id"].as_str().expect("instance_id").to_string();
    let inst = instance(auth, &id);
    assert_eq!(inst["spec"]["join_method"], method, "{inst}");
    let latest = &inst["spec"]["authentications"][0];
    assert_eq!(latest["attributes"][attr.0], attr.1, "{inst}");
    assert_eq!(
        cert_attributes(dirs).get(attr.0).map(String::as_str),
        Some(attr.1)
    );
    let joins = auth.audit("bot.join");
    let ev = joins
        .iter()
        .find(|e| e["fields"]["instance_id"] == id.as_str() || e.to_string().contains(&id))
        .unwrap_or_else(|| panic!("no bot.join for {id}: {joins:?}"));
    assert_eq!(ev["fields"]["claims"][attr.0], attr.1, "{ev}");
    assert!(ev["fields"]["matched_rule"].is_number(), "{ev}");
    id
}

fn out_is_empty(dirs: &AgentDirs) -> bool {
    !dirs.out.exists() || std::fs::read_dir(&dirs.out).expect("dir").next().is_none()
}

/// The agent is refused, learns nothing but "join denied", writes nothing,
/// and the newest `bot.join.denied` says why (`reason_has`, any case).
fn assert_denied(auth: &Auth, dirs: &AgentDirs, o: &Output, reason_has: &str) -> Value {
    assert!(
        !o.status.success(),
        "accepted, expected {reason_has:?}:\n{}",
        text(o)
    );
    assert!(text(o).contains("join denied"), "{}", text(o));
    assert!(out_is_empty(dirs), "output written on denial");
    let denied = auth.audit("bot.join.denied");
    let last = denied.last().expect("a bot.join.denied").clone();
    let reason = last["fields"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        reason.contains(&reason_has.to_lowercase()),
        "reason {reason:?} does not say {reason_has:?}: {last}"
    );
    last
}

#[test]
fn github_joins_through_the_actions_runtime_and_reproves_keeping_the_instance() {
    let (issuer, auth) = setup();
    add_token(
        &auth,
        "ci-github",
        "github",
        &format!(
            "{{enterprise_server_host: \"{}\", allow: [{{repository: acme/infra, ref: refs/heads/main}}]}}",
            issuer.host()
        ),
    );
    let dirs = AgentDirs::new();
    let agent = || {
        dirs.command(&auth, Some("ci-github"), true)
            .args(["--join-method", "github"])
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", issuer.actions_url())
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", ACTIONS_REQUEST_TOKEN)
            .env("SSL_CERT_FILE", issuer.ca_pem())
            .output()
            .expect("run agent")
    };
    let o = agent();
    let id = assert_joined(&auth, &dirs, &o, "github", ("repository", "acme/infra"));
    assert!(
        !text(&o).contains(ACTIONS_REQUEST_TOKEN),
        "request token logged"
    );
    let asked = issuer.fixture.requests_to("/_actions/token");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].query.contains(&format!("audience={CLUSTER}")),
        "{:?}",
        asked[0].query
    );
    assert_eq!(cert_attributes(&dirs)["ref"], "refs/heads/main");

    // Not renewable: the second run re-proves with a fresh runtime token
    // and keeps the bot instance.
    let o = agent();
    assert!(
        o.status.success(),
        "re-proof failed:\n{}\n{}",
        text(&o),
        auth.log()
    );
    let c = credential(&dirs);
    assert_eq!(c["instance_id"], id.as_str(), "{c}");
    assert_eq!(dirs.generation(), 2);
    assert_eq!(issuer.fixture.requests_to("/_actions/token").len(), 2);
    let joins = auth.audit("bot.join");
    assert_eq!(joins.len(), 2, "{joins:?}");
    assert_eq!(joins[1]["fields"]["rejoin"], true, "{}", joins[1]);
    assert_eq!(auth.instances().len(), 1);
    let inst = instance(&auth, &id);
    assert_eq!(
        inst["spec"]["authentications"][0]["generation"], 2,
        "{inst}"
    );

    // A lock on the token refuses even a valid ID token.
    auth.ok(&[
        "locks",
        "add",
        "--token",
        "ci-github",
        "--message",
        "incident",
    ]);
    let fresh = AgentDirs::new();
    let o = fresh
        .command(&auth, Some("ci-github"), true)
        .args(["--join-method", "github"])
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", issuer.actions_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", ACTIONS_REQUEST_TOKEN)
        .env("SSL_CERT_FILE", issuer.ca_pem())
        .output()
        .expect("run agent");
    assert_denied(&auth, &fresh, &o, "locked");
}

#[test]
fn gitlab_joins_with_the_ci_variable() {
    let (issuer, auth) = setup();
    gitlab_token(&issuer, &auth);
    let dirs = AgentDirs::new();
    let o = gitlab_agent(&auth, &dirs, &issuer.mint(GITLAB, gitlab_claims()));
    assert_joined(&auth, &dirs, &o, "gitlab", ("project_path", "acme/web"));
    assert_eq!(cert_attributes(&dirs)["ref_protected"], "true");

    // Without the variable the agent says what to add, before any network call.
    let dirs = AgentDirs::new();
    let o = dirs
        .command(&auth, Some("ci-gitlab"), true)
        .args(["--join-method", "gitlab"])
        .env_remove("SIGIL_ID_TOKEN")
        .output()
        .expect("run agent");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("SIGIL_ID_TOKEN") && text(&o).contains(".gitlab-ci.yml"),
        "{}",
        text(&o)
    );
}

#[test]
fn oidc_joins_with_a_token_file() {
    let (issuer, auth) = setup();
    add_token(
        &auth,
        "ci-oidc",
        "oidc",
        &format!(
            "{{issuer: \"{}\", allow: [{{sub: \"svc-*\", team: platform}}]}}",
            issuer.issuer(OIDC)
        ),
    );
    let dirs = AgentDirs::new();
    std::fs::create_dir_all(dirs.dir.path()).expect("dir");
    let file = dirs.dir.path().join("id-token");
    let jwt = issuer.mint(OIDC, json!({"sub": "svc-build", "team": "platform"}));
    std::fs::write(&file, format!("{jwt}\n")).expect("token file");
    let onboarding = format!(
        "{{join_method: oidc, token: ci-oidc, oidc: {{token_path: {}}}}}",
        file.display()
    );
    let o = config_agent(&auth, &dirs, &onboarding);
    assert_joined(&auth, &dirs, &o, "oidc", ("team", "platform"));
    assert!(
        issuer
            .fixture
            .requests_to("/oidc/.well-known/openid-configuration")
            .len()
            == 1
    );

    // Claims that match no rule: denied, and the audit explains the rules.
    let dirs = AgentDirs::new();
    std::fs::create_dir_all(dirs.dir.path()).expect("dir");
    let file2 = dirs.dir.path().join("id-token");
    let jwt = issuer.mint(OIDC, json!({"sub": "svc-build", "team": "sales"}));
    std::fs::write(&file2, jwt).expect("token file");
    let o = config_agent(
        &auth,
        &dirs,
        &onboarding.replace(&file.display().to_string(), &file2.display().to_string()),
    );
    let ev = assert_denied(&auth, &dirs, &o, "no allow rule");
    let why = ev["fields"]["rule_explanation"].to_string();
    assert!(why.contains("team"), "{ev}");
}

#[test]
fn kubernetes_joins_with_static_jwks_and_with_discovery() {
    let (issuer, auth) = setup();
    add_token(
        &auth,
        "k8s-static",
        "kubernetes",
        &format!(
            "{{static_jwks: {}, allow: [{{service_account: \"apps:deployer\"}}]}}",
            serde_json::to_string(&issuer.jwks().to_string()).expect("yaml string")
        ),
    );
    add_token(
        &auth,
        "k8s-discovery",
        "kubernetes",
        &format!(
            "{{issuer: \"{}\", allow: [{{service_account: \"apps:*\"}}]}}",
            issuer.issuer(K8S)
        ),
    );
    for token in ["k8s-static", "k8s-discovery"] {
        let dirs = AgentDirs::new();
        std::fs::create_dir_all(dirs.dir.path()).expect("dir");
        let file = dirs.dir.path().join("sa-token");
        std::fs::write(
            &file,
            issuer.mint(K8S, kubernetes_claims("apps", "deployer")),
        )
        .expect("token");
        let o = config_agent(
            &auth,
            &dirs,
            &format!(
                "{{join_method: kubernetes, token: {token}, kubernetes: {{token_path: {}}}}}",
                file.display()
            ),
        );
        assert_joined(
            &auth,
            &dirs,
            &o,
            "kubernetes",
            ("service_account", "apps:deployer"),
        );
        assert_eq!(cert_attributes(&dirs)["pod.name"], "deployer-7d9f8-abcde");

        // Another namespace's service account matches no rule.
        let dirs = AgentDirs::new();
        std::fs::create_dir_all(dirs.dir.path()).expect("dir");
        let file = dirs.dir.path().join("sa-token");
        std::fs::write(
            &file,
            issuer.mint(K8S, kubernetes_claims("default", "deployer")),
        )
        .expect("token");
        let o = config_agent(
            &auth,
            &dirs,
            &format!(
                "{{join_method: kubernetes, token: {token}, kubernetes: {{token_path: {}}}}}",
                file.display()
            ),
        );
        assert_denied(&auth, &dirs, &o, "no allow rule");
    }
    assert_eq!(issuer.fixture.requests_to("/k8s/openid/v1/jwks").len(), 1);
}

#[test]
fn forged_expired_and_misaddressed_tokens_are_denied() {
    let (issuer, auth) = setup();
    gitlab_token(&issuer, &auth);
    let claims = |extra: Value| {
        let mut c = gitlab_claims();
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong audience",
            issuer.mint(GITLAB, claims(json!({"aud": "other.test"}))),
            "audience",
        ),
        (
            "expired",
            issuer.mint(
                GITLAB,
                claims(json!({"iat": now() - 900, "nbf": now() - 900, "exp": now() - 300})),
            ),
            "expired",
        ),
        (
            "not yet valid",
            issuer.mint(GITLAB, claims(json!({"nbf": now() + 600}))),
            "not valid before",
        ),
        (
            "wrong issuer",
            issuer.mint(OIDC, gitlab_claims()),
            "is not \"https://",
        ),
        (
            "unknown kid",
            issuer.mint_unpublished(GITLAB, gitlab_claims()),
            "unknown kid",
        ),
        (
            "alg none",
            issuer.mint_alg_none(GITLAB, gitlab_claims()),
            "alg none",
        ),
        (
            "HS256 with the public key",
            issuer.mint_hs256_public_key(GITLAB, gitlab_claims()),
            "hs256",
        ),
        (
            "unprotected ref",
            issuer.mint(GITLAB, claims(json!({"ref_protected": "false"}))),
            "no allow rule",
        ),
    ];
    for (what, jwt, reason) in &cases {
        let dirs = AgentDirs::new();
        let o = gitlab_agent(&auth, &dirs, jwt);
        let ev = assert_denied(&auth, &dirs, &o, reason);
        assert!(
            !ev.to_string().contains(jwt.as_str()),
            "{what}: the token is in the audit log"
        );
    }
    assert_eq!(auth.audit("bot.join.denied").len(), cases.len());
    assert!(auth.audit("bot.join").is_empty());
    assert!(auth.instances().is_empty());
    let last = auth.audit("bot.join.denied").pop().expect("denied");
    assert!(
        last["fields"]["rule_explanation"]
            .to_string()
            .contains("ref_protected"),
        "{last}"
    );
}

#[test]
fn rotated_keys_are_fetched_and_retired_keys_refused() {
    let (issuer, mut auth) = setup();
    gitlab_token(&issuer, &auth);
    let old_kid = issuer.current_kid();
    let o = gitlab_agent(
        &auth,
        &AgentDirs::new(),
        &issuer.mint(GITLAB, gitlab_claims()),
    );
    assert!(o.status.success(), "{}", text(&o));
    let jwks_fetches = || issuer.fixture.requests_to("/oauth/discovery/keys").len();
    assert_eq!(jwks_fetches(), 1);

    // A token under a new kid makes the auth service fetch the keys again;
    // it refetches an issuer at most every 10 s (a flood of made-up kids
    // must not turn into a flood of fetches), so wait that out first.
    issuer.rotate();
    std::thread::sleep(std::time::Duration::from_secs(11));
    let o = gitlab_agent(
        &auth,
        &AgentDirs::new(),
        &issuer.mint(GITLAB, gitlab_claims()),
    );
    assert!(
        o.status.success(),
        "new key refused:\n{}\n{}",
        text(&o),
        auth.log()
    );
    assert_eq!(jwks_fetches(), 2);

    // The old key is published no more: once the auth service loads the
    // keys afresh (a restart empties its cache), its tokens are refused.
    issuer.retire_old();
    auth.stop();
    auth.spawn();
    let dirs = AgentDirs::new();
    let o = gitlab_agent(
        &auth,
        &dirs,
        &issuer.mint_with(&old_kid, GITLAB, gitlab_claims()),
    );
    assert_denied(&auth, &dirs, &o, "unknown kid \"key-1\"");
    let o = gitlab_agent(
        &auth,
        &AgentDirs::new(),
        &issuer.mint(GITLAB, gitlab_claims()),
    );
    assert!(o.status.success(), "current key refused:\n{}", text(&o));
}

/// Join attributes reach roles and workload identities: a role login
/// template becomes an SSH principal, and a workload identity's SPIFFE ID is
/// rendered from the verified claims.
#[test]
fn join_attributes_feed_role_logins_and_workload_identity_templates() {
    let issuer = OidcIssuer::start();
    let auth = Auth::start_with(&["--outbound-ca-file", &issuer.ca_pem()]);
    auth.create(
        "ci-role.yaml",
        "kind: role\nversion: v1\nmetadata: {name: ci}\nspec:\n  allow:\n    logins: [ubuntu, \"ci-{{ join.gitlab.user_login }}\", \"{{ join.github.actor }}\"]\n    workload_identity_labels: {env: [ci]}\n",
    );
    auth.ok(&["bots", "add", "deployer", "--roles", "ci"]);
    auth.create(
        "wi.yaml",
        "kind: workload_identity\nversion: v1\nmetadata: {name: ci-id, labels: {env: ci}}\nspec:\n  spiffe:\n    id: \"/ci/{{ join.gitlab.namespace_path }}/{{ join.gitlab.user_login }}\"\n",
    );
    gitlab_token(&issuer, &auth);
    let dirs = AgentDirs::new();
    let svid_dir = dirs.dir.path().join("svid");
    let cfg = dirs.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: gitlab, token: ci-gitlab}}\nstorage: {{type: directory, path: {}}}\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n  - type: workload-identity-x509\n    selector: {{name: ci-id}}\n    destination: {{type: directory, path: {}}}\n",
            auth.addr(),
            auth.pin,
            dirs.storage.display(),
            dirs.out.display(),
            svid_dir.display()
        ),
    )
    .expect("agent config");
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .env("SIGIL_ID_TOKEN", issuer.mint(GITLAB, gitlab_claims()))
        .output()
        .expect("run agent");
    assert!(o.status.success(), "{}\n{}", text(&o), auth.log());

    // The template with a GitHub attribute is left out, never half-rendered.
    let cert = dirs.out.join("ssh.key-cert.pub");
    let l = run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]);
    let listing = stdout(&l);
    let principals: Vec<&str> = listing
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Principals:"))
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["ci-alice", "ubuntu"], "{listing}");

    let svid = svid_dir.join("svid.pem");
    let x = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            svid.to_str().unwrap(),
        ],
    );
    assert!(
        stdout(&x).contains("URI:spiffe://example.test/ci/acme/alice"),
        "{}",
        text(&x)
    );
}
