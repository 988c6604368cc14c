//! Issue 10, classes 1 and 3: no privilege escalation through the admin API,
//! and one RBAC vocabulary. Each attack is tried through the remote CLI (an
//! identity output's file) and as a raw gRPC call that bypasses the CLI, and
//! each refusal is checked to have changed nothing and to be audited.

mod common;

use common::*;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use sigil_proto::v1::{AddBotRequest, AddTokenRequest, CreateResourceRequest, UpdateBotRequest};

const SUPERADMIN: &str = "kind: role\nversion: v1\nmetadata: {name: superadmin}\nspec:\n  allow:\n    rules: [{resources: ['*'], verbs: ['*']}]\n";

/// A bot holding `roles` (rules only: no logins), joined, with its identity
/// output; returns the identity file's path and keeps the agent dirs alive.
fn admin_bot(auth: &Auth, name: &str, roles: &str) -> (AgentDirs, String) {
    let out = auth.ok(&["bots", "add", name, "--roles", roles, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let agent = AgentDirs::new();
    let o = agent.oneshot(auth, v["token"].as_str());
    // Class 3: a role with only admin rules yields a working identity output.
    assert!(o.status.success(), "identity output failed:\n{}", text(&o));
    assert!(agent.out.join("identity").exists());
    assert!(
        !agent.out.join("ssh.key-cert.pub").exists(),
        "no logins, so no SSH certificate"
    );
    let idf = agent.out.join("identity").display().to_string();
    (agent, idf)
}

fn remote(auth: &Auth, idf: &str, args: &[&str]) -> std::process::Output {
    auth.remote(std::path::Path::new(idf), args)
}

fn write(auth: &Auth, name: &str, text: &str) -> String {
    let p = auth.dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// A raw gRPC admin client with the identity file's certificate.
fn raw<T>(
    auth: &Auth,
    idf: &str,
    f: impl AsyncFnOnce(&mut AdminServiceClient<tonic::transport::Channel>) -> T,
) -> T {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use clap::Parser;
        let cli = sigil_cli::cli::Cli::parse_from([
            "sigil",
            "--auth-server",
            &auth.addr(),
            "--identity",
            idf,
            "status",
        ]);
        let mut client = sigil_cli::admin::connect::connect(&cli.global)
            .await
            .expect("connect");
        f(&mut client).await
    })
}

fn bot_roles(auth: &Auth, bot: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&auth.ok(&["get", &format!("bot/{bot}"), "-o", "json"])).unwrap();
    serde_json::from_value(v["spec"]["roles"].clone()).unwrap()
}

fn denied_events(auth: &Auth) -> usize {
    auth.audit("admin.denied").len()
}

#[test]
fn a_bot_editor_cannot_make_itself_or_anyone_superadmin() {
    let auth = Auth::start();
    auth.create("superadmin.yaml", SUPERADMIN);
    auth.create(
        "editor.yaml",
        "kind: role\nversion: v1\nmetadata: {name: bot-editor}\nspec:\n  allow:\n    rules:\n      - {resources: [bot], verbs: [create, update, read, list]}\n      - {resources: [token], verbs: [create]}\n",
    );
    let (_a, idf) = admin_bot(&auth, "editor", "bot-editor");
    let before = denied_events(&auth);

    // CLI: update itself, add a new superadmin bot, upsert itself from a file.
    let o = remote(
        &auth,
        &idf,
        &[
            "bots",
            "update",
            "editor",
            "--set-roles",
            "bot-editor,superadmin",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stderr_of(&o).contains("does not hold"), "{}", text(&o));
    let o = remote(
        &auth,
        &idf,
        &["bots", "add", "evil", "--roles", "superadmin"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let f = write(
        &auth,
        "self.yaml",
        "kind: bot\nversion: v1\nmetadata: {name: editor}\nspec: {roles: [bot-editor, superadmin]}\n",
    );
    let o = remote(&auth, &idf, &["create", "-f", &f, "--force"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // Raw gRPC, past any CLI check.
    let codes = raw(&auth, &idf, async |c| {
        let a = c
            .update_bot(UpdateBotRequest {
                name: "editor".into(),
                set_roles: vec!["superadmin".into()],
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code();
        let b = c
            .add_bot(AddBotRequest {
                name: "evil2".into(),
                roles: vec!["superadmin".into()],
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code();
        let json = r#"{"kind":"bot","version":"v1","metadata":{"name":"evil3"},"spec":{"roles":["superadmin"]}}"#;
        let d = c
            .create_resource(CreateResourceRequest {
                json: json.into(),
                upsert: false,
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code();
        [a, b, d]
    });
    assert_eq!(codes, [tonic::Code::PermissionDenied; 3]);

    // Nothing changed, and every refusal is in the audit log.
    assert_eq!(bot_roles(&auth, "editor"), ["bot-editor"]);
    for b in ["evil", "evil2", "evil3"] {
        assert!(!auth.admin(&["get", &format!("bot/{b}")]).status.success());
    }
    // (Identical refusals in a burst are counted into one row, written when
    // the burst ends; the first of each is written at once.)
    let reasons: Vec<String> = auth
        .audit("admin.denied")
        .iter()
        .skip(before)
        .map(|e| {
            e["fields"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for b in ["\"editor\"", "\"evil\"", "\"evil2\"", "\"evil3\""] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(b) && r.contains("does not hold")),
            "{b}: {reasons:?}"
        );
    }

    // What it holds, it may grant.
    let o = remote(
        &auth,
        &idf,
        &["bots", "add", "helper", "--roles", "bot-editor"],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_token_minter_cannot_mint_for_a_more_privileged_bot() {
    let auth = Auth::start();
    auth.create("superadmin.yaml", SUPERADMIN);
    auth.create(
        "minter.yaml",
        "kind: role\nversion: v1\nmetadata: {name: minter}\nspec:\n  allow:\n    rules: [{resources: [token], verbs: [create]}]\n",
    );
    auth.ok(&["bots", "add", "root-bot", "--roles", "superadmin"]);
    auth.ok(&["bots", "add", "peer", "--roles", "minter"]);
    let (_a, idf) = admin_bot(&auth, "minter", "minter");
    let tokens_before = auth.ok(&["tokens", "ls", "--format", "json"]);

    let o = remote(&auth, &idf, &["tokens", "add", "--bot", "root-bot"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let f = write(
        &auth,
        "tok.yaml",
        "kind: token\nversion: v1\nmetadata: {name: 0123456789abcdef0123456789abcdef}\nspec: {bot_name: root-bot, join_method: token}\n",
    );
    let o = remote(&auth, &idf, &["create", "-f", &f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let code = raw(&auth, &idf, async |c| {
        c.add_token(AddTokenRequest {
            bot: "root-bot".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err()
        .code()
    });
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert_eq!(
        auth.ok(&["tokens", "ls", "--format", "json"]),
        tokens_before
    );

    // A bot whose roles the minter holds is fine.
    let o = remote(&auth, &idf, &["tokens", "add", "--bot", "peer"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_role_editor_cannot_widen_roles_or_lift_denies() {
    let auth = Auth::start();
    auth.create(
        "roles.yaml",
        "kind: role\nversion: v1\nmetadata: {name: role-editor}\nspec:\n  allow:\n    rules: [{resources: [role], verbs: [create, update, read, list]}]\n---\nkind: role\nversion: v1\nmetadata: {name: no-role-delete}\nspec:\n  deny:\n    rules: [{resources: [role], verbs: [delete]}]\n",
    );
    let (_a, idf) = admin_bot(&auth, "editor", "role-editor,no-role-delete");
    let role_json = |name: &str| auth.ok(&["get", &format!("role/{name}"), "-o", "json"]);
    let (editor_before, deny_before) = (role_json("role-editor"), role_json("no-role-delete"));

    let attacks = [
        // Its own role to `*`.
        "kind: role\nversion: v1\nmetadata: {name: role-editor}\nspec:\n  allow:\n    rules: [{resources: ['*'], verbs: ['*']}]\n",
        // Lifting the deny that binds it.
        "kind: role\nversion: v1\nmetadata: {name: no-role-delete}\nspec: {}\n",
        // Its own credential lifetime cap raised past its own.
        "kind: role\nversion: v1\nmetadata: {name: role-editor}\nspec:\n  allow:\n    rules: [{resources: [role], verbs: [create, update, read, list]}]\n  options: {max_ttl: 1000h}\n",
        // A new role with logins and labels it does not hold.
        "kind: role\nversion: v1\nmetadata: {name: sneaky}\nspec:\n  allow:\n    logins: [root]\n    node_labels: {'*': '*'}\n",
        // Database access and database servers it does not hold.
        "kind: role\nversion: v1\nmetadata: {name: sneaky}\nspec:\n  allow:\n    db_labels: {'*': '*'}\n    db_users: ['*']\n    db_names: ['*']\n",
        "kind: role\nversion: v1\nmetadata: {name: sneaky}\nspec:\n  allow:\n    db_server_labels: {env: prod}\n",
        // App access, and serving apps as a proxy (it sees callers, signs their JWTs).
        "kind: role\nversion: v1\nmetadata: {name: sneaky}\nspec:\n  allow:\n    app_labels: {'*': '*'}\n",
        "kind: role\nversion: v1\nmetadata: {name: sneaky}\nspec:\n  allow:\n    app_server_labels: {env: prod}\n",
    ];
    for (i, doc) in attacks.iter().enumerate() {
        let f = write(&auth, &format!("attack{i}.yaml"), doc);
        let o = remote(&auth, &idf, &["create", "-f", &f, "--force"]);
        assert_eq!(o.status.code(), Some(3), "attack {i}:\n{}", text(&o));
        let json =
            serde_json::to_string(&serde_norway::from_str::<serde_json::Value>(doc).unwrap())
                .unwrap();
        let code = raw(&auth, &idf, async |c| {
            c.create_resource(CreateResourceRequest { json, upsert: true })
                .await
                .map(|_| ())
                .unwrap_err()
                .code()
        });
        assert_eq!(code, tonic::Code::PermissionDenied, "attack {i}");
    }
    assert_eq!(role_json("role-editor"), editor_before);
    assert_eq!(role_json("no-role-delete"), deny_before);
    assert!(!auth.admin(&["get", "role/sneaky"]).status.success());

    // A role within what it holds is fine (and carries no denies to keep).
    let f = write(
        &auth,
        "ok.yaml",
        "kind: role\nversion: v1\nmetadata: {name: reader}\nspec:\n  allow:\n    rules: [{resources: [role], verbs: [read]}]\n",
    );
    let o = remote(&auth, &idf, &["create", "-f", &f]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_escalate_verb_lets_a_delegated_admin_grant_more() {
    let auth = Auth::start();
    auth.create("superadmin.yaml", SUPERADMIN);
    auth.create(
        "delegator.yaml",
        "kind: role\nversion: v1\nmetadata: {name: delegator}\nspec:\n  allow:\n    rules: [{resources: [bot, token], verbs: [create, read, escalate]}]\n",
    );
    let (_a, idf) = admin_bot(&auth, "delegator", "delegator");
    let o = remote(
        &auth,
        &idf,
        &["bots", "add", "ops-admin", "--roles", "superadmin"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(bot_roles(&auth, "ops-admin"), ["superadmin"]);
}

#[test]
fn every_resource_the_api_checks_can_be_granted() {
    let auth = Auth::start();
    // Least-privilege roles for the audit log and status: accepted by
    // validation and honoured by the API.
    auth.create(
        "auditor.yaml",
        "kind: role\nversion: v1\nmetadata: {name: auditor}\nspec:\n  allow:\n    rules: [{resources: [audit, status], verbs: [list, read]}]\n",
    );
    let (_a, idf) = admin_bot(&auth, "auditor", "auditor");
    for args in [&["audit", "ls"][..], &["audit", "verify"], &["status"]] {
        let o = remote(&auth, &idf, args);
        assert!(o.status.success(), "{args:?}:\n{}", text(&o));
    }
    let o = remote(&auth, &idf, &["get", "roles"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // A name outside the vocabulary is refused, naming the field and the list.
    let f = write(
        &auth,
        "bad.yaml",
        "kind: role\nversion: v1\nmetadata: {name: bad}\nspec:\n  allow:\n    rules: [{resources: [audit_event], verbs: [read]}]\n",
    );
    let o = auth.admin(&["create", "-f", &f]);
    assert!(!o.status.success());
    assert!(
        stderr_of(&o).contains("spec.allow.rules[0].resources") && stderr_of(&o).contains("status"),
        "{}",
        text(&o)
    );
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_database_writer_cannot_name_an_address_it_may_not_have_certified() {
    let auth = Auth::start();
    auth.create(
        "db-editor.yaml",
        "kind: role\nversion: v1\nmetadata: {name: db-editor}\nspec:\n  allow:\n    rules: [{resources: [database], verbs: [create, update, read, list]}]\n    ssh_host_principals: [db.example.test]\n",
    );
    let (_a, idf) = admin_bot(&auth, "dbed", "db-editor");
    // The auth service's own address: a database server there would get a
    // host-CA certificate for it.
    let f = write(
        &auth,
        "evil.yaml",
        "kind: database\nversion: v1\nmetadata: {name: evil, labels: {env: prod}}\nspec: {protocol: postgres, uri: \"127.0.0.1:5432\"}\n",
    );
    let o = remote(&auth, &idf, &["create", "-f", &f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("ssh_host_principals \"127.0.0.1\""),
        "{}",
        text(&o)
    );
    assert!(!auth.admin(&["get", "database/evil"]).status.success());
    // An address it may have certified is fine.
    let f = write(
        &auth,
        "ok.yaml",
        "kind: database\nversion: v1\nmetadata: {name: orders, labels: {env: prod}}\nspec: {protocol: postgres, uri: \"db.example.test:5432\"}\n",
    );
    let o = remote(&auth, &idf, &["create", "-f", &f]);
    assert!(o.status.success(), "{}", text(&o));
}
