//! Hostile resource documents on the raw admin API (past any CLI check) and
//! through the CLI: bombs, nesting, duplicates, size, hostile names. Each is
//! refused with its reason, nothing is stored, and the service stays up.

use crate::common::*;
use crate::harness::*;
use sigil_proto::v1::{CreateResourceRequest, ListResourcesRequest};
use std::sync::Arc;
use tonic::Code;

static AUTH: Slot = Slot::new(None);

fn auth() -> Arc<Auth> {
    shared(&AUTH, || {
        let a = Auth::start();
        a.create(
            "r.yaml",
            "kind: role\nversion: v1\nmetadata: {name: r}\nspec:\n  allow: {logins: [ubuntu]}\n",
        );
        a
    })
}

/// Names of every resource of `kind` (raw, nothing hidden).
fn names(auth: &Auth, kind: &str) -> Vec<String> {
    rt().block_on(async {
        let r = admin_socket(auth)
            .await
            .list_resources(ListResourcesRequest {
                kind: kind.into(),
                filter: String::new(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        r.json
            .iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).expect("json");
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    })
}

/// Sends `doc` to CreateResource on the admin socket; it must be refused with
/// `code` and `says`, store nothing, and leave the service answering.
#[track_caller]
fn refuses(doc: String, code: Code, says: &str) {
    let auth = auth();
    let (roles, bots) = (names(&auth, "role"), names(&auth, "bot"));
    let r = rt().block_on(async {
        admin_socket(&auth)
            .await
            .create_resource(CreateResourceRequest {
                json: doc,
                upsert: true,
            })
            .await
    });
    refused(r, code, says);
    assert_eq!(names(&auth, "role"), roles, "a role was stored");
    assert_eq!(names(&auth, "bot"), bots, "a bot was stored");
    auth.ok(&["status"]);
}

fn role(name_json: &str) -> String {
    format!(
        r#"{{"kind":"role","version":"v1","metadata":{{"name":{name_json}}},"spec":{{"allow":{{"logins":["ubuntu"]}}}}}}"#
    )
}

fn bot(name_json: &str) -> String {
    format!(
        r#"{{"kind":"bot","version":"v1","metadata":{{"name":{name_json}}},"spec":{{"roles":["r"]}}}}"#
    )
}

fn laughs() -> String {
    let mut s = String::from("kind: role\nversion: v1\nmetadata: {name: lol}\nspec:\n");
    s.push_str(
        "  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (n, p) in [
        ("b", "a"),
        ("c", "b"),
        ("d", "c"),
        ("e", "d"),
        ("f", "e"),
        ("g", "f"),
    ] {
        s.push_str(&format!(
            "  {n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        ));
    }
    s
}

/// attack: resources | YAML bomb (billion laughs: nested aliases) | InvalidArgument "YAML anchors and aliases (&name, *name) are not allowed"
#[test]
fn yaml_bomb() {
    refuses(
        laughs(),
        Code::InvalidArgument,
        "YAML anchors and aliases (&name, *name) are not allowed",
    );
}

/// attack: resources | a single YAML alias to a role's spec (no bomb, any alias) | InvalidArgument "YAML anchors and aliases (&name, *name) are not allowed"
#[test]
fn single_yaml_alias() {
    let doc = "kind: role\nversion: v1\nmetadata: {name: ali}\nx: &x {allow: {logins: [root]}}\nspec: *x\n";
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "YAML anchors and aliases (&name, *name) are not allowed",
    );
}

/// attack: resources | 100 000 nested flow sequences | InvalidArgument "nesting is deeper than the limit of 32 levels"
#[test]
fn deep_flow_nesting() {
    refuses(
        "[".repeat(100_000),
        Code::InvalidArgument,
        "nesting is deeper than the limit of 32 levels",
    );
}

/// attack: resources | 50 000 nested JSON objects | InvalidArgument "nesting is deeper than the limit of 32 levels"
#[test]
fn deep_json_nesting() {
    refuses(
        "{\"a\":".repeat(50_000),
        Code::InvalidArgument,
        "nesting is deeper than the limit of 32 levels",
    );
}

/// attack: resources | 1 000 nested YAML block mappings | InvalidArgument "nesting is deeper than the limit of 32 levels"
#[test]
fn deep_block_nesting() {
    let doc: String = (0..1_000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    refuses(
        doc,
        Code::InvalidArgument,
        "nesting is deeper than the limit of 32 levels",
    );
}

/// attack: resources | 2 000 documents in one request | InvalidArgument "2000 documents, over the limit of 1000 per file"
#[test]
fn thousands_of_documents() {
    let doc = "kind: role\nversion: v1\nmetadata: {name: x}\n---\n".repeat(2_000);
    refuses(
        doc,
        Code::InvalidArgument,
        "2000 documents, over the limit of 1000",
    );
}

/// attack: resources | a 10 MB document on the wire | OutOfRange "decoded message length too large" (transport limit)
#[test]
fn ten_megabyte_document() {
    let mut big = String::from(
        "kind: role\nversion: v1\nmetadata: {name: big}\nspec:\n  allow:\n    logins:\n",
    );
    while big.len() < 10 << 20 {
        big.push_str("    - ubuntu\n");
    }
    refuses(big, Code::OutOfRange, "decoded message length too large");
}

/// attack: resources | a document just over 1 MiB (under the transport limit) | InvalidArgument "the limit is 1048576 bytes"
#[test]
fn just_over_one_mebibyte() {
    let mut big = String::from(
        "kind: role\nversion: v1\nmetadata: {name: big}\nspec:\n  allow:\n    logins:\n",
    );
    while big.len() <= (1 << 20) + 100 {
        big.push_str("    - ubuntu\n");
    }
    refuses(big, Code::InvalidArgument, "the limit is 1048576 bytes");
}

/// attack: resources | a 10 MB file through the CLI | exit 2, names the file and the limit, nothing sent
#[test]
fn ten_megabyte_file_via_the_cli() {
    let auth = auth();
    let mut big = String::from(
        "kind: role\nversion: v1\nmetadata: {name: big}\nspec:\n  allow:\n    logins:\n",
    );
    while big.len() < 10 << 20 {
        big.push_str("    - ubuntu\n");
    }
    let f = auth.dir.path().join("big-cli.yaml");
    std::fs::write(&f, big).unwrap();
    let o = auth.admin(&["create", "-f", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("big-cli.yaml") && err.contains("limit"),
        "{err}"
    );
    assert!(!names(&auth, "role").contains(&"big".to_string()));
}

/// attack: resources | duplicate keys: a role's `allow` given twice (the second widening) | InvalidArgument "spec: duplicate field `allow`"
#[test]
fn duplicate_keys() {
    let doc = "kind: role\nversion: v1\nmetadata: {name: dup}\nspec:\n  allow: {logins: [ubuntu]}\n  allow: {logins: [root]}\n";
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "spec: duplicate field `allow`",
    );
}

/// attack: resources | duplicate `metadata.name` keys in JSON | InvalidArgument "metadata: duplicate field `name`"
#[test]
fn duplicate_json_name() {
    let doc = r#"{"kind":"role","version":"v1","metadata":{"name":"a","name":"b"},"spec":{}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "metadata: duplicate field `name`",
    );
}

/// attack: resources | role named with a slash (`a/b`) | InvalidArgument "metadata.name: ... contains character '/' outside [A-Za-z0-9._@-]"
#[test]
fn name_with_a_slash() {
    refuses(
        role("\"a/b\""),
        Code::InvalidArgument,
        "contains character '/' outside [A-Za-z0-9._@-]",
    );
}

/// attack: resources | bot named `..` | InvalidArgument "metadata.name: ... must start with a letter or digit"
#[test]
fn name_dot_dot() {
    refuses(
        bot("\"..\""),
        Code::InvalidArgument,
        "must start with a letter or digit",
    );
}

/// attack: resources | bot named `../x` (path traversal) | InvalidArgument "metadata.name: ... must start with a letter or digit"
#[test]
fn name_path_traversal() {
    refuses(
        bot("\"../x\""),
        Code::InvalidArgument,
        "must start with a letter or digit",
    );
}

/// attack: resources | role name with a NUL byte | InvalidArgument "metadata.name: ... contains a character outside [A-Za-z0-9._@-]"
#[test]
fn name_with_nul() {
    refuses(
        role("\"x\\u0000y\""),
        Code::InvalidArgument,
        "contains a character outside [A-Za-z0-9._@-]",
    );
}

/// attack: resources | bot name with a Cyrillic homoglyph (`аdmin`) | InvalidArgument "metadata.name: ... must start with a letter or digit"
#[test]
fn name_with_a_homoglyph() {
    refuses(
        bot("\"\u{0430}dmin\""),
        Code::InvalidArgument,
        "must start with a letter or digit",
    );
}

/// attack: resources | role name with a right-to-left override | InvalidArgument "metadata.name: ... contains a character outside [A-Za-z0-9._@-]"
#[test]
fn name_with_bidi_override() {
    refuses(
        role("\"x\\u202egnp\""),
        Code::InvalidArgument,
        "contains a character outside [A-Za-z0-9._@-]",
    );
}

/// attack: resources | role name with a terminal escape sequence | InvalidArgument "metadata.name: ... contains a character outside [A-Za-z0-9._@-]"
#[test]
fn name_with_terminal_escape() {
    refuses(
        role("\"x\\u001b[2J\""),
        Code::InvalidArgument,
        "contains a character outside [A-Za-z0-9._@-]",
    );
}

/// attack: resources | role name of 10 000 characters | InvalidArgument "metadata.name: role name is longer than 253 characters"
#[test]
fn very_long_name() {
    refuses(
        role(&format!("\"{}\"", "a".repeat(10_000))),
        Code::InvalidArgument,
        "is longer than 253 characters",
    );
}

/// attack: resources | empty name | InvalidArgument "metadata.name: bot name must not be empty"
#[test]
fn empty_name() {
    refuses(
        bot("\"\""),
        Code::InvalidArgument,
        "bot name must not be empty",
    );
}

/// attack: resources | a login with a zero-width space (`ro\u200Bot` shown as root) | InvalidArgument "spec.allow.logins[0]: ... contains forbidden character U+200B"
#[test]
fn login_with_zero_width_space() {
    let doc = r#"{"kind":"role","version":"v1","metadata":{"name":"zw"},"spec":{"allow":{"logins":["ro\u200bot"]}}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "contains forbidden character U+200B",
    );
}

/// attack: resources | an unknown kind | InvalidArgument "kind: unknown kind \"superuser\""
#[test]
fn unknown_kind() {
    let doc = r#"{"kind":"superuser","version":"v1","metadata":{"name":"x"},"spec":{}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "unknown kind \"superuser\"",
    );
}

/// attack: resources | an unknown version | InvalidArgument "version: unsupported version \"v9\""
#[test]
fn unknown_version() {
    let doc = r#"{"kind":"role","version":"v9","metadata":{"name":"x"},"spec":{}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "unsupported version \"v9\"",
    );
}

/// attack: resources | an unknown field smuggled into a role's spec | InvalidArgument "spec.superuser: unknown field `superuser`"
#[test]
fn unknown_field() {
    let doc = r#"{"kind":"role","version":"v1","metadata":{"name":"uf"},"spec":{"allow":{"logins":["ubuntu"]},"superuser":true}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "spec.superuser: unknown field `superuser`",
    );
}

/// attack: resources | a top-level YAML list instead of a resource | InvalidArgument "expected a resource: a mapping with kind, version, metadata and spec"
#[test]
fn top_level_list() {
    refuses(
        "- kind: role\n- kind: bot\n".into(),
        Code::InvalidArgument,
        "expected a resource: a mapping with kind",
    );
}

/// attack: resources | a TTL past any date the clock can hold (`max_ttl: 99999999999h`) | InvalidArgument "spec.options.max_ttl: ... longer than the limit of 3650d (10 years)"
#[test]
fn overflowing_ttl() {
    let doc = r#"{"kind":"role","version":"v1","metadata":{"name":"longer than the limit of 3650d"},"spec":{"allow":{"logins":["ubuntu"]},"options":{"max_ttl":"99999999999h"}}}"#;
    refuses(
        doc.into(),
        Code::InvalidArgument,
        "longer than the limit of 3650d",
    );
}

/// attack: resources | a bot holding a role that does not exist | FailedPrecondition "role \"no-such-role\" does not exist"
#[test]
fn bot_with_a_missing_role() {
    let doc = r#"{"kind":"bot","version":"v1","metadata":{"name":"ghost"},"spec":{"roles":["no-such-role"]}}"#;
    refuses(
        doc.into(),
        Code::FailedPrecondition,
        "role \"no-such-role\" does not exist",
    );
}
