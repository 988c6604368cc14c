//! The web console's client-certificate login (`--web-client-certificates`):
//! a real `sigil auth start`, real agents joined as bots writing `identity`
//! outputs, and real headless Chromium presenting those certificates from
//! an NSS database (tests/fixtures/web_console_cert.py): a bot whose role
//! allows the verbs signs in and sees the Fleet page, one whose role lacks
//! them sees the pages refuse, a locked bot and an agent's own identity are
//! refused at login. Then `curl` for what a browser cannot easily show:
//! clients without (or with an untrusted) certificate are still served, a
//! cross-site login is refused, and a certificate whose client CA a
//! rotation dropped no longer logs in.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A bot joined with `role`, its identity output in `agent.out`.
fn joined(auth: &Auth, bot: &str, role: &str) -> AgentDirs {
    let out = auth.ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let agent = AgentDirs::new();
    let o = agent.oneshot(auth, v["token"].as_str());
    assert!(o.status.success(), "{bot} could not join:\n{}", text(&o));
    agent
}

fn run(c: &mut Command) {
    let o = c.output().expect("a tool from libnss3-tools / openssl");
    assert!(o.status.success(), "{c:?}:\n{}", text(&o));
}

/// A HOME whose NSS database (`.pki/nssdb`, where Chromium on Linux looks)
/// holds the one certificate and key given (none for `None`).
fn nss_home(root: &Path, name: &str, cert_key: Option<(&Path, &Path)>) -> PathBuf {
    let home = root.join(name);
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let sql = format!("sql:{}", db.display());
    run(Command::new("certutil").args(["-N", "-d", &sql, "--empty-password"]));
    if let Some((cert, key)) = cert_key {
        let p12 = root.join(format!("{name}.p12"));
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:", "-name", name])
            .arg("-in")
            .arg(cert)
            .arg("-inkey")
            .arg(key)
            .arg("-out")
            .arg(&p12));
        run(Command::new("pk12util")
            .args(["-d", &sql, "-W", ""])
            .arg("-i")
            .arg(&p12));
    }
    home
}

/// `curl` against the public listener, optionally with a client
/// certificate: (HTTP status, body).
fn curl(
    base: &str,
    method: &str,
    path: &str,
    headers: &[String],
    cert: Option<(&Path, &Path)>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sk",
        "-m",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    if method == "POST" {
        c.args(["-H", "Content-Type: application/json", "--data", "{}"]);
    }
    let o = c.arg(format!("{base}{path}")).output().expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The refusal reasons of certificate logins, by bot.
fn cert_denials(auth: &Auth) -> Vec<(String, String)> {
    auth.audit("web.login.denied")
        .iter()
        .filter(|e| e["fields"]["method"] == "client_certificate" && e["fields"]["via"] == "web")
        .map(|e| {
            (
                e["fields"]["bot"].as_str().unwrap_or_default().to_string(),
                e["fields"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn console_login_with_a_client_certificate() {
    let auth = Auth::start_with(&["--web-client-certificates"]);
    auth.create(
        "viewer.yaml",
        "kind: role\nversion: v1\nmetadata: {name: fleet-viewer}\nspec:\n  allow:\n    rules: [{resources: [bot, bot_instance], verbs: [list, read]}]\n",
    );
    auth.create(
        "auditor.yaml",
        "kind: role\nversion: v1\nmetadata: {name: auditor}\nspec:\n  allow:\n    rules: [{resources: [audit], verbs: [list]}]\n",
    );
    let viewer = joined(&auth, "viewer", "fleet-viewer");
    let auditor = joined(&auth, "auditor", "auditor");
    let locked = joined(&auth, "locked", "fleet-viewer");
    auth.ok(&["locks", "add", "--bot", "locked", "--message", "incident 9"]);

    let tmp = tempfile::tempdir().expect("tempdir");
    let identity = |a: &AgentDirs| (a.out.join("tls.crt"), a.out.join("tls.key"));
    let (viewer_crt, viewer_key) = identity(&viewer);
    let (auditor_crt, auditor_key) = identity(&auditor);
    let (locked_crt, locked_key) = identity(&locked);
    // The viewer agent's own renewable identity, from its stored credential.
    let cred: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(viewer.storage.join("credential.json")).expect("credential"),
    )
    .expect("credential json");
    let (agent_crt, agent_key) = (tmp.path().join("agent.crt"), tmp.path().join("agent.key"));
    std::fs::write(&agent_crt, cred["cert_pem"].as_str().expect("cert_pem")).expect("write");
    std::fs::write(&agent_key, cred["key_pem"].as_str().expect("key_pem")).expect("write");

    let homes = tmp.path().join("homes");
    let cases = serde_json::json!([
        {"name": "no-certificate", "home": nss_home(&homes, "none", None), "bot": null, "expect": "none"},
        {"name": "viewer", "home": nss_home(&homes, "viewer", Some((&viewer_crt, &viewer_key))), "bot": "viewer", "expect": "fleet"},
        {"name": "auditor", "home": nss_home(&homes, "auditor", Some((&auditor_crt, &auditor_key))), "bot": "auditor", "expect": "refused"},
        {"name": "locked", "home": nss_home(&homes, "locked", Some((&locked_crt, &locked_key))), "bot": "locked", "expect": "denied"},
        {"name": "agent-identity", "home": nss_home(&homes, "agent", Some((&agent_crt, &agent_key))), "bot": "viewer", "expect": "denied"},
    ]);
    let base = format!("https://127.0.0.1:{}", auth.public_port);
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/web_console_cert.py"
        ))
        .env("BASE", &base)
        .env("CASES", cases.to_string())
        .env(
            "SHOTS",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/web-console-screenshots"),
        )
        .output()
        .expect("python3 (the test venv has selenium; Chromium and chromedriver from apt)");
    assert!(
        o.status.success() && stdout(&o).contains("[web_console_cert] OK"),
        "the browser test failed:\n{}\nauth log:\n{}",
        text(&o),
        auth.log()
    );

    // The logins, audited as certificate logins through the console.
    let logins = auth.audit("web.login");
    for bot in ["viewer", "auditor"] {
        assert!(
            logins
                .iter()
                .any(|e| e["fields"]["by"] == format!("bot:{bot}")
                    && e["fields"]["method"] == "client_certificate"
                    && e["fields"]["via"] == "web"
                    // Which certificate: its serial, instance and CA.
                    && e["fields"]["cert_serial"].as_str().is_some_and(|s| !s.is_empty())
                    && e["fields"]["bot_instance"].as_str().is_some_and(|s| !s.is_empty())
                    && e["fields"]["client_ca_pin"].as_str().is_some_and(|s| !s.is_empty())),
            "no certificate login of {bot} in {logins:?}"
        );
    }
    assert!(
        !logins.iter().any(|e| e["fields"]["by"] == "bot:locked"),
        "{logins:?}"
    );
    // The refusals' reasons are in the audit log (the browser said only
    // "access denied").
    let denied = cert_denials(&auth);
    assert!(
        denied
            .iter()
            .any(|(bot, why)| bot == "locked" && why.contains("incident 9")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|(bot, why)| bot == "viewer" && why.contains("agent's own identity")),
        "{denied:?}"
    );
    // The auditor's session was refused the Fleet page by its role.
    assert!(
        auth.audit("admin.denied")
            .iter()
            .any(|e| e["fields"]["via"] == "web" && e["fields"]["by"] == "bot:auditor"),
        "no audited refusal of the auditor's Fleet page"
    );

    // Clients without a certificate are served as before.
    for path in ["/healthz", "/jwks.json", "/.well-known/spiffe-bundle"] {
        let (code, body) = curl(&base, "GET", path, &[], None);
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (code, body) = curl(&base, "GET", "/web/api/certificate", &[], None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""presented":false"#), "{body}");
    let origin = format!("Origin: {base}");
    let (code, body) = curl(
        &base,
        "POST",
        "/web/api/login/certificate",
        std::slice::from_ref(&origin),
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("access denied"), "{body}");

    // A certificate of no CA of this cluster: the handshake still succeeds
    // (the public endpoints answer), the login is denied.
    let (rogue_crt, rogue_key) = (tmp.path().join("rogue.crt"), tmp.path().join("rogue.key"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=rogue"])
        .arg("-keyout")
        .arg(&rogue_key)
        .arg("-out")
        .arg(&rogue_crt));
    let rogue = Some((rogue_crt.as_path(), rogue_key.as_path()));
    let (code, body) = curl(&base, "GET", "/healthz", &[], rogue);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        &base,
        "POST",
        "/web/api/login/certificate",
        std::slice::from_ref(&origin),
        rogue,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body, r#"{"error":"access denied"}"#);

    // The viewer's certificate re-signed by that rogue CA (it names the
    // bot, with the viewer's key): denied, and the name it claims is not
    // audited as the bot (it is unverified, anyone can mint one).
    let (forged_csr, forged) = (tmp.path().join("forged.csr"), tmp.path().join("forged.crt"));
    run(Command::new("openssl")
        .args(["x509", "-x509toreq", "-copy_extensions", "copyall", "-in"])
        .arg(&viewer_crt)
        .arg("-key")
        .arg(&viewer_key)
        .arg("-out")
        .arg(&forged_csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(&forged_csr)
        .arg("-CA")
        .arg(&rogue_crt)
        .arg("-CAkey")
        .arg(&rogue_key)
        .args([
            "-copy_extensions",
            "copyall",
            "-set_serial",
            "7",
            "-days",
            "1",
        ])
        .arg("-out")
        .arg(&forged));
    let (code, body) = curl(
        &base,
        "POST",
        "/web/api/login/certificate",
        std::slice::from_ref(&origin),
        Some((forged.as_path(), viewer_key.as_path())),
    );
    assert_eq!(code, 403, "{body}");
    // (The self-signed rogue certificate is refused as a CA used as a
    // leaf; this one, signed by an unknown CA, as such.)
    let unverified = || {
        cert_denials(&auth)
            .into_iter()
            .filter(|(_, why)| why.contains("does not verify"))
            .collect::<Vec<_>>()
    };
    wait_until(
        "the forged login's denial",
        std::time::Duration::from_secs(30),
        || {
            unverified()
                .iter()
                .any(|(_, why)| why.contains("UnknownIssuer"))
        },
    );
    let rows = unverified();
    assert!(rows.iter().all(|(bot, _)| bot.is_empty()), "{rows:?}");

    // A good certificate from another origin is refused before it is looked at.
    let viewer_cert = Some((viewer_crt.as_path(), viewer_key.as_path()));
    let (code, body) = curl(
        &base,
        "POST",
        "/web/api/login/certificate",
        &["Origin: https://evil.example".into()],
        viewer_cert,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    let (code, body) = curl(
        &base,
        "POST",
        "/web/api/login/certificate",
        std::slice::from_ref(&origin),
        viewer_cert,
    );
    assert_eq!(
        code, 200,
        "the viewer's certificate no longer logs in: {body}"
    );

    // The client CA rotated out: the viewer's certificate logs in no more.
    let before_rotation = cert_denials(&auth).len();
    for phase in ["init", "update_clients", "update_servers"] {
        auth.ok(&["ca", "rotate", "--type", "client", "--phase", phase]);
    }
    auth.ok(&[
        "ca", "rotate", "--type", "client", "--phase", "standby", "--force",
    ]);
    wait_until(
        "the rotated-out certificate to be refused",
        std::time::Duration::from_secs(10),
        || {
            let (code, _) = curl(
                &base,
                "POST",
                "/web/api/login/certificate",
                std::slice::from_ref(&origin),
                viewer_cert,
            );
            code == 403
        },
    );
    // Refused as unverified now (its name not audited as the bot); a
    // repeat of an open kind is written as the window's count.
    wait_until(
        "the rotated-out certificate's denial",
        std::time::Duration::from_secs(30),
        || {
            cert_denials(&auth)[before_rotation..]
                .iter()
                .any(|(bot, why)| bot.is_empty() && why.contains("trusts now"))
        },
    );
    let denied = cert_denials(&auth);
    assert!(
        denied[before_rotation..]
            .iter()
            .all(|(bot, _)| bot.is_empty()),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|(bot, why)| bot.is_empty()
            && why.contains("does not verify")
            && !why.contains("BEGIN")),
        "{denied:?}"
    );
}
