use super::*;
use proptest::prelude::*;

fn check(text: &str) -> Result<(), LimitError> {
    check_text(text, Limits::default())
}

#[test]
fn real_resources_pass() {
    let role = "kind: role\nversion: v1\nmetadata:\n  name: ops\n  labels: {team: infra}\nspec:\n  allow:\n    logins: [root, \"ubuntu\"]\n    node_labels:\n      env: ['prod', \"it's\"]\n    rules:\n    - resources: [bot, token]\n      verbs: ['*']\n  options: {max_ttl: 1h}\n";
    check(role).unwrap();
    let json = r#"[{"kind":"bot","version":"v1","metadata":{"name":"b"},"spec":{"roles":["r"]}}]"#;
    check(json).unwrap();
    let block = "kind: token\nspec:\n  key: |\n    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n    *notanalias &nor\n  other: x\n";
    check(block).unwrap();
    let text = "description: say \"hi\" it's a [thing & more * stars\nother: a[\n";
    check(text).unwrap();
}

#[test]
fn size_is_bounded() {
    let big = "a".repeat(MAX_DOCUMENT_BYTES + 1);
    assert!(matches!(check(&big), Err(LimitError::TooLarge { .. })));
    let e = check(&big).unwrap_err().to_string();
    assert!(e.contains(&MAX_DOCUMENT_BYTES.to_string()), "{e}");
}

#[test]
fn flow_depth_is_bounded() {
    let deep = "[".repeat(100_000);
    let e = check(&deep).unwrap_err();
    assert_eq!(
        e,
        LimitError::TooDeep {
            line: 1,
            limit: MAX_DEPTH
        }
    );
    let deep_json = format!("{}{}", "{\"a\":".repeat(40), "}".repeat(40));
    assert!(matches!(check(&deep_json), Err(LimitError::TooDeep { .. })));
    // Just under the limit (the document itself is one level).
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
    check(&ok).unwrap();
    // Flow collections spanning lines keep their depth.
    let lines = "a:\n".to_string() + &"  [\n".repeat(40);
    assert!(matches!(check(&lines), Err(LimitError::TooDeep { .. })));
}

#[test]
fn block_depth_is_bounded() {
    let mut deep = String::new();
    for i in 0..40 {
        deep.push_str(&" ".repeat(i));
        deep.push_str("k:\n");
    }
    assert_eq!(
        check(&deep),
        Err(LimitError::TooDeep {
            line: 33,
            limit: MAX_DEPTH
        })
    );
    let dashes = format!("{}x\n", "- ".repeat(40));
    assert!(matches!(check(&dashes), Err(LimitError::TooDeep { .. })));
    // Block depth plus flow depth.
    let mixed = format!("{}{}", "a:\n  b:\n    c: ", "[".repeat(MAX_DEPTH - 2));
    assert!(matches!(check(&mixed), Err(LimitError::TooDeep { .. })));
}

#[test]
fn quotes_do_not_hide_structure() {
    // A quote inside a plain scalar does not open a string, so the nesting
    // after it is still seen.
    let sneaky = format!("a: x \"\nb: {}", "[".repeat(100));
    assert!(matches!(
        check(&sneaky),
        Err(LimitError::TooDeep { line: 2, .. })
    ));
    let sneaky = format!("a: it's\nb: {}", "[".repeat(100));
    assert!(matches!(check(&sneaky), Err(LimitError::TooDeep { .. })));
    // Inside a real string, brackets are text.
    check(&format!("a: \"{}\"\n", "[".repeat(100))).unwrap();
    check(&format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(100))).unwrap();
}

#[test]
fn anchors_and_aliases_are_refused() {
    for bad in [
        "a: &x [1, 2]\nb: *x\n",
        "- &x 1\n",
        "a: [*x]\n",
        "a: !!str &x v\n",
        "<<: *base\n",
        "a:\n  - *x\n",
    ] {
        assert!(
            matches!(check(bad), Err(LimitError::Alias { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(check("a: 1\nb: *x\n"), Err(LimitError::Alias { line: 2 }));
    for ok in [
        "a: b & c\n",
        "a: '*'\n",
        "a: \"&x\"\n",
        "a: x*y\n",
        "a: 1 * 2\n",
    ] {
        check(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

proptest! {
    #[test]
    fn never_panics(s in "\\PC{0,400}") {
        let _ = check(&s);
    }

    #[test]
    fn never_panics_on_structure(s in "[\\[\\]{}:,'\"\\\\#&*!|> \\n-]{0,400}") {
        let _ = check(&s);
    }
}

#[test]
fn block_scalars_do_not_hide_structure() {
    // Text indented past its owner is text...
    check("- a: |\n    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n").unwrap();
    // ...but a line not indented past the key is scanned as structure.
    let sneaky = format!("- a: |\n {}\n", "[".repeat(100));
    assert!(matches!(
        check(&sneaky),
        Err(LimitError::TooDeep { line: 2, .. })
    ));
}
