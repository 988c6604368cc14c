//! End to end: X.509-SVID callers through `sigil proxy`. The SVID an agent's
//! `workload-identity-x509` output wrote is presented by `curl` (and the
//! Python client for an open connection); it is authorised by the current
//! roles and locks of the bot it was issued to *and* the app's
//! `allowed_spiffe_ids`; a lock on its SPIFFE ID cuts it off, open
//! connections included, and a revoked SVID is refused.

mod common;

use common::app_proxy::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SPIFFE_ID: &str = "spiffe://example.test/svc/web";

const POLICY: &str = "kind: role\nversion: v1\nmetadata: {name: svid-user}\n\
spec: {allow: {app_labels: {env: prod}, workload_identity_labels: {env: [web]}}}\n\
---\nkind: role\nversion: v1\nmetadata: {name: svid-dev}\n\
spec: {allow: {app_labels: {env: dev}, workload_identity_labels: {env: [web]}}}\n\
---\nkind: workload_identity\nversion: v1\nmetadata: {name: web, labels: {env: web}}\n\
spec:\n  spiffe:\n    id: /svc/web\n";

/// A bot with `role`, joined once by an agent whose only output is the
/// `web` X.509-SVID; the output directory, with `tls.crt`/`tls.key` links
/// to the SVID so the shared clients (which read those names) present it.
fn svid_client(s: &Setup, bot: &str, role: &str) -> PathBuf {
    let out = s
        .auth
        .ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
    let token = v["token"].as_str().expect("token");
    let dir = s.dir(bot);
    let svid = dir.join("svid");
    let cfg = dir.join("agent.yaml");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\n\
             onboarding: {{join_method: token, token: {token}}}\n\
             storage: {{type: directory, path: {}}}\n\
             outputs:\n  - type: workload-identity-x509\n    selector: {{name: web}}\n\
             \x20   destination: {{type: directory, path: {}}}\n",
            s.auth.addr(),
            s.auth.pin,
            dir.join("storage").display(),
            svid.display()
        ),
    )
    .expect("write agent config");
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert!(o.status.success(), "{}", text(&o));
    link_as_identity(&svid);
    svid
}

/// `tls.crt`/`tls.key` in `dir` pointing at its `svid.pem`/`svid.key`.
fn link_as_identity(dir: &Path) {
    std::os::unix::fs::symlink(dir.join("svid.pem"), dir.join("tls.crt")).expect("link");
    std::os::unix::fs::symlink(dir.join("svid.key"), dir.join("tls.key")).expect("link");
}

/// Replaces the app with one accepting `ids` as SVID callers.
fn allow_spiffe_ids(s: &Setup, ids: &[&str]) {
    let out = s.auth.ok(&["get", "app/grafana", "-o", "json"]);
    let mut app: serde_json::Value = serde_json::from_str(&out).expect("app json");
    app["spec"]["allowed_spiffe_ids"] = serde_json::json!(ids);
    let p = s.dir("app.json");
    std::fs::write(&p, app.to_string()).expect("write app");
    s.auth
        .ok(&["create", "--force", "-f", p.to_str().expect("utf8")]);
}

/// The SVID's serial, as `openssl` prints it.
fn serial(svid: &Path) -> String {
    let o = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            svid.join("svid.pem").to_str().expect("utf8"),
        ],
    );
    stdout(&o).trim().trim_start_matches("serial=").to_string()
}

fn jwt_claims(s: &Setup, svid: &Path) -> serde_json::Value {
    let (code, body) = s.get(svid, "/svid");
    assert_eq!(code, 200, "{body}\n{}", proxy_log(s));
    let v: serde_json::Value = serde_json::from_str(&body).expect("upstream json");
    v["claims"].clone()
}

#[test]
fn x509_svid_callers_are_authorised_by_their_bot() {
    let s = start();
    s.auth.create("svid.yaml", POLICY);
    let web = svid_client(&s, "web", "svid-user");
    let dev = svid_client(&s, "webdev", "svid-dev");
    let other = svid_client(&s, "web2", "svid-user");
    // What was presented is an SVID, not an identity certificate.
    let san = stdout(&run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            web.join("svid.pem").to_str().expect("utf8"),
        ],
    ));
    assert!(san.contains(&format!("URI:{SPIFFE_ID}")), "{san}");

    // The bot's roles allow the app, but the app accepts no SVID yet.
    assert_eq!(s.get(&web, "/").0, 403);
    wait_until(
        "the SVID's refusal audited with the reason",
        Duration::from_secs(10),
        || {
            s.auth.audit("app.request").iter().any(|e| {
                e["fields"]["spiffe_id"] == SPIFFE_ID
                    && e["fields"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("allowed_spiffe_ids"))
            })
        },
    );
    allow_spiffe_ids(&s, &[SPIFFE_ID]);

    // Allowed by both; the JWT's subject is the workload, its holder named.
    let c = jwt_claims(&s, &web);
    assert_eq!(c["sub"], SPIFFE_ID);
    assert_eq!(c["sigil_bot"], "web");
    assert_eq!(c["spiffe_id"], SPIFFE_ID);
    assert_eq!(c["roles"], serde_json::json!(["svid-user"]));
    // The same SPIFFE ID held by a bot whose roles do not reach the app: 403.
    assert_eq!(s.get(&dev, "/").0, 403);

    // An SVID an admin minted names no bot instance: refused.
    let minted = s.dir("minted");
    s.auth.ok(&[
        "workload-identity",
        "issue",
        "web",
        "--out",
        minted.to_str().expect("utf8"),
    ]);
    link_as_identity(&minted);
    assert_eq!(s.get(&minted, "/").0, 403);

    // The holder's current roles decide, on the next request.
    s.auth
        .ok(&["bots", "update", "web", "--set-roles", "svid-dev"]);
    assert_eq!(s.get(&web, "/").0, 403);
    s.auth
        .ok(&["bots", "update", "web", "--set-roles", "svid-user"]);
    assert_eq!(s.get(&web, "/").0, 200);

    // A revoked SVID is refused (the other holder's is not).
    assert_eq!(s.get(&other, "/").0, 200);
    s.auth.ok(&[
        "workload-identity",
        "revocations",
        "add",
        "--serial",
        &serial(&other),
        "--reason",
        "leaked",
    ]);
    assert_eq!(s.get(&other, "/").0, 403, "{}", proxy_log(&s));
    assert_eq!(s.get(&web, "/").0, 200);

    // A lock on the SPIFFE ID closes an open connection within 1 s, and
    // refuses what comes after.
    let secs = closed_after_lock(
        &s,
        &web,
        "hold",
        &["--spiffe-id", SPIFFE_ID],
        "HTTP/1.1 200",
    );
    assert!(
        secs <= 1.0,
        "closed {secs}s after the lock\n{}",
        proxy_log(&s)
    );
    assert_eq!(s.get(&web, "/").0, 403);
    // The refusal is audited with the holder and the lock.
    wait_until(
        "the locked SVID's denial audited",
        Duration::from_secs(10),
        || {
            s.auth.audit("app.request").iter().any(|e| {
                e["fields"]["bot"] == "web"
                    && e["fields"]["status"] == 403
                    && e["fields"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("locked"))
            })
        },
    );
}
