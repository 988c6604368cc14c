//! End to end: a bot joins with a single-use token and receives credentials
//! that openssl and ssh-keygen accept.

mod common;

use common::*;
use std::process::Stdio;

#[test]
fn join_writes_credentials_real_tools_accept() {
    let auth = Auth::start();
    let token = auth.bot("deployer", &["root", "deploy"]);
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "agent failed:\n{}", text(&o));

    for f in [
        "tls.crt",
        "tls.key",
        "ca.crt",
        "ssh.key",
        "ssh.key-cert.pub",
        "known_hosts",
        "identity",
    ] {
        assert!(agent.out.join(f).exists(), "{f} missing");
    }
    for secret in ["tls.key", "ssh.key", "identity"] {
        assert_eq!(
            mode(&agent.out.join(secret)),
            0o600,
            "{secret} must be 0600"
        );
    }
    assert_eq!(mode(&agent.storage.join("credential.json")), 0o600);
    let key = std::fs::read_to_string(agent.out.join("tls.key")).expect("key");
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM expected"
    );

    // openssl accepts the client certificate against ca.crt, for client auth.
    let ca = agent.out.join("ca.crt");
    let crt = agent.out.join("tls.crt");
    let v = run(
        "openssl",
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            ca.to_str().unwrap(),
            crt.to_str().unwrap(),
        ],
    );
    assert!(v.status.success(), "openssl verify failed:\n{}", text(&v));
    assert!(stdout(&v).contains(": OK"), "{}", text(&v));
    // ...and the key matches the certificate.
    let p1 = run(
        "openssl",
        &["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()],
    );
    let p2 = run(
        "openssl",
        &[
            "pkey",
            "-pubout",
            "-in",
            agent.out.join("tls.key").to_str().unwrap(),
        ],
    );
    assert_eq!(stdout(&p1), stdout(&p2), "tls.key does not match tls.crt");
    // The certificate lives for credential_ttl (1h), capped by the role's 2h.
    let dates = stdout(&run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-dates",
            "-in",
            crt.to_str().unwrap(),
        ],
    ));
    assert!(dates.contains("deployer"), "{dates}");

    // ssh-keygen reads the user certificate with the role's logins as principals.
    let cert = agent.out.join("ssh.key-cert.pub");
    let l = run("ssh-keygen", &["-L", "-f", cert.to_str().unwrap()]);
    assert!(l.status.success(), "{}", text(&l));
    let listing = stdout(&l);
    assert!(listing.contains("user certificate"), "{listing}");
    let principals: Vec<&str> = listing
        .split("Principals:")
        .nth(1)
        .expect("principals section")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(str::trim)
        .collect();
    assert_eq!(principals, vec!["deploy", "root"], "{listing}");
    assert!(listing.contains("Valid: from "), "{listing}");
    // The private key is a valid OpenSSH key matching the certificate.
    let y = run(
        "ssh-keygen",
        &["-y", "-f", agent.out.join("ssh.key").to_str().unwrap()],
    );
    assert!(y.status.success(), "{}", text(&y));
    let pubkey = stdout(&y);
    let cert_line = std::fs::read_to_string(&cert).expect("cert");
    let key_b64 = pubkey.split_whitespace().nth(1).expect("key");
    assert!(listing.contains("Public key: ED25519-CERT"), "{listing}");
    assert!(!key_b64.is_empty() && cert_line.starts_with("ssh-ed25519-cert-v01@openssh.com "));
    let known_hosts = std::fs::read_to_string(agent.out.join("known_hosts")).expect("known_hosts");
    assert!(
        known_hosts.starts_with("@cert-authority * ssh-ed25519 "),
        "{known_hosts}"
    );

    // The server recorded the instance with its authentication and heartbeat.
    let inst = auth.instances();
    assert_eq!(inst.len(), 1, "{inst:?}");
    let spec = &inst[0]["spec"];
    assert_eq!(spec["bot_name"], "deployer");
    assert_eq!(spec["generation"], 1);
    assert_eq!(spec["join_method"], "token");
    assert!(
        spec["initial_authentication"]["remote_addr"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:")
    );
    assert!(
        !spec["heartbeats"][0]["hostname"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );

    // Joins and issuances are audited; the token is never in the log.
    let joins = auth.audit("bot.join");
    assert_eq!(joins.len(), 1, "{joins:?}");
    let issued = auth.audit("cert.issued");
    assert!(
        issued.iter().any(|e| e["fields"]["kind"] == "ssh_user"),
        "{issued:?}"
    );
    assert!(issued.iter().all(|e| {
        e["fields"]["serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    }));
    assert!(
        !auth.log().contains(&token),
        "the token leaked into the auth log"
    );
    let all = stdout(&auth.admin(&["audit", "ls", "--format", "json"]));
    assert!(!all.contains(&token), "the token leaked into the audit log");
}

#[test]
fn token_is_single_use_and_denial_writes_nothing() {
    let auth = Auth::start();
    let token = auth.bot("ci", &["ci"]);
    let first = AgentDirs::new();
    assert!(first.oneshot(&auth, Some(&token)).status.success());

    let second = AgentDirs::new();
    let o = second.oneshot(&auth, Some(&token));
    assert!(!o.status.success(), "reused token accepted:\n{}", text(&o));
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    assert!(
        !second.out.exists()
            || std::fs::read_dir(&second.out)
                .expect("dir")
                .next()
                .is_none(),
        "output written on denial"
    );

    let unknown = AgentDirs::new();
    let o = unknown.oneshot(&auth, Some("0123456789abcdef0123456789abcdef"));
    assert!(!o.status.success());
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    // The denial message does not say why; the audit log does.
    assert!(
        !text(&o).contains("unknown"),
        "denial reveals the reason: {}",
        text(&o)
    );
    let denied = auth.audit("bot.join.denied");
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| {
        e["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unknown, used or expired"))
    }));
}

#[test]
fn expired_token_is_denied() {
    let auth = Auth::start();
    auth.bot("short", &["x"]);
    let out = auth.ok(&[
        "tokens", "add", "--bot", "short", "--ttl", "1s", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let token = v["token"].as_str().expect("token").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(!o.status.success());
    assert!(text(&o).contains("join denied"), "{}", text(&o));
}

#[test]
fn twenty_agents_racing_for_one_token_one_wins() {
    let mut auth = Auth::start();
    let token = auth.bot("racer", &["r"]);
    let dirs: Vec<AgentDirs> = (0..20).map(|_| AgentDirs::new()).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            d.command(&auth, Some(&token), true)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn agent")
        })
        .collect();
    let ok = children
        .into_iter()
        .map(|mut c| c.wait().expect("wait"))
        .filter(|s| s.success())
        .count();
    assert_eq!(ok, 1, "exactly one agent must win the token");
    assert_eq!(auth.instances().len(), 1);
    assert_eq!(auth.audit("bot.join").len(), 1);
    // Identical denials are aggregated (a row with `count` for the repeats, written
    // when its window ends or at shutdown): every one is accounted for.
    auth.stop();
    auth.spawn();
    let denied: u64 = auth
        .audit("bot.join.denied")
        .iter()
        .map(|r| r["fields"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(denied, 19);
}

#[test]
fn unwritable_output_fails_before_any_network_call() {
    let auth = Auth::start();
    let token = auth.bot("w", &["w"]);
    let agent = AgentDirs::new();
    std::fs::create_dir_all(agent.dir.path()).expect("dir");
    // A regular file where the output directory should be.
    std::fs::write(&agent.out, b"not a dir").expect("file");
    let o = agent.oneshot(&auth, Some(&token));
    assert!(!o.status.success());
    assert!(text(&o).contains("output destination"), "{}", text(&o));
    // The token was not spent: a fixed agent can still use it.
    assert!(auth.audit("bot.join.denied").is_empty());
    std::fs::remove_file(&agent.out).expect("rm");
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn agent_config_file_joins_and_bad_config_names_file_line_and_field() {
    let auth = Auth::start();
    let token = auth.bot("cfg", &["cfg"]);
    let agent = AgentDirs::new();
    let token_file = agent.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let cfg = agent.dir.path().join("agent.yaml");
    let yaml = format!(
        "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: token, token_path: {}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 30m\nrenewal_interval: 10m\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
        auth.addr(),
        auth.pin,
        token_file.display(),
        agent.storage.display(),
        agent.out.display()
    );
    let start_agent = |config_text: &str| {
        std::fs::write(&cfg, config_text).expect("cfg");
        std::process::Command::new(sigil_bin())
            .args(["agent", "start", "--oneshot", "--config"])
            .arg(&cfg)
            .output()
            .expect("run")
    };
    // A typo in a field: file, line and field named; nothing contacted.
    let o = start_agent(&yaml.replace("renewal_interval", "renewal_intervall"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("agent.yaml:7:"), "{}", text(&o));
    assert!(text(&o).contains("renewal_intervall"), "{}", text(&o));
    assert!(auth.audit("bot.join.denied").is_empty() && auth.audit("bot.join").is_empty());

    let o = start_agent(&yaml);
    assert!(o.status.success(), "{}", text(&o));
    // credential_ttl from the file: 30 minutes.
    let end = stdout(&run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-enddate",
            "-in",
            agent.out.join("tls.crt").to_str().unwrap(),
        ],
    ));
    let start = stdout(&run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-startdate",
            "-in",
            agent.out.join("tls.crt").to_str().unwrap(),
        ],
    ));
    let secs = |s: &str| {
        let d = s.split('=').nth(1).expect("date").trim().to_string();
        let o = run("date", &["-u", "-d", &d, "+%s"]);
        stdout(&o).trim().parse::<i64>().expect("epoch")
    };
    // notBefore is backdated 5 minutes for clock skew.
    assert_eq!(secs(&end) - secs(&start), 30 * 60 + 300, "{start} {end}");
}

#[test]
fn auth_public_endpoints_answer_over_https() {
    let auth = Auth::start();
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", auth.public_port);
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let o = run("curl", &["-sfk", &url(path)]);
        assert!(
            o.status.success() && stdout(&o).contains(want),
            "{path}: {}",
            text(&o)
        );
    }
    let token = auth.bot("m", &["m"]);
    assert!(
        AgentDirs::new()
            .oneshot(&auth, Some(&token))
            .status
            .success()
    );
    let o = run("curl", &["-sfk", &url("/metrics")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("sigil_joins_total"), "{}", stdout(&o));
    let status: serde_json::Value =
        serde_json::from_str(&auth.ok(&["status", "--format", "json"])).expect("json");
    assert_eq!(status["ca_pin"].as_str(), Some(auth.pin.as_str()));
    assert_eq!(
        status["cluster_name"]
            .as_str()
            .or(status["cluster"].as_str()),
        Some("example.test"),
        "{status}"
    );
}
