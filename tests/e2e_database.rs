//! End to end: database access with client certificates against the real
//! PostgreSQL 15 (`cert` authentication, `ssl_crl_file`). Real `sigil` auth
//! service and agents: a server agent with a `database-server` output whose
//! files PostgreSQL is configured with (owner: postgres), client agents with
//! `database` outputs, and the real `psql` with `sslmode=verify-full`.
//! Runs as root (the database server runs as `postgres`).

mod common;

use common::postgres::PrivatePostgres;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

const HOST_ROLE: &str = "kind: role
version: v1
metadata: {name: db-host}
spec:
  allow:
    db_server_labels: {env: prod}
";

const CLIENT_ROLE: &str = "kind: role
version: v1
metadata: {name: db-ro}
spec:
  allow:
    db_labels: {env: prod}
    db_users: [app_ro]
    db_names: [orders]
";

struct Setup {
    auth: Auth,
    pg: PrivatePostgres,
    work: tempfile::TempDir,
    server_agent: Option<Child>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(c) = &mut self.server_agent {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn admin_url(pg: &PrivatePostgres) -> String {
    // The admin connects without TLS (the `hostssl … cert` line is for clients).
    format!("{}?sslmode=disable", pg.url)
}

impl Setup {
    fn token(&self, bot: &str, role: &str) -> String {
        let out = self
            .auth
            .ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
        v["token"].as_str().expect("token").to_string()
    }

    /// An agent config for `bot` with `outputs` (YAML list items).
    fn config(&self, bot: &str, role: &str, outputs: &str) -> PathBuf {
        let token = self.token(bot, role);
        let d = self.work.path().join(bot);
        let cfg = d.with_extension("yaml");
        std::fs::write(
            &cfg,
            format!(
                "version: v1\nauth_server: {addr}\nca_pins: [{pin}]\n\
                 onboarding: {{join_method: token, token: {token}}}\n\
                 storage: {{type: directory, path: {d}/storage}}\n\
                 credential_ttl: 1h\noutputs:\n{outputs}",
                addr = self.auth.addr(),
                pin = self.auth.pin,
                d = d.display(),
            ),
        )
        .expect("write agent config");
        cfg
    }

    fn oneshot(&self, cfg: &Path) -> Output {
        Command::new(sigil_bin())
            .args(["agent", "start", "--oneshot", "--config"])
            .arg(cfg)
            .output()
            .expect("run agent")
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// `psql` with the client output's service file; its output.
fn psql_service(dir: &Path, extra: &str) -> Output {
    Command::new("psql")
        .env("PGSERVICEFILE", dir.join("pg_service.conf"))
        .env("PGCONNECT_TIMEOUT", "5")
        .args([
            &format!("service=orders {extra}"),
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            "select current_user",
        ])
        .output()
        .expect("run psql")
}

fn start() -> Setup {
    assert!(
        Path::new(PG_BIN).join("postgres").exists(),
        "PostgreSQL 15 is needed: apt-get install postgresql-15"
    );
    let pg = PrivatePostgres::start();
    let admin = admin_url(&pg);
    common::postgres::psql(&admin, "CREATE ROLE app_ro LOGIN");
    common::postgres::psql(&admin, "CREATE ROLE app_rw LOGIN");
    common::postgres::psql(&admin, "CREATE DATABASE orders");
    let auth = Auth::start();
    auth.create("host-role.yaml", HOST_ROLE);
    auth.create("client-role.yaml", CLIENT_ROLE);
    auth.create(
        "orders.yaml",
        &format!(
            "kind: database\nversion: v1\nmetadata: {{name: orders, labels: {{env: prod}}}}\n\
             spec: {{protocol: postgres, uri: \"127.0.0.1:{}\"}}\n",
            pg.port()
        ),
    );
    let work = tempfile::tempdir().expect("tempdir");
    // PostgreSQL (user postgres) must reach the server output's files.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the work dir");
    Setup {
        auth,
        pg,
        work,
        server_agent: None,
    }
}

/// Start the server agent and point PostgreSQL at its files.
fn serve(s: &mut Setup) -> PathBuf {
    let data = s.pg.data_dir();
    let reloads = s.dir("reloads");
    let out = s.dir("db-server").join("out");
    let reload = format!(
        "runuser -u postgres -- {PG_BIN}/pg_ctl reload -s -D {} && echo reload >> {}",
        data.display(),
        reloads.display()
    );
    let cfg = s.config(
        "db-server",
        "db-host",
        &format!(
            "  - type: database-server\n    service: orders\n    names: [127.0.0.1]\n\
             \x20   reload_command: [sh, -c, {reload:?}]\n\
             \x20   destination: {{type: directory, path: {}, owner: postgres}}\n",
            out.display()
        ),
    );
    let log = std::fs::File::create(cfg.with_extension("log")).expect("log");
    let child = Command::new(sigil_bin())
        .args(["agent", "start", "--config"])
        .arg(&cfg)
        .env("SIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server agent");
    s.server_agent = Some(child);
    wait_until(
        "the database-server output",
        Duration::from_secs(60),
        || out.join("crl.pem").exists() && out.join("tls.crt").exists(),
    );
    let key = std::fs::metadata(out.join("tls.key")).expect("tls.key");
    assert_eq!(key.mode() & 0o777, 0o600);
    let postgres_uid = run("id", &["-u", "postgres"]);
    assert_eq!(
        key.uid().to_string(),
        String::from_utf8_lossy(&postgres_uid.stdout).trim(),
        "the key belongs to postgres"
    );
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
    text.push_str(&format!(
        "\nssl = on\nssl_cert_file = '{o}/tls.crt'\nssl_key_file = '{o}/tls.key'\n\
         ssl_ca_file = '{o}/client_ca.crt'\nssl_crl_file = '{o}/crl.pem'\n",
        o = out.display()
    ));
    std::fs::write(&conf, text).expect("write postgresql.conf");
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, format!("hostssl all all 127.0.0.1/32 cert\n{old}"))
        .expect("write pg_hba.conf");
    s.pg.ctl("restart");
    out
}

fn client_output(dir: &Path, user: &str, service: &str) -> String {
    format!(
        "  - type: database\n    service: {service}\n    username: {user}\n    database: orders\n\
         \x20   destination: {{type: directory, path: {}}}\n",
        dir.display()
    )
}

#[test]
fn postgres_cert_auth_with_a_crl_fed_by_locks() {
    let mut s = start();
    let server_out = serve(&mut s);

    // The client: app_ro on orders, plus an identity for `sigil db ls`.
    let ro = s.dir("ci").join("db");
    let ident = s.dir("ci").join("identity");
    let cfg = s.config(
        "ci",
        "db-ro",
        &format!(
            "{}  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            client_output(&ro, "app_ro", "orders"),
            ident.display()
        ),
    );
    let o = s.oneshot(&cfg);
    assert!(o.status.success(), "client agent:\n{}", text(&o));
    assert_eq!(mode(&ro.join("tls.key")), 0o600);
    let conf = std::fs::read_to_string(ro.join("pg_service.conf")).expect("service file");
    assert!(
        conf.contains("[orders]") && conf.contains("sslmode=verify-full"),
        "{conf}"
    );
    let conn = std::fs::read_to_string(ro.join("connection_string")).expect("conn string");
    assert!(
        conn.contains("user=app_ro") && conn.contains("sslmode=verify-full"),
        "{conn}"
    );

    // psql as app_ro, verifying the server against the host CA.
    let o = psql_service(&ro, "");
    assert!(
        o.status.success(),
        "psql as app_ro:\n{}\nserver agent log:\n{}",
        text(&o),
        std::fs::read_to_string(s.dir("db-server").with_extension("log")).unwrap_or_default()
    );
    assert_eq!(stdout(&o).trim(), "app_ro");
    // The same with the connection string file.
    let o = Command::new("psql")
        .args([conn.trim(), "-tAc", "select current_user"])
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "psql with the connection string:\n{}",
        text(&o)
    );

    // app_ro's certificate as another user: PostgreSQL refuses it.
    let o = psql_service(&ro, "user=app_rw");
    assert!(
        !o.status.success(),
        "another user's certificate was accepted"
    );
    assert!(
        text(&o).contains("certificate authentication failed for user \"app_rw\""),
        "{}",
        text(&o)
    );

    // A user the role does not allow: nothing issued, nothing written.
    let rw = s.dir("ci2").join("db");
    let cfg = s.config("ci2", "db-ro", &client_output(&rw, "app_rw", "orders"));
    let o = s.oneshot(&cfg);
    assert!(!o.status.success(), "app_rw was issued:\n{}", text(&o));
    assert!(
        text(&o).contains("app_rw") && text(&o).contains("allow.db_users"),
        "{}",
        text(&o)
    );
    assert!(
        !rw.join("tls.crt").exists() && !rw.join("tls.key").exists(),
        "files were written for a refused user"
    );
    let denied = s.auth.audit("cert.denied");
    assert!(
        denied
            .iter()
            .any(|e| e["fields"]["kind"] == "database" && e["fields"]["db_user"] == "app_rw"),
        "{denied:?}"
    );
    let issued = s.auth.audit("cert.issued");
    assert!(
        issued
            .iter()
            .any(|e| e["fields"]["kind"] == "database" && e["fields"]["ca"] == "db-client"),
        "{issued:?}"
    );

    // `sigil db ls`: the bot sees what its roles give; the admin sees all.
    let o = s
        .auth
        .remote(&ident.join("identity"), &["db", "ls", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("db ls json");
    assert_eq!(v["databases"][0]["name"], "orders");
    assert_eq!(v["databases"][0]["users"], serde_json::json!(["app_ro"]));
    assert_eq!(v["all"], false);
    let all = s.auth.ok(&["db", "ls"]);
    assert!(all.contains("orders") && all.contains("(any)"), "{all}");
    assert!(s.auth.ok(&["get", "databases"]).contains("postgres"));

    // A lock on the database user revokes its certificates; removing the
    // lock takes them off the CRL again.
    let out = s.auth.ok(&[
        "locks",
        "add",
        "--db-user",
        "app_ro",
        "--message",
        "e2e",
        "--format",
        "json",
    ]);
    let lock: serde_json::Value = serde_json::from_str(&out).expect("lock json");
    let id = lock["metadata"]["name"]
        .as_str()
        .expect("lock id")
        .to_string();
    wait_until(
        "a refused connection after the db_user lock",
        Duration::from_secs(5),
        || !psql_service(&ro, "").status.success(),
    );
    s.auth.ok(&["locks", "rm", &id]);
    wait_until(
        "an accepted connection after the lock is removed",
        Duration::from_secs(5),
        || psql_service(&ro, "").status.success(),
    );

    // A lock on the bot: the CRL is rewritten, PostgreSQL reloaded, and a
    // new connection refused within 2 s.
    let reloads = || {
        std::fs::read_to_string(s.dir("reloads"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let crl_before = std::fs::read(server_out.join("crl.pem")).expect("crl");
    let reloads_before = reloads();
    s.auth
        .ok(&["locks", "add", "--bot", "ci", "--message", "e2e"]);
    let locked_at = Instant::now();
    wait_until(
        "a refused connection after the lock",
        Duration::from_secs(2),
        || !psql_service(&ro, "").status.success(),
    );
    let elapsed = locked_at.elapsed();
    assert_ne!(
        std::fs::read(server_out.join("crl.pem")).expect("crl"),
        crl_before
    );
    assert!(reloads() > reloads_before, "reload_command did not run");
    let o = psql_service(&ro, "");
    assert!(
        text(&o).contains("revoked"),
        "refused for another reason:\n{}",
        text(&o)
    );
    eprintln!("connection refused {elapsed:?} after the lock");
}

#[test]
fn bad_input_names_the_field_and_writes_nothing() {
    let s = start();
    // Unknown service: refused by the auth service, naming the field.
    let out = s.dir("bad1").join("db");
    let cfg = s.config("bad1", "db-ro", &client_output(&out, "app_ro", "billing"));
    let o = s.oneshot(&cfg);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("service") && text(&o).contains("billing"),
        "{}",
        text(&o)
    );
    assert!(!out.join("tls.key").exists() && !out.join("tls.crt").exists());
    // A user name PostgreSQL would refuse: the config is refused before any call.
    for (user, why) in [("pg_monitor", "reserved"), ("'app ro'", "contains")] {
        let out = s.dir("bad2").join("db");
        let cfg = s.dir("bad2.yaml");
        std::fs::write(
            &cfg,
            format!(
                "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: token, token: x}}\n\
                 storage: {{type: directory, path: {}/s}}\noutputs:\n{}",
                s.auth.addr(),
                s.auth.pin,
                s.dir("bad2").display(),
                client_output(&out, user, "orders")
            ),
        )
        .expect("config");
        let o = s.oneshot(&cfg);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("outputs[0].username") && text(&o).contains(why),
            "{}",
            text(&o)
        );
        assert!(!out.exists(), "nothing is written for a bad config");
    }
    // A database whose protocol is unknown is refused, naming the field.
    let p = s.dir("mysql.yaml");
    std::fs::write(
        &p,
        "kind: database\nversion: v1\nmetadata: {name: m}\nspec: {protocol: mysql, uri: \"127.0.0.1:3306\"}\n",
    )
    .expect("write");
    let o = s.auth.admin(&["create", "-f", p.to_str().expect("utf8")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("spec.protocol"), "{}", text(&o));
    // A role with a db_users entry PostgreSQL would refuse.
    let p = s.dir("bad-role.yaml");
    std::fs::write(
        &p,
        "kind: role\nversion: v1\nmetadata: {name: bad}\nspec: {allow: {db_users: ['a b']}}\n",
    )
    .expect("write");
    let o = s.auth.admin(&["create", "-f", p.to_str().expect("utf8")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("spec.allow.db_users[0]"), "{}", text(&o));
}
