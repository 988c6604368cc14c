//! End to end: the admin CLI — resources, errors, remote access with an
//! identity file, and the tamper-evident audit log.

mod common;

use common::*;

#[test]
fn malformed_resources_name_file_line_and_field_and_change_nothing() {
    let auth = Auth::start();
    let bad = auth.dir.path().join("bad-role.yaml");
    std::fs::write(
        &bad,
        "kind: role\nversion: v1\nmetadata: {name: r1}\nspec:\n  allow:\n    loginz: [root]\n",
    )
    .expect("w");
    let o = auth.admin(&["create", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = text(&o);
    assert!(err.contains("bad-role.yaml:6"), "{err}");
    assert!(err.contains("loginz"), "{err}");
    assert!(!auth.ok(&["get", "roles", "-o", "json"]).contains("r1"));

    let unknown = auth.dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "kind: gizmo\nversion: v1\nmetadata: {name: g}\nspec: {}\n",
    )
    .expect("w");
    let o = auth.admin(&["create", "-f", unknown.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("gizmo"),
        "{}",
        text(&o)
    );

    auth.create(
        "r.yaml",
        "kind: role\nversion: v1\nmetadata: {name: r2}\nspec: {allow: {logins: [a]}}\n",
    );
    let dup = auth.dir.path().join("r.yaml");
    let o = auth.admin(&["create", "-f", dup.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("already exists"),
        "{}",
        text(&o)
    );

    auth.ok(&["bots", "add", "b", "--roles", "r2"]);
    let o = auth.admin(&["rm", "role/r2"]);
    assert!(!o.status.success(), "removed a role in use");
    assert!(text(&o).contains("still used by bot"), "{}", text(&o));
    let o = auth.admin(&["bots", "add", "b2", "--roles", "nope"]);
    assert!(
        !o.status.success() && text(&o).contains("nope"),
        "{}",
        text(&o)
    );
    auth.ok(&["bots", "rm", "b"]);
    auth.ok(&["rm", "role/r2"]);
}

#[test]
fn remote_admin_with_an_identity_file_obeys_role_rules() {
    let auth = Auth::start();
    auth.create(
        "admin-role.yaml",
        "kind: role\nversion: v1\nmetadata: {name: reader}\nspec:\n  allow:\n    logins: [ops]\n    rules: [{resources: [role, bot], verbs: [list, read]}]\n",
    );
    let out = auth.ok(&[
        "bots", "add", "auditor", "--roles", "reader", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ca_pin"].as_str(), Some(auth.pin.as_str()));
    assert_eq!(v["auth_server"].as_str(), Some(auth.addr().as_str()));
    assert!(
        v["expires"].as_str().is_some_and(|e| e.contains('T')),
        "{v}"
    );
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, v["token"].as_str()).status.success());
    let idf = agent.out.join("identity");
    let remote = |args: &[&str]| auth.remote(&idf, args);
    let o = remote(&["get", "roles", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("reader"));
    let o = remote(&["locks", "add", "--bot", "auditor"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a reader created a lock:\n{}",
        text(&o)
    );
    // No rule grants the audit log to this role.
    assert!(!remote(&["audit", "ls"]).status.success());

    // Access follows the bot's current roles, not those in its certificate.
    auth.create(
        "plain.yaml",
        "kind: role\nversion: v1\nmetadata: {name: plain}\nspec: {allow: {logins: [ops]}}\n",
    );
    auth.ok(&["bots", "update", "auditor", "--set-roles", "plain"]);
    let o = remote(&["get", "roles"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "revoked role still honoured:\n{}",
        text(&o)
    );
    auth.ok(&["bots", "rm", "auditor"]);
    let o = remote(&["get", "bots"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "removed bot still has access:\n{}",
        text(&o)
    );
}

#[test]
fn token_secrets_are_never_listed_or_stored_in_locks() {
    let auth = Auth::start();
    let token = auth.bot("quiet", &["q"]);
    for args in [
        vec!["tokens", "ls", "--format", "json"],
        vec!["get", "tokens", "-o", "yaml"],
    ] {
        let out = auth.ok(&args);
        assert!(!out.contains(&token), "{args:?} revealed the token:\n{out}");
        assert!(out.contains("sha256:"), "{out}");
    }
    // A lock on the token holds its hash, and still stops joins through it.
    let lock = auth.ok(&[
        "locks",
        "add",
        "--token",
        &token,
        "--message",
        "leaked",
        "--format",
        "json",
    ]);
    assert!(
        !lock.contains(&token),
        "the lock stored the secret:\n{lock}"
    );
    let o = AgentDirs::new().oneshot(&auth, Some(&token));
    assert!(
        !o.status.success() && text(&o).contains("join denied"),
        "{}",
        text(&o)
    );
    let all = stdout(&auth.admin(&["audit", "ls", "--format", "json"]));
    assert!(!all.contains(&token), "the audit log holds the secret");
    // The hash form removes the token.
    let listed: serde_json::Value =
        serde_json::from_str(&auth.ok(&["tokens", "ls", "--format", "json"])).expect("json");
    let r = listed[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    auth.ok(&["tokens", "rm", &r]);
    assert_eq!(auth.ok(&["tokens", "ls", "--format", "json"]).trim(), "[]");
}

#[test]
fn audit_verify_detects_an_event_altered_in_the_database() {
    let auth = Auth::start();
    let token = auth.bot("audited", &["a"]);
    let o = AgentDirs::new().oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    let v = auth.admin(&["audit", "verify"]);
    assert!(v.status.success(), "{}", text(&v));
    assert!(stdout(&v).contains("intact"), "{}", text(&v));

    // Rewrite history behind the service's back: who joined.
    let joins = auth.audit("bot.join");
    let seq = joins[0]["seq"].as_i64().expect("seq");
    let db = auth.data.join("sigil.db");
    let script = format!(
        "import sqlite3; c = sqlite3.connect({db:?}); c.execute(\"UPDATE audit SET fields = replace(fields, 'audited', 'someone-else') WHERE seq = {seq}\"); c.commit(); print(c.total_changes)"
    );
    let o = run("python3", &["-c", &script]);
    assert!(
        o.status.success() && stdout(&o).trim() == "1",
        "{}",
        text(&o)
    );

    let v = auth.admin(&["audit", "verify"]);
    assert_eq!(
        v.status.code(),
        Some(1),
        "tampering not detected:\n{}",
        text(&v)
    );
    assert!(
        text(&v).contains(&seq.to_string()),
        "must name the first bad event:\n{}",
        text(&v)
    );
}

#[test]
fn method_tokens_from_flags_and_tokens_test_explains_claims() {
    let auth = Auth::start();
    auth.bot("deployer", &["ubuntu"]);
    let out = auth.ok(&[
        "tokens",
        "add",
        "--bot",
        "deployer",
        "--join-method",
        "github",
        "--name",
        "ci-github",
        "--allow",
        "repository=acme/infra,ref=refs/heads/main",
        "--allow",
        "repository_owner=acme,environment=prod",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["token"], "ci-github");
    assert_eq!(v["join_method"], "github");
    assert!(v["expires"].is_null(), "{v}");
    assert_eq!(v["ca_pin"], auth.pin.as_str());

    // A method token's name is not a secret: listed as is, rules intact.
    let got: serde_json::Value =
        serde_json::from_str(&auth.ok(&["get", "token/ci-github", "-o", "json"])).expect("json");
    assert_eq!(got["metadata"]["name"], "ci-github");
    assert_eq!(got["spec"]["github"]["allow"][0]["ref"], "refs/heads/main");

    let ok = auth.dir.path().join("ok.json");
    std::fs::write(
        &ok,
        r#"{"repository": "acme/infra", "ref": "refs/heads/main", "sub": "repo:acme/infra:ref:refs/heads/main", "aud": "example.test"}"#,
    )
    .expect("w");
    let o = auth.admin(&[
        "tokens",
        "test",
        "ci-github",
        "--claims",
        ok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("accepted"), "{}", text(&o));
    assert!(stdout(&o).contains("allow[0]"), "{}", text(&o));

    let bad = auth.dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"repository": "acme/infra", "ref": "refs/heads/dev", "repository_owner": "acme"}"#,
    )
    .expect("w");
    let o = auth.admin(&[
        "tokens",
        "test",
        "ci-github",
        "--claims",
        bad.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(report["allowed"], false);
    let why = report["explanation"].to_string();
    assert!(why.contains("ref is \\\"refs/heads/dev\\\""), "{why}");
    assert!(why.contains("environment is missing"), "{why}");

    // Rules are validated where they are made.
    let o = auth.admin(&[
        "tokens",
        "add",
        "--bot",
        "deployer",
        "--join-method",
        "github",
        "--name",
        "loose",
        "--allow",
        "ref=refs/heads/main",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("identifying"), "{}", text(&o));
    let o = auth.admin(&[
        "tokens",
        "add",
        "--bot",
        "deployer",
        "--join-method",
        "github",
        "--name",
        "x",
        "--domain",
        "gitlab.example.com",
        "--allow",
        "repository=a/b",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--domain"), "{}", text(&o));

    // bound_keypair with no key: a registration secret is generated, shown
    // once, and redacted from then on.
    let out = auth.ok(&[
        "tokens",
        "add",
        "--bot",
        "deployer",
        "--join-method",
        "bound_keypair",
        "--name",
        "vm-1",
        "--recovery-limit",
        "2",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let secret = v["registration_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert_eq!(secret.len(), 32);
    let shown = auth.ok(&["get", "token/vm-1", "-o", "json"]);
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let o = auth.admin(&["tokens", "test", "vm-1", "--claims", ok.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// A raw admin client over the local socket, past any CLI check.
fn local_admin<T>(
    auth: &Auth,
    f: impl AsyncFnOnce(
        &mut sigil_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    ) -> T,
) -> T {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = sigil_cli::admin::connect::local_channel(&auth.data)
            .await
            .expect("admin socket");
        let mut client = sigil_proto::v1::admin_service_client::AdminServiceClient::new(channel);
        f(&mut client).await
    })
}

#[test]
fn lists_come_in_pages_and_huge_lifetimes_are_refused_not_panicking() {
    use sigil_proto::v1::{AddLockRequest, ListResourcesRequest};
    let auth = Auth::start();
    // Two files: a file holds at most 1,000 documents.
    for (part, range) in [(0, 0..550), (1, 550..1100)] {
        let docs: String = range
            .map(|i| {
                format!("kind: role\nversion: v1\nmetadata: {{name: r{i:04}}}\nspec: {{}}\n---\n")
            })
            .collect();
        auth.create(&format!("many{part}.yaml"), &docs);
    }
    // The CLI reads every page.
    let all: serde_json::Value =
        serde_json::from_str(&auth.ok(&["get", "roles", "-o", "json"])).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(1100));
    let (first, small, bad) = local_admin(&auth, async |c| {
        let list = |limit, page_token: &str| ListResourcesRequest {
            kind: "role".into(),
            filter: String::new(),
            limit,
            page_token: page_token.into(),
        };
        let first = c.list_resources(list(0, "")).await.unwrap().into_inner();
        let second = c
            .list_resources(list(0, &first.next_page_token))
            .await
            .unwrap()
            .into_inner();
        let third = c
            .list_resources(list(5000, &second.next_page_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(third.json.len(), 100);
        assert!(third.next_page_token.is_empty());
        let small = c.list_resources(list(10, "")).await.unwrap().into_inner();
        let bad = c
            .list_resources(list(0, "2f6c6f636b732f"))
            .await
            .unwrap_err();
        (first, small, bad)
    });
    assert_eq!(first.json.len(), 500);
    assert!(!first.next_page_token.is_empty());
    assert_eq!(small.json.len(), 10);
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // A lifetime that would overflow a date is refused; the service lives on.
    let err = local_admin(&auth, async |c| {
        c.add_lock(AddLockRequest {
            target_kind: "bot".into(),
            target_value: "x".into(),
            ttl_seconds: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("10 years"), "{err:?}");
    let o = auth.admin(&["locks", "add", "--bot", "x", "--ttl", "100000000d"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    auth.ok(&["status"]);
}

/// Runs `cmd args` with `input` on stdin.
fn piped(cmd: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn ca_export_prints_each_ca_as_its_consumers_read_it() {
    let auth = Auth::start();
    auth.create(
        "ca-reader.yaml",
        "kind: role\nversion: v1\nmetadata: {name: ca-reader}\nspec:\n  allow:\n    logins: [ops]\n    rules: [{resources: [status], verbs: [read]}]\n",
    );
    let out = auth.ok(&[
        "bots",
        "add",
        "ops",
        "--roles",
        "ca-reader",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, v["token"].as_str());
    assert!(o.status.success(), "{}", text(&o));

    // ssh-user: the key line ssh-keygen reads, and the CA that signed the
    // bot's user certificate (what sshd's TrustedUserCAKeys must hold).
    let user_ca = auth.ok(&["ca", "export", "--type", "ssh-user"]);
    assert_eq!(user_ca.lines().count(), 1, "{user_ca}");
    let fp = piped("ssh-keygen", &["-l", "-f", "-"], &user_ca);
    assert!(fp.status.success(), "{}", text(&fp));
    let fingerprint = stdout(&fp)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{}", stdout(&fp));
    let cert = agent.out.join("ssh.key-cert.pub");
    let listed = stdout(&run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]));
    assert!(
        listed.contains(&format!("Signing CA: ED25519 {fingerprint}")),
        "the bot's certificate is not signed by the exported ssh-user CA ({fingerprint}):\n{listed}"
    );

    // ssh-host: the same @cert-authority line the identity output writes.
    let host_ca = auth.ok(&[
        "ca",
        "export",
        "--type",
        "ssh-host",
        "--format",
        "known_hosts",
    ]);
    let known_hosts = std::fs::read_to_string(agent.out.join("known_hosts")).expect("known_hosts");
    assert_eq!(host_ca, known_hosts);
    assert_ne!(
        auth.ok(&["ca", "export", "--type", "ssh-host"]).trim(),
        user_ca.trim()
    );

    // X.509 CAs: PEM openssl reads; the client CA verifies the bot's TLS certificate.
    let dir = auth.dir.path();
    for ty in ["host", "client", "db-client", "spiffe", "kubernetes"] {
        let pem = auth.ok(&["ca", "export", "--type", ty]);
        let o = piped("openssl", &["x509", "-noout", "-subject"], &pem);
        assert!(o.status.success(), "{ty}: {}", text(&o));
        std::fs::write(dir.join(format!("{ty}-ca.pem")), &pem).expect("write pem");
    }
    let client_ca = dir.join("client-ca.pem");
    let tls = agent.out.join("tls.crt");
    let o = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            client_ca.to_str().unwrap(),
            tls.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let host_ca_pem = dir.join("host-ca.pem");
    let o = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            host_ca_pem.to_str().unwrap(),
            tls.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success(),
        "the host CA must not verify a client certificate"
    );

    // jwt: the JWKS relying parties read.
    let jwks: serde_json::Value =
        serde_json::from_str(&auth.ok(&["ca", "export", "--type", "jwt"])).expect("jwks json");
    assert!(
        jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{jwks}"
    );

    // Remotely with an identity file, under RBAC `read` on `status`.
    let idf = agent.out.join("identity");
    let o = auth.remote(&idf, &["ca", "export", "--type", "ssh-user"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), user_ca);
    auth.create(
        "no-status.yaml",
        "kind: role\nversion: v1\nmetadata: {name: no-status}\nspec: {allow: {logins: [ops]}}\n",
    );
    auth.ok(&["bots", "update", "ops", "--set-roles", "no-status"]);
    let o = auth.remote(&idf, &["ca", "export", "--type", "ssh-user"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // Bad input: an unknown type lists the valid ones (exit 2); known_hosts is
    // for the host CA only.
    let o = auth.admin(&["ca", "export", "--type", "ssh"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for ty in [
        "host",
        "client",
        "ssh-user",
        "ssh-host",
        "db-client",
        "spiffe",
        "jwt",
        "kubernetes",
    ] {
        assert!(text(&o).contains(ty), "{}", text(&o));
    }
    let o = auth.admin(&[
        "ca",
        "export",
        "--type",
        "ssh-user",
        "--format",
        "known_hosts",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
