//! Argument parsing tests: every command of the fixed interface parses into the
//! expected structure, and malformed command lines are rejected.

use crate::cli::*;
use clap::{CommandFactory, Parser};
use std::path::PathBuf;

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["sigil"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v) {
        Ok(c) => c,
        Err(e) => panic!("{args:?} failed to parse: {e}"),
    }
}

fn fails(args: &[&str]) -> clap::Error {
    let mut v = vec!["sigil"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v) {
        Ok(c) => panic!("{args:?} should not parse: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn help_documents_exit_codes() {
    let help = Cli::command().render_long_help().to_string();
    for want in [
        "Exit codes",
        "2  bad input",
        "3  permission denied",
        "4  auth service unavailable",
    ] {
        assert!(help.contains(want), "{want} missing from --help");
    }
}

#[test]
fn auth_start() {
    let c = parse(&[
        "auth",
        "start",
        "--data-dir",
        "/d",
        "--listen",
        "127.0.0.1:3025",
        "--public-listen",
        "127.0.0.1:3080",
        "--cluster-name",
        "example.test",
        "--server-name",
        "a.example.test",
        "--server-name",
        "10.0.0.1",
    ]);
    assert!(c.is_server());
    assert_eq!(c.global.data_dir, Some(PathBuf::from("/d")));
    let Command::Auth(AuthCommand::Start(a)) = c.command else {
        panic!("{:?}", c.command)
    };
    assert_eq!(a.listen.port(), 3025);
    assert_eq!(a.public_listen.port(), 3080);
    assert_eq!(a.cluster_name.as_deref(), Some("example.test"));
    assert_eq!(a.server_names, ["a.example.test", "10.0.0.1"]);
    assert_eq!(a.public_url, None);
    assert!(
        !a.web_client_certificates,
        "the public listener asks for no client certificate by default"
    );
    let c = parse(&[
        "auth",
        "start",
        "--listen",
        "127.0.0.1:3025",
        "--public-listen",
        "127.0.0.1:3080",
        "--public-url",
        "https://auth.example.test:8443",
    ]);
    let Command::Auth(AuthCommand::Start(a)) = c.command else {
        panic!("{:?}", c.command)
    };
    assert_eq!(
        a.public_url.as_deref(),
        Some("https://auth.example.test:8443")
    );
    fails(&[
        "auth",
        "start",
        "--data-dir",
        "/d",
        "--listen",
        "not-an-addr",
        "--public-listen",
        "127.0.0.1:1",
    ]);
    fails(&[
        "auth",
        "start",
        "--data-dir",
        "/d",
        "--public-listen",
        "127.0.0.1:1",
    ]);
}

#[test]
fn agent_start_config_and_flags() {
    let c = parse(&["agent", "start", "--config", "agent.yaml"]);
    let Command::Agent(AgentCommand::Start(a)) = c.command else {
        panic!()
    };
    assert_eq!(a.config, Some(PathBuf::from("agent.yaml")));
    assert!(!a.oneshot);

    let c = parse(&[
        "agent",
        "start",
        "--auth-server",
        "127.0.0.1:3025",
        "--ca-pin",
        "sha256:ab",
        "--token",
        "tok",
        "--storage",
        "/s",
        "--output",
        "identity:/o",
        "--oneshot",
        "--credential-ttl",
        "1h",
        "--renewal-interval",
        "20m",
        "--diag-addr",
        "127.0.0.1:9000",
    ]);
    assert_eq!(c.global.auth_server.as_deref(), Some("127.0.0.1:3025"));
    let Command::Agent(AgentCommand::Start(a)) = c.command else {
        panic!()
    };
    assert_eq!(a.ca_pins, ["sha256:ab"]);
    assert_eq!(a.token.as_deref(), Some("tok"));
    assert_eq!(a.storage, Some(PathBuf::from("/s")));
    assert_eq!(a.outputs, ["identity:/o"]);
    assert!(a.oneshot);
    assert_eq!(a.credential_ttl.as_deref(), Some("1h"));
    assert_eq!(a.renewal_interval.as_deref(), Some("20m"));
    assert_eq!(a.diag_addr.as_deref(), Some("127.0.0.1:9000"));

    // --oneshot works with a config file; the flags do not.
    parse(&["agent", "start", "--config", "a.yaml", "--oneshot"]);
    fails(&["agent", "start", "--config", "a.yaml", "--storage", "/s"]);
}

#[test]
fn global_admin_options_anywhere() {
    for args in [
        &["--data-dir", "/d", "bots", "ls"][..],
        &["bots", "ls", "--data-dir", "/d"][..],
        &["bots", "--data-dir", "/d", "ls"][..],
    ] {
        assert_eq!(
            parse(args).global.data_dir,
            Some(PathBuf::from("/d")),
            "{args:?}"
        );
    }
    let c = parse(&[
        "status",
        "--auth-server",
        "auth:3025",
        "--identity",
        "/id/identity",
    ]);
    assert!(!c.is_server());
    assert_eq!(c.global.auth_server.as_deref(), Some("auth:3025"));
    assert_eq!(c.global.identity, Some(PathBuf::from("/id/identity")));
}

#[test]
fn create() {
    let c = parse(&["create", "-f", "role.yaml"]);
    let Command::Create(a) = c.command else {
        panic!()
    };
    assert_eq!(a.file, PathBuf::from("role.yaml"));
    assert!(!a.force);
    let Command::Create(a) = parse(&["create", "-f", "-", "--force"]).command else {
        panic!()
    };
    assert_eq!(a.file, PathBuf::from("-"));
    assert!(a.force);
    fails(&["create"]);
}

#[test]
fn get_and_rm() {
    let Command::Get(a) = parse(&["get", "roles"]).command else {
        panic!()
    };
    assert_eq!((a.target.as_str(), a.name, a.output), ("roles", None, None));
    let Command::Get(a) = parse(&["get", "role/dev", "-o", "yaml"]).command else {
        panic!()
    };
    assert_eq!(
        (a.target.as_str(), a.output),
        ("role/dev", Some(GetFormat::Yaml))
    );
    for (fmt, want) in [
        ("json", GetFormat::Json),
        ("text", GetFormat::Text),
        ("yaml", GetFormat::Yaml),
    ] {
        let Command::Get(a) = parse(&["get", "bot_instances", "-o", fmt]).command else {
            panic!()
        };
        assert_eq!(a.output, Some(want));
    }
    let Command::Get(a) = parse(&["get", "bot", "ci", "--format", "json"]).command else {
        panic!()
    };
    assert_eq!(
        (a.target.as_str(), a.name.as_deref(), a.output),
        ("bot", Some("ci"), Some(GetFormat::Json))
    );
    fails(&["get", "roles", "-o", "xml"]);
    let Command::Rm(a) = parse(&["rm", "role/dev"]).command else {
        panic!()
    };
    assert_eq!(a.target, "role/dev");
    fails(&["rm"]);
}

#[test]
fn bots() {
    let Command::Bots(BotsCommand::Add(a)) = parse(&[
        "bots",
        "add",
        "ci",
        "--roles",
        "r1,r2",
        "--token-ttl",
        "15m",
        "--format",
        "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.name, "ci");
    assert_eq!(a.roles, ["r1", "r2"]);
    assert_eq!(a.token_ttl.as_deref(), Some("15m"));
    assert_eq!(a.format.format, Format::Json);
    let Command::Bots(BotsCommand::Add(a)) = parse(&["bots", "add", "ci", "--roles", "r1"]).command
    else {
        panic!()
    };
    assert_eq!(a.format.format, Format::Text);
    fails(&["bots", "add", "ci"]);
    fails(&["bots", "add", "ci", "--roles", "r", "--format", "yaml"]);

    let Command::Bots(BotsCommand::Ls(f)) = parse(&["bots", "ls", "--format", "json"]).command
    else {
        panic!()
    };
    assert_eq!(f.format, Format::Json);
    let Command::Bots(BotsCommand::Rm(n)) = parse(&["bots", "rm", "ci"]).command else {
        panic!()
    };
    assert_eq!(n.name, "ci");
    let Command::Bots(BotsCommand::Update(u)) =
        parse(&["bots", "update", "ci", "--set-roles", "a,b"]).command
    else {
        panic!()
    };
    assert_eq!(
        (u.name.as_str(), u.set_roles.clone()),
        ("ci", vec!["a".to_string(), "b".to_string()])
    );
    fails(&["bots", "update", "ci"]);

    let Command::Bots(BotsCommand::Instances(InstancesCommand::Ls(i))) =
        parse(&["bots", "instances", "ls", "ci", "--format", "json"]).command
    else {
        panic!()
    };
    assert_eq!(
        (i.bot.as_deref(), i.format.format),
        (Some("ci"), Format::Json)
    );
    let Command::Bots(BotsCommand::Instances(InstancesCommand::Ls(i))) =
        parse(&["bots", "instances", "ls"]).command
    else {
        panic!()
    };
    assert_eq!(i.bot, None);
}

#[test]
fn tokens() {
    let Command::Tokens(TokensCommand::Add(a)) = parse(&[
        "tokens",
        "add",
        "--bot",
        "ci",
        "--ttl",
        "15m",
        "--join-method",
        "token",
        "--format",
        "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(
        (a.bot.as_str(), a.ttl.as_deref(), a.join_method.as_str()),
        ("ci", Some("15m"), "token")
    );
    let Command::Tokens(TokensCommand::Add(a)) = parse(&["tokens", "add", "--bot", "ci"]).command
    else {
        panic!()
    };
    assert_eq!(a.join_method, "token");
    fails(&["tokens", "add"]);
    let Command::Tokens(TokensCommand::Ls(f)) =
        parse(&["tokens", "ls", "--format", "text"]).command
    else {
        panic!()
    };
    assert_eq!(f.format, Format::Text);
    let Command::Tokens(TokensCommand::Rm(n)) = parse(&["tokens", "rm", "abc"]).command else {
        panic!()
    };
    assert_eq!(n.name, "abc");
}

#[test]
fn locks() {
    for (flag, kind) in [
        ("--bot", "bot"),
        ("--bot-instance", "bot_instance"),
        ("--role", "role"),
        ("--token", "token"),
        ("--login", "login"),
        ("--spiffe-id", "spiffe_id"),
        ("--db-user", "db_user"),
    ] {
        let Command::Locks(LocksCommand::Add(a)) = parse(&["locks", "add", flag, "x"]).command
        else {
            panic!()
        };
        assert_eq!(a.target.target(), Some((kind, "x")), "{flag}");
    }
    let Command::Locks(LocksCommand::Add(a)) = parse(&[
        "locks",
        "add",
        "--bot",
        "ci",
        "--ttl",
        "1h",
        "--message",
        "incident 42",
        "--format",
        "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(
        (a.ttl.as_deref(), a.message.as_deref()),
        (Some("1h"), Some("incident 42"))
    );
    assert_eq!(a.format.format, Format::Json);
    fails(&["locks", "add"]);
    fails(&["locks", "add", "--bot", "a", "--role", "b"]);
    let Command::Locks(LocksCommand::Ls(_)) = parse(&["locks", "ls"]).command else {
        panic!()
    };
    let Command::Locks(LocksCommand::Rm(n)) = parse(&["locks", "rm", "lock-id"]).command else {
        panic!()
    };
    assert_eq!(n.name, "lock-id");
}

#[test]
fn audit() {
    let Command::Audit(AuditCommand::Ls(a)) = parse(&[
        "audit", "ls", "--since", "1h", "--type", "bot.join", "--limit", "10", "--format", "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.since.as_deref(), Some("1h"));
    assert_eq!(a.event_type.as_deref(), Some("bot.join"));
    assert_eq!(a.limit, Some(10));
    assert_eq!(a.format.format, Format::Json);
    fails(&["audit", "ls", "--limit", "many"]);
    let Command::Audit(AuditCommand::Verify(f)) = parse(&["audit", "verify"]).command else {
        panic!()
    };
    assert_eq!(f.format.format, Format::Text);
    assert_eq!(f.head, None);
    let Command::Audit(AuditCommand::Verify(f)) =
        parse(&["audit", "verify", "--head", "3:ab"]).command
    else {
        panic!()
    };
    assert_eq!(f.head.as_deref(), Some("3:ab"));
    fails(&["audit", "verify", "--head", "3:ab", "--checkpoint", "f"]);
    let Command::Audit(AuditCommand::Checkpoint(c)) =
        parse(&["audit", "checkpoint", "--out", "cp.json"]).command
    else {
        panic!()
    };
    assert_eq!(c.out.as_deref(), Some(std::path::Path::new("cp.json")));
}

#[test]
fn status() {
    let Command::Status(s) = parse(&["status"]).command else {
        panic!()
    };
    assert_eq!(s.format.format, Format::Text);
    let Command::Status(s) = parse(&["status", "--format", "json"]).command else {
        panic!()
    };
    assert_eq!(s.format.format, Format::Json);
}

#[test]
fn workload_identity_issue() {
    let Command::WorkloadIdentity(WorkloadIdentityCommand::Issue(a)) = parse(&[
        "workload-identity",
        "issue",
        "payments",
        "--out",
        "/tmp/svid",
        "--attr",
        "workload.unix.uid=1000",
        "--attr",
        "workload.unix.gid=1000",
        "--ttl",
        "1h",
        "--jwt-audience",
        "aud1",
        "--jwt-audience",
        "aud2",
        "--format",
        "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.name, "payments");
    assert_eq!(a.out, PathBuf::from("/tmp/svid"));
    assert_eq!(
        a.attrs,
        ["workload.unix.uid=1000", "workload.unix.gid=1000"]
    );
    assert_eq!(a.ttl.as_deref(), Some("1h"));
    assert_eq!(a.jwt_audiences, ["aud1", "aud2"]);
    assert_eq!(a.format.format, Format::Json);

    let Command::WorkloadIdentity(WorkloadIdentityCommand::Issue(a)) =
        parse(&["workload-identity", "issue", "p", "--out", "d"]).command
    else {
        panic!()
    };
    assert!(a.attrs.is_empty() && a.jwt_audiences.is_empty() && a.ttl.is_none());
    assert_eq!(a.format.format, Format::Text);
    fails(&["workload-identity", "issue", "p"]);
    fails(&["workload-identity", "issue", "--out", "d"]);
    fails(&[
        "workload-identity",
        "issue",
        "p",
        "--out",
        "d",
        "--format",
        "yaml",
    ]);
}

#[test]
fn workload_identity_test() {
    let Command::WorkloadIdentity(WorkloadIdentityCommand::Test(a)) = parse(&[
        "workload-identity",
        "test",
        "payments",
        "--attr",
        "workload.unix.uid=1000",
        "--attr",
        "bot.name=ci",
        "-o",
        "json",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.name, "payments");
    assert_eq!(a.attrs, ["workload.unix.uid=1000", "bot.name=ci"]);
    assert_eq!(a.format.format, Format::Json);
    let e = fails(&["workload-identity", "test", "payments"]);
    assert_eq!(e.exit_code(), 2);
    fails(&["workload-identity", "test", "--attr", "a.b=c"]);
}

#[test]
fn workload_identity_revocations() {
    let Command::WorkloadIdentity(WorkloadIdentityCommand::Revocations(RevocationsCommand::Add(a))) =
        parse(&[
            "workload-identity",
            "revocations",
            "add",
            "--serial",
            "01:A2:FF",
            "--reason",
            "key leaked",
            "--format",
            "json",
        ])
        .command
    else {
        panic!()
    };
    assert_eq!(
        (a.serial.as_str(), a.reason.as_str(), a.format.format),
        ("01:A2:FF", "key leaked", Format::Json)
    );
    fails(&["workload-identity", "revocations", "add", "--serial", "1f"]);
    fails(&["workload-identity", "revocations", "add", "--reason", "x"]);

    for ls in ["ls", "list"] {
        let Command::WorkloadIdentity(WorkloadIdentityCommand::Revocations(
            RevocationsCommand::Ls(f),
        )) = parse(&["workload-identity", "revocations", ls, "--format", "json"]).command
        else {
            panic!()
        };
        assert_eq!(f.format, Format::Json);
    }
    for rm in ["rm", "remove"] {
        let Command::WorkloadIdentity(WorkloadIdentityCommand::Revocations(
            RevocationsCommand::Rm(s),
        )) = parse(&["workload-identity", "revocations", rm, "0x1F"]).command
        else {
            panic!()
        };
        assert_eq!(s.serial, "0x1F");
    }
    fails(&["workload-identity", "revocations", "rm"]);
}

#[test]
fn get_workload_identity_kinds() {
    for target in [
        "workload_identities",
        "workload_identity/payments",
        "workload_identity_x509_revocations",
        "revocations",
    ] {
        let Command::Get(a) = parse(&["get", target]).command else {
            panic!()
        };
        assert_eq!(a.target, target);
    }
}

#[test]
fn help_documents_workload_identity_test_exit_codes() {
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("workload-identity test"), "{help}");
    let mut cmd = Cli::command();
    let test = cmd
        .find_subcommand_mut("workload-identity")
        .unwrap()
        .find_subcommand_mut("test")
        .unwrap();
    let help = test.render_long_help().to_string();
    assert!(help.contains("0 allowed; 3 denied"), "{help}");
}

#[test]
fn unknown_commands_are_usage_errors() {
    let e = fails(&["frobnicate"]);
    assert_eq!(e.exit_code(), 2);
    let e = fails(&["bots", "add", "ci"]);
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn db_ls_and_database_kinds() {
    let Command::Db(crate::admin::db::DbCommand::Ls(a)) =
        parse(&["db", "ls", "--format", "json"]).command
    else {
        panic!("db ls")
    };
    assert_eq!(a.format.format, Format::Json);
    for k in ["databases", "database", "Databases"] {
        assert_eq!(
            crate::admin::resources::ResourceKind::parse(k).unwrap(),
            crate::admin::resources::ResourceKind::Database
        );
    }
}
