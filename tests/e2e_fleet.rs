//! End to end: what keeps one auth server workable as the fleet grows —
//! bot instances listed page by page and counted without reading them all,
//! and instances removed once their retention after the last credential's
//! expiry has passed. Real `sigil` auth service, agents and CLI.

mod common;

use common::*;
use std::process::Output;
use std::time::{Duration, Instant};

fn ids(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "instances ls:\n{}", text(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("instances json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .expect("instance id")
                .to_string()
        })
        .collect()
}

/// The `--page-token` the command printed on stderr to continue, if any.
fn next_token(o: &Output) -> Option<String> {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let line = err.lines().find(|l| l.starts_with("more: "))?;
    Some(line.rsplit(' ').next()?.to_string())
}

#[test]
fn instances_are_listed_page_by_page_and_counted() {
    let auth = Auth::start();
    let mut joined = Vec::new();
    for bot in ["fleet-a", "fleet-b", "fleet-c"] {
        let token = auth.bot(bot, &["ubuntu"]);
        let agent = AgentDirs::new();
        let o = agent.oneshot(&auth, Some(&token));
        assert!(o.status.success(), "join {bot}:\n{}", text(&o));
        joined.push(agent);
    }
    let all = ids(&auth.admin(&["bots", "instances", "ls", "--format", "json"]));
    assert_eq!(all.len(), 3);

    // Two, then the rest from the token the first page printed.
    let first = auth.admin(&[
        "bots",
        "instances",
        "ls",
        "--limit",
        "2",
        "--format",
        "json",
    ]);
    let page1 = ids(&first);
    assert_eq!(page1.len(), 2, "{}", text(&first));
    let token = next_token(&first).expect("a --page-token to continue");
    assert!(
        String::from_utf8_lossy(&first.stderr)
            .contains("sigil bots instances ls --limit 2 --page-token"),
        "{}",
        text(&first)
    );
    let second = auth.admin(&[
        "bots",
        "instances",
        "ls",
        "--limit",
        "2",
        "--page-token",
        &token,
        "--format",
        "json",
    ]);
    let page2 = ids(&second);
    assert_eq!(page2.len(), 1, "{}", text(&second));
    assert_eq!(next_token(&second), None, "nothing left: {}", text(&second));
    let mut walked = [page1, page2].concat();
    walked.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(walked, want, "the pages cover every instance once");

    // One bot's instances; a token that no listing of its returned is refused.
    let of_b = ids(&auth.admin(&["bots", "instances", "ls", "fleet-b", "--format", "json"]));
    assert_eq!(of_b.len(), 1);
    let foreign: String = "/bot_instances/fleet-a/x"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    for bad in [foreign.as_str(), "not-hex"] {
        let o = auth.admin(&["bots", "instances", "ls", "fleet-b", "--page-token", bad]);
        assert!(!o.status.success(), "page token {bad:?} was accepted");
        assert!(text(&o).contains("page_token"), "{}", text(&o));
    }
    let o = auth.admin(&["bots", "instances", "ls", "--limit", "0"]);
    assert!(!o.status.success(), "--limit 0 was accepted");

    // The count comes from the store's index.
    let status: serde_json::Value =
        serde_json::from_str(&auth.ok(&["status", "--format", "json"])).expect("status json");
    assert_eq!(status["bot_instances"], 3, "{status:#}");

    // Removing a bot removes its instances.
    auth.ok(&["bots", "rm", "fleet-a"]);
    let left = ids(&auth.admin(&["bots", "instances", "ls", "--format", "json"]));
    assert_eq!(left.len(), 2);
    let o = auth.admin(&["bots", "instances", "ls", "fleet-a", "--format", "json"]);
    assert!(ids(&o).is_empty());
}

#[test]
fn an_instance_is_removed_once_its_retention_has_passed() {
    let auth = Auth::start_with(&["--instance-retention", "15s"]);
    auth.create(
        "short.yaml",
        "kind: role\nversion: v1\nmetadata: {name: short}\nspec:\n  allow:\n    logins: [ubuntu]\n  options: {max_ttl: 3s}\n",
    );
    let out = auth.ok(&[
        "bots", "add", "brief", "--roles", "short", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
    let token = v["token"].as_str().expect("token").to_string();
    let agent = AgentDirs::new();
    let joined = Instant::now();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "join:\n{}", text(&o));
    let id = ids(&auth.admin(&["bots", "instances", "ls", "--format", "json"]))
        .pop()
        .expect("the instance");

    // The credential (3 s) has expired, the retention (15 s) has not: kept.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(joined.elapsed()));
    let o = auth.admin(&["get", &format!("bot_instance/{id}")]);
    assert!(
        o.status.success(),
        "removed before its retention:\n{}",
        text(&o)
    );

    // Past expiry + retention: gone from get, ls and the count.
    wait_until(
        "the instance to be removed",
        Duration::from_secs(30),
        || {
            !auth
                .admin(&["get", &format!("bot_instance/{id}")])
                .status
                .success()
        },
    );
    assert!(
        joined.elapsed() >= Duration::from_secs(17),
        "removed after {:?}, before credential expiry + retention",
        joined.elapsed()
    );
    let o = auth.admin(&["get", &format!("bot_instance/{id}")]);
    assert!(text(&o).contains("not found"), "{}", text(&o));
    assert!(ids(&auth.admin(&["bots", "instances", "ls", "--format", "json"])).is_empty());
    let status: serde_json::Value =
        serde_json::from_str(&auth.ok(&["status", "--format", "json"])).expect("status json");
    assert_eq!(status["bot_instances"], 0, "{status:#}");
    // Its joins stay in the audit log.
    let joins = auth.audit("bot.join");
    assert!(
        joins
            .iter()
            .any(|e| e["fields"]["bot_instance"] == id.as_str()),
        "{joins:#?}"
    );
}
