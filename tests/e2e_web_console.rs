//! The web console in real headless Chromium: a real `sigil auth start`, a
//! real agent joined as a bot, and tests/fixtures/web_console.py driving
//! Chromium through chromedriver (Selenium): log in through a `sigil admin
//! login` link, see the bot, lock its instance from the UI and watch the
//! agent's next renewal fail, find the lock in the audit page, and the
//! refusals: no session, a reused link, forged CSRF requests.
//! Screenshots of each page go to target/tmp/web-console-screenshots/.

mod common;

use std::process::Command;

use common::*;

#[test]
fn console_in_headless_chromium() {
    let auth = Auth::start();
    let token = auth.bot("web-bot", &["deploy"]);
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(
        o.status.success(),
        "the agent could not join:\n{}",
        text(&o)
    );
    let inst = auth.instances();
    let instance = inst[0]["spec"]["instance_id"]
        .as_str()
        .expect("instance id")
        .to_string();

    let login = auth.ok(&["admin", "login"]);
    let link = login.lines().next().expect("a link").trim().to_string();
    let base = format!("https://127.0.0.1:{}", auth.public_port);
    assert!(
        link.starts_with(&format!("{base}/web/login#")),
        "the link is not on the public listener: {login}"
    );
    // The agent's next renewal, as the browser test runs it after the lock.
    let renew = agent.command(&auth, None, true);
    let argv: Vec<String> = std::iter::once(renew.get_program())
        .chain(renew.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let shots = concat!(env!("CARGO_TARGET_TMPDIR"), "/web-console-screenshots");

    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/web_console.py"
        ))
        .env("BASE", &base)
        .env("LINK", &link)
        .env("BOT", "web-bot")
        .env("INSTANCE", &instance)
        .env("RENEW", serde_json::to_string(&argv).expect("json"))
        .env("SHOTS", shots)
        .output()
        .expect("python3 (the test venv has selenium; Chromium and chromedriver from apt)");
    assert!(
        o.status.success() && stdout(&o).contains("[web_console] OK"),
        "the browser test failed:\n{}\nauth log:\n{}",
        text(&o),
        auth.log()
    );

    // The audit log holds what the browser did, by whom.
    let logins = auth.audit("web.login");
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0]["fields"]["by"], "local-admin");
    assert!(!auth.audit("web.login.denied").is_empty());
    assert_eq!(auth.audit("web.logout").len(), 1);
    let refused = auth.audit("web.csrf_refused");
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["fields"]["reason"].as_str())
        .collect();
    for why in ["no CSRF token", "foreign Origin", "wrong CSRF token"] {
        assert!(reasons.contains(&why), "no {why:?} refusal in {refused:?}");
    }
    let locks = auth.audit("lock.created");
    assert!(
        locks.iter().any(|e| e["fields"]["by"] == "local-admin"
            && e["fields"]["target"] == format!("bot_instance={instance}")),
        "{locks:?}"
    );
    // No login secret or session id ever reaches the log.
    let secret = link.rsplit('#').next().expect("secret");
    assert!(!auth.log().contains(secret));
    let all = auth.ok(&["audit", "ls", "--format", "json"]);
    assert!(!all.contains(secret));
}
