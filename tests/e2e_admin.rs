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
    let remote = |args: &[&str]| {
        std::process::Command::new(sigil_bin())
            .args([
                "--auth-server",
                &auth.addr(),
                "--identity",
                idf.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .expect("run")
    };
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
    assert!(
        AgentDirs::new()
            .oneshot(&auth, Some(&token))
            .status
            .success()
    );
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
