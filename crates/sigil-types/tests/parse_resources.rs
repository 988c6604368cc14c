//! parse_resources: typed parsing, error locations and field names.

use sigil_types::{AnyResource, JoinMethodKind, LockTarget, parse_resources};
use std::time::Duration;

const ROLE: &str = "\
kind: role
version: v1
metadata:
  name: ci
  labels:
    team: infra
spec:
  allow:
    logins: [ubuntu, deploy]
    node_labels:
      env: prod
      region: [eu-*, us-east-1]
    rules:
      - resources: [bot, token]
        verbs: [list, read]
  deny:
    logins: [root]
  options:
    max_ttl: 2h
";

#[test]
fn parses_a_role() {
    let res = parse_resources(ROLE, "role.yaml").unwrap();
    let [AnyResource::Role(role)] = res.as_slice() else {
        panic!("{res:?}")
    };
    assert_eq!(role.metadata.name, "ci");
    assert_eq!(role.spec.allow.logins, ["ubuntu", "deploy"]);
    assert_eq!(role.spec.allow.node_labels["region"], ["eu-*", "us-east-1"]);
    assert_eq!(role.spec.allow.node_labels["env"], ["prod"]);
    assert_eq!(
        role.spec.options.max_ttl.map(|t| t.0),
        Some(Duration::from_secs(7200))
    );
    assert_eq!(res[0].kind(), "role");
    assert_eq!(res[0].name(), "ci");
    // JSON output round-trips through the parser.
    let json = serde_json::to_string(&res[0].to_json_value().unwrap()).unwrap();
    assert_eq!(parse_resources(&json, "out.json").unwrap(), res);
}

#[test]
fn unknown_field_names_field_and_line() {
    let text = ROLE.replace(
        "    logins: [ubuntu, deploy]",
        "    loginz: [ubuntu, deploy]",
    );
    let err = parse_resources(&text, "role.yaml").unwrap_err();
    assert_eq!(err.line, Some(9), "{err}");
    assert_eq!(err.column, Some(5), "{err}");
    assert!(err.to_string().contains("loginz"), "{err}");
    assert!(
        err.field.as_deref().unwrap_or("").starts_with("spec.allow"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("role.yaml:9:5: spec.allow"),
        "{err}"
    );
}

#[test]
fn wrong_type_for_max_ttl() {
    let text = ROLE.replace("max_ttl: 2h", "max_ttl: [2h]");
    let err = parse_resources(&text, "role.yaml").unwrap_err();
    assert_eq!(err.line, Some(19), "{err}");
    assert!(
        err.field.as_deref().unwrap_or("").contains("max_ttl"),
        "{err}"
    );
    let text = ROLE.replace("max_ttl: 2h", "max_ttl: 2 hours");
    let err = parse_resources(&text, "role.yaml").unwrap_err();
    assert_eq!(err.line, Some(19), "{err}");
    assert_eq!(err.field.as_deref(), Some("spec.options.max_ttl"), "{err}");
    assert!(err.message.contains("2 hours"), "{err}");
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let err = parse_resources(
        "version: v1\nkind: rolez\nmetadata: {name: x}\nspec: {}\n",
        "x.yaml",
    )
    .unwrap_err();
    assert_eq!(err.line, Some(2), "{err}");
    assert_eq!(err.field.as_deref(), Some("kind"));
    for k in ["role", "bot", "token", "lock", "bot_instance"] {
        assert!(err.message.contains(k), "{err}");
    }
    let err = parse_resources("metadata: {name: x}\n", "x.yaml").unwrap_err();
    assert!(err.message.contains("missing field `kind`"), "{err}");
}

#[test]
fn validation_error_points_at_offending_key() {
    let text = ROLE.replace("logins: [root]", "logins: [\"a b\"]");
    let err = parse_resources(&text, "role.yaml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("spec.deny.logins[0]"), "{err}");
    assert_eq!(err.line, Some(17), "{err}");
    let text = ROLE.replace("verbs: [list, read]", "verbs: [list, destroy]");
    let err = parse_resources(&text, "role.yaml").unwrap_err();
    assert_eq!(err.line, Some(15), "{err}");
    assert!(err.message.contains("destroy"), "{err}");
}

const MULTI: &str = "\
# bots and tokens
kind: bot
version: v1
metadata:
  name: deployer
spec:
  roles: [ci]
  max_ttl: 1h
---
kind: token
version: v1
metadata:
  name: 0123abcd
  expires: 2030-01-01T00:00:00Z
spec:
  bot_name: deployer
  join_method: bound_keypair
  bound_keypair:
    onboarding: {initial_public_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx7 bot'}
--- # locks
kind: lock
version: v1
metadata: {name: l1}
spec:
  target: {spiffe_id: 'spiffe://example.org/ci'}
  message: compromised
...
";

#[test]
fn multi_document_yaml() {
    let res = parse_resources(MULTI, "all.yaml").unwrap();
    assert_eq!(
        res.iter().map(|r| r.kind()).collect::<Vec<_>>(),
        ["bot", "token", "lock"]
    );
    let AnyResource::Token(token) = &res[1] else {
        panic!()
    };
    assert_eq!(token.spec.join_method, JoinMethodKind::BoundKeypair);
    assert!(token.metadata.expires.is_some());
    let AnyResource::Lock(lock) = &res[2] else {
        panic!()
    };
    assert_eq!(
        lock.spec.target,
        LockTarget::SpiffeId("spiffe://example.org/ci".into())
    );

    // An error in the third document is reported at its absolute line.
    let bad = MULTI.replace("message: compromised", "mesage: compromised");
    let err = parse_resources(&bad, "all.yaml").unwrap_err();
    assert_eq!(err.line, Some(26), "{err}");
    assert!(err.to_string().contains("mesage"), "{err}");
    // A validation error in the second document points into it.
    let bad = MULTI.replace("bot_name: deployer", "bot_name: \"\"");
    let err = parse_resources(&bad, "all.yaml").unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(16), Some("spec.bot_name")),
        "{err}"
    );
    // The secret token name never appears in errors.
    let bad = MULTI.replace("name: 0123abcd", "name: -0123abcd");
    let err = parse_resources(&bad, "all.yaml").unwrap_err();
    assert!(!err.to_string().contains("0123abcd"), "{err}");
    assert_eq!(err.line, Some(13), "{err}");
}

#[test]
fn json_object_and_array() {
    let obj = r#"{"kind":"bot","version":"v1","metadata":{"name":"b"},"spec":{"roles":["r"]}}"#;
    let res = parse_resources(obj, "b.json").unwrap();
    assert_eq!(res[0].name(), "b");

    let arr = "[\n  {\"kind\":\"bot\",\"version\":\"v1\",\"metadata\":{\"name\":\"a\"},\"spec\":{\"roles\":[\"r\"]}},\n  {\"kind\":\"bot\",\"version\":\"v1\",\"metadata\":{\"name\":\"b\"},\n   \"spec\":{\"roles\":[\"r\"],\"max_tll\":\"1h\"}}\n]";
    let err = parse_resources(arr, "b.json").unwrap_err();
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.to_string().contains("max_tll"), "{err}");
    assert!(
        err.field.as_deref().unwrap_or("").starts_with("spec"),
        "{err}"
    );

    let arr_ok = arr.replace("max_tll", "max_ttl");
    let res = parse_resources(&arr_ok, "b.json").unwrap();
    assert_eq!(res.len(), 2);

    let err = parse_resources("{\"kind\": \"bot\",\n \"version\": \"v1\", \"metadata\": {\"name\": \".x\"}, \"spec\": {\"roles\": [\"r\"]}}", "b.json").unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(2), Some("metadata.name")),
        "{err}"
    );
}

#[test]
fn syntax_errors_and_empty_input() {
    let err = parse_resources("kind: role\nmetadata: [\n", "s.yaml").unwrap_err();
    assert!(err.line.is_some(), "{err}");
    let err = parse_resources("  \n# nothing\n", "s.yaml").unwrap_err();
    assert!(err.message.contains("no resources"), "{err}");
    let err = parse_resources("- a\n- b\n", "s.yaml").unwrap_err();
    assert!(err.message.contains("mapping"), "{err}");
}

#[test]
fn bot_instance_and_heartbeat_parse() {
    let text = "\
kind: bot_instance
version: v1
metadata: {name: 5f3c1d7e-8c36-4d7a-9f35-0c1f1b2a3c4d}
spec:
  bot_name: deployer
  instance_id: 5f3c1d7e-8c36-4d7a-9f35-0c1f1b2a3c4d
  join_method: token
  generation: 3
  heartbeats:
    - {time: '2025-01-01T00:00:00Z', hostname: h, version: 0.1.0, os: linux, uptime_seconds: 5}
";
    let res = parse_resources(text, "bi.yaml").unwrap();
    let AnyResource::BotInstance(bi) = &res[0] else {
        panic!()
    };
    assert_eq!(bi.spec.generation, 3);
    assert_eq!(bi.spec.heartbeats[0].hostname, "h");
    let bad = text.replace("instance_id: 5f3c", "instance_id: zz3c");
    let err = parse_resources(&bad, "bi.yaml").unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(6), Some("spec.instance_id")),
        "{err}"
    );
}

mod limits {
    use proptest::prelude::*;
    use sigil_types::limits::{MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_DOCUMENTS};
    use sigil_types::parse_resources;

    #[test]
    fn limits_are_named_with_the_source() {
        let e = parse_resources(&"[".repeat(100_000), "deep.json").unwrap_err();
        assert_eq!((e.source.as_str(), e.line), ("deep.json", Some(1)));
        assert!(e.message.contains(&format!("limit of {MAX_DEPTH}")), "{e}");
        let e = parse_resources(&"#".repeat(MAX_DOCUMENT_BYTES + 1), "big.yaml").unwrap_err();
        assert!(e.to_string().starts_with("big.yaml: "), "{e}");
        assert!(e.message.contains(&MAX_DOCUMENT_BYTES.to_string()), "{e}");
        let many = "kind: bot\nversion: v1\nmetadata: {name: b}\nspec: {roles: [r]}\n---\n"
            .repeat(MAX_DOCUMENTS + 1);
        let e = parse_resources(&many, "many.yaml").unwrap_err();
        assert!(
            e.message.contains(&format!("limit of {MAX_DOCUMENTS}")),
            "{e}"
        );
        let json_many = format!("[{}{{}}]", "{},".repeat(MAX_DOCUMENTS));
        let e = parse_resources(&json_many, "many.json").unwrap_err();
        assert!(e.message.contains("documents"), "{e}");
        let e = parse_resources("kind: &k bot\n", "a.yaml").unwrap_err();
        assert!(e.message.contains("aliases"), "{e}");
    }

    #[test]
    fn huge_numbers_and_durations_are_refused_not_panicking() {
        for ttl in [
            "18446744073709551615",
            "99999999999999999999999",
            "3651d",
            "-1",
        ] {
            let text = format!(
                "kind: bot\nversion: v1\nmetadata: {{name: b}}\nspec: {{roles: [r], max_ttl: {ttl}}}\n"
            );
            let e = parse_resources(&text, "b.yaml").unwrap_err();
            assert!(e.to_string().contains("spec.max_ttl"), "{ttl}: {e}");
        }
        let text = "kind: lock\nversion: v1\nmetadata: {name: l, expires: \"9999-12-31T23:59:59Z\"}\nspec: {target: {bot: b}}\n";
        parse_resources(text, "l.yaml").unwrap();
        let text = text.replace("9999-12-31", "99999-12-31");
        assert!(parse_resources(&text, "l.yaml").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn parse_never_panics(s in "\\PC{0,600}") {
            let _ = parse_resources(&s, "p.yaml");
        }

        #[test]
        fn parse_never_panics_on_structure(s in "(kind: role\n|version: v1\n|metadata:\n|  name: x\n|spec: |\\[|\\]|\\{|\\}|- |: |'|\"|&a |\\*a |\n|  |#|---\n){0,200}") {
            let _ = parse_resources(&s, "p.yaml");
        }

        #[test]
        fn deep_nesting_is_refused_by_the_limit(depth in (MAX_DEPTH + 1)..200_000usize, open in prop::sample::select(vec!["[", "{\"a\":", "{a: ", "- "])) {
            let text = if open == "- " {
                format!("{}x\n", open.repeat(depth.min(MAX_DOCUMENT_BYTES / 2)))
            } else {
                open.repeat(depth.min(MAX_DOCUMENT_BYTES / open.len()))
            };
            let e = parse_resources(&text, "deep").unwrap_err();
            prop_assert!(e.message.contains("nesting"), "{}", e);
        }
    }
}
