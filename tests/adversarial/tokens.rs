//! Join tokens and the Join stream: reused, expired, raced, of a removed or
//! locked bot, garbage, oversized, sent with the wrong method, streams that
//! are malformed. Every refused join is "join denied" to the client, its
//! reason only in the `bot.join.denied` audit event; nothing is created.

use crate::common::*;
use crate::harness::*;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::{JoinChallengeResponse, JoinClientMessage, JoinInit};
use std::sync::{Arc, Mutex};
use tonic::Code;

static AUTH: Slot = Slot::new(None);
/// Cases read "the denial this join caused" from the shared audit log: one
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn auth() -> (Arc<Auth>, std::sync::MutexGuard<'static, ()>) {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    (shared(&AUTH, Auth::start), g)
}

/// Runs `attempt`, expecting the generic join denial; returns the reason
/// the new `bot.join.denied` event records, which must contain `reason`.
#[track_caller]
pub fn join_denied<T: std::fmt::Debug>(
    auth: &Auth,
    reason: &str,
    attempt: impl FnOnce() -> Result<T, tonic::Status>,
) -> serde_json::Value {
    let before = auth.audit("bot.join.denied").len();
    let joins = auth.audit("bot.join").len();
    refused(attempt(), Code::PermissionDenied, "join denied");
    // A denial identical to a recent one is written when its aggregation
    // window (10 s) ends, as one row with a count: wait for it.
    let mut found = None;
    let mut new = Vec::new();
    let start = std::time::Instant::now();
    while found.is_none() && start.elapsed() < std::time::Duration::from_secs(20) {
        let events = auth.audit("bot.join.denied");
        new = events[before.min(events.len())..].to_vec();
        found = new
            .iter()
            .find(|e| {
                e["fields"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(reason))
            })
            .cloned();
        if found.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let ev = found.unwrap_or_else(|| panic!("no new bot.join.denied with {reason:?}: {new:?}"));
    assert_eq!(auth.audit("bot.join").len(), joins, "a join was recorded");
    ev
}

fn instances_of(auth: &Auth, bot: &str) -> usize {
    generations(auth, bot).len()
}

fn bot_token(auth: &Auth, bot: &str, extra: &[&str]) -> String {
    let role = format!("{bot}-role");
    auth.create(
        &format!("{role}.yaml"),
        &format!(
            "kind: role\nversion: v1\nmetadata: {{name: {role}}}\nspec:\n  allow:\n    logins: [ubuntu]\n"
        ),
    );
    let mut args = vec!["bots", "add", bot, "--roles", &role, "--format", "json"];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(&auth.ok(&args)).expect("json");
    v["token"].as_str().expect("token").to_string()
}

/// attack: tokens | a join token reused after a successful join | PermissionDenied "join denied"; audited "used by instance …"; one instance
#[test]
fn token_reused_after_a_join() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-reuse", &[]);
    join_raw(&auth, None, token_init(&t), vec![]).expect("first join");
    join_denied(&auth, "used by instance", || {
        join_raw(&auth, None, token_init(&t), vec![])
    });
    assert_eq!(instances_of(&auth, "tok-reuse"), 1);
}

/// attack: tokens | an expired join token | PermissionDenied "join denied"; audited "is unknown, used or expired"; no instance
#[test]
fn expired_token() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-expired", &["--token-ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    join_denied(&auth, "is unknown, used or expired", || {
        join_raw(&auth, None, token_init(&t), vec![])
    });
    assert_eq!(instances_of(&auth, "tok-expired"), 0);
}

/// attack: tokens | one token raced by 8 joins on 8 connections at once | exactly one join succeeds; the others "join denied"
#[test]
fn token_raced_across_connections() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-race", &[]);
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let results: Vec<_> = (0..8)
        .map(|_| {
            let (auth, t, b) = (auth.clone(), t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let init = token_init(&t);
                b.wait();
                join_raw(&auth, None, init, vec![])
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::PermissionDenied, "{r:?}");
        assert_eq!(r.message(), "join denied");
    }
    assert_eq!(instances_of(&auth, "tok-race"), 1);
}

/// attack: tokens | the token of a bot removed before it was used | PermissionDenied "join denied"; audited "is unknown, used or expired"; no instance
#[test]
fn token_of_a_removed_bot() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-removed", &[]);
    auth.ok(&["bots", "rm", "tok-removed"]);
    join_denied(&auth, "is unknown, used or expired", || {
        join_raw(&auth, None, token_init(&t), vec![])
    });
    assert_eq!(instances_of(&auth, "tok-removed"), 0);
}

/// attack: tokens | the token of a locked bot | PermissionDenied "join denied"; audited "locked: bot=…"; no instance
#[test]
fn token_of_a_locked_bot() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-locked", &[]);
    auth.ok(&[
        "locks",
        "add",
        "--bot",
        "tok-locked",
        "--message",
        "incident",
    ]);
    join_denied(&auth, "locked: bot=tok-locked", || {
        join_raw(&auth, None, token_init(&t), vec![])
    });
    assert_eq!(instances_of(&auth, "tok-locked"), 0);
}

/// attack: tokens | a garbage token | PermissionDenied "join denied"; audited "is unknown, used or expired"
#[test]
fn garbage_token() {
    let (auth, _g) = auth();
    join_denied(&auth, "is unknown, used or expired", || {
        join_raw(&auth, None, token_init("this-is-no-token-at-all"), vec![])
    });
}

/// attack: tokens | a 1 MB token | InvalidArgument "must start with JoinInit" (the oversized message is not decoded); nothing created
#[test]
fn one_megabyte_token() {
    let (auth, _g) = auth();
    let before = auth.instances().len();
    let big = "A".repeat(1 << 20);
    let r = join_raw(&auth, None, token_init(&big), vec![]);
    // The oversized first message is never decoded: no JoinInit was read.
    refused(r, Code::InvalidArgument, "must start with JoinInit");
    assert_eq!(auth.instances().len(), before);
}

/// attack: tokens | an empty token | PermissionDenied "join denied"; audited "no token presented"
#[test]
fn empty_token() {
    let (auth, _g) = auth();
    join_denied(&auth, "no token presented", || {
        join_raw(&auth, None, token_init(""), vec![])
    });
}

/// attack: tokens | a token with a NUL byte appended | PermissionDenied "join denied"; audited "is unknown, used or expired"; the token still joins
#[test]
fn token_with_a_nul_byte() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-nul", &[]);
    join_denied(&auth, "is unknown, used or expired", || {
        join_raw(&auth, None, token_init(&format!("{t}\0")), vec![])
    });
    join_raw(&auth, None, token_init(&t), vec![]).expect("the real token still joins");
}

/// attack: tokens | a token with its case changed | PermissionDenied "join denied"; audited "is unknown, used or expired"; the token still joins
#[test]
fn token_with_its_case_changed() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-case", &[]);
    let flipped: String = t
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    assert_ne!(flipped, t);
    join_denied(&auth, "is unknown, used or expired", || {
        join_raw(&auth, None, token_init(&flipped), vec![])
    });
    join_raw(&auth, None, token_init(&t), vec![]).expect("the real token still joins");
}

/// attack: tokens | an unknown join method | PermissionDenied "join denied"; audited "unknown join method"
#[test]
fn unknown_join_method() {
    let (auth, _g) = auth();
    let mut init = token_init("whatever");
    init.join_method = "root".into();
    join_denied(&auth, "unknown join method", || {
        join_raw(&auth, None, init, vec![])
    });
}

/// attack: tokens | a secret token sent under a delegated method (oidc) | PermissionDenied "join denied"; audited "is for join method token, not oidc", the secret never in the audit
#[test]
fn secret_token_sent_with_another_method() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-method", &[]);
    let mut init = token_init(&t);
    init.join_method = "oidc".into();
    init.evidence = b"x.y.z".to_vec();
    let ev = join_denied(&auth, "is for join method token, not oidc", || {
        join_raw(&auth, None, init, vec![])
    });
    assert!(
        !ev.to_string().contains(&t),
        "the secret is in the audit: {ev}"
    );
    join_raw(&auth, None, token_init(&t), vec![]).expect("the token still joins");
}

/// attack: tokens | a join stream whose first message is a challenge response | InvalidArgument "must start with JoinInit"
#[test]
fn join_stream_without_init() {
    let (auth, _g) = auth();
    let r = join_messages(
        &auth,
        None,
        vec![JoinClientMessage {
            message: Some(ClientMsg::ChallengeResponse(JoinChallengeResponse {
                payload: b"answer".to_vec(),
            })),
        }],
    );
    refused(r, Code::InvalidArgument, "must start with JoinInit");
}

/// attack: tokens | a join stream closed before any message | InvalidArgument "must start with JoinInit"
#[test]
fn empty_join_stream() {
    let (auth, _g) = auth();
    refused(
        join_messages(&auth, None, vec![]),
        Code::InvalidArgument,
        "must start with JoinInit",
    );
}

/// attack: tokens | a join asking to certify a 1024-bit RSA key | InvalidArgument "an RSA key of 1024 bits"; the token survives for a good key
#[test]
fn join_with_a_weak_key() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-weak", &[]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let der = dir.path().join("k.der");
    let k = key.to_str().unwrap();
    let d = der.to_str().unwrap();
    let rsa = [
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        k,
    ];
    assert!(run("openssl", &rsa).status.success());
    let pubout = ["pkey", "-pubout", "-outform", "DER", "-in", k, "-out", d];
    assert!(run("openssl", &pubout).status.success());
    let init = JoinInit {
        public_key_spki: std::fs::read(der).unwrap(),
        ..token_init(&t)
    };
    refused(
        join_raw(&auth, None, init, vec![]),
        Code::InvalidArgument,
        "an RSA key of 1024 bits",
    );
    assert_eq!(instances_of(&auth, "tok-weak"), 0);
    join_raw(&auth, None, token_init(&t), vec![]).expect("the token still joins");
}

/// attack: tokens | a join asking to certify bytes that are no public key | InvalidArgument "not a DER SubjectPublicKeyInfo"; the token survives
#[test]
fn join_with_a_garbage_key() {
    let (auth, _g) = auth();
    let t = bot_token(&auth, "tok-garbage", &[]);
    let init = JoinInit {
        public_key_spki: b"not a key".to_vec(),
        ..token_init(&t)
    };
    refused(
        join_raw(&auth, None, init, vec![]),
        Code::InvalidArgument,
        "not a DER SubjectPublicKeyInfo",
    );
    assert_eq!(instances_of(&auth, "tok-garbage"), 0);
    join_raw(&auth, None, token_init(&t), vec![]).expect("the token still joins");
}

/// attack: tokens | a token join naming another bot's existing instance id (hijack the instance) | PermissionDenied "join denied"; audited "re-proof without the instance's client certificate"
#[test]
fn token_join_naming_another_instance() {
    let (auth, _g) = auth();
    let victim = bot_token(&auth, "tok-victim", &[]);
    let creds = join_raw(&auth, None, token_init(&victim), vec![]).expect("victim joins");
    let gens = generations(&auth, "tok-victim");
    let t = bot_token(&auth, "tok-hijacker", &[]);
    let init = JoinInit {
        instance_id: creds.instance_id.clone(),
        ..token_init(&t)
    };
    join_denied(
        &auth,
        "re-proof without the instance's client certificate",
        || join_raw(&auth, None, init, vec![]),
    );
    assert_eq!(generations(&auth, "tok-victim"), gens);
}

/// attack: tokens | a join naming another bot's instance id while presenting the attacker's own valid certificate | PermissionDenied "join denied"; audited "the client certificate is for another bot instance"
#[test]
fn join_naming_another_instance_with_own_certificate() {
    let (auth, _g) = auth();
    let victim = bot_token(&auth, "tok-victim2", &[]);
    let creds = join_raw(&auth, None, token_init(&victim), vec![]).expect("victim joins");
    let gens = generations(&auth, "tok-victim2");
    let (_agent, own) = joined(&auth, "tok-attacker2");
    let t = bot_token(&auth, "tok-attacker3", &[]);
    let init = JoinInit {
        instance_id: creds.instance_id.clone(),
        ..token_init(&t)
    };
    join_denied(
        &auth,
        "the client certificate is for another bot instance",
        || join_raw(&auth, Some(&own), init, vec![]),
    );
    assert_eq!(generations(&auth, "tok-victim2"), gens);
}
