//! Workload identities: parsing, validation errors, rendering, rule
//! evaluation, selectors and revocations.

use proptest::prelude::*;
use sigil_types::{
    AnyResource, Attributes, Condition, RuleDecision, RuleEntry, SpiffeId, TemplateError,
    WorkloadIdentitySelector, WorkloadIdentitySpec, parse_resources,
};
use std::collections::BTreeMap;
use std::time::Duration;

const WI: &str = "\
kind: workload_identity
version: v1
metadata: {name: payments, labels: {env: prod}}
spec:
  spiffe:
    id: /svc/payments/{{ workload.unix.uid }}
    hint: payments
    x509: {dns_sans: [payments.internal], ttl: 1h}
    jwt: {ttl: 5m, extra_claims: {team: pay}}
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: \"1000\"}]
";

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec_of(text: &str) -> WorkloadIdentitySpec {
    let res = parse_resources(text, "wi.yaml").unwrap();
    let [AnyResource::WorkloadIdentity(wi)] = res.as_slice() else {
        panic!("{res:?}")
    };
    wi.spec.clone()
}

fn cond(attribute: &str, f: impl FnOnce(&mut Condition)) -> Condition {
    let mut c = Condition {
        attribute: attribute.into(),
        ..Default::default()
    };
    f(&mut c);
    c
}

fn entry(conditions: Vec<Condition>) -> RuleEntry {
    RuleEntry { conditions }
}

#[test]
fn parses_and_round_trips() {
    let res = parse_resources(WI, "wi.yaml").unwrap();
    assert_eq!(res[0].kind(), "workload_identity");
    assert_eq!(res[0].name(), "payments");
    let spec = spec_of(WI);
    assert_eq!(spec.spiffe.id, "/svc/payments/{{ workload.unix.uid }}");
    assert_eq!(spec.spiffe.hint, "payments");
    assert_eq!(spec.spiffe.x509.dns_sans, ["payments.internal"]);
    assert_eq!(
        spec.spiffe.x509.ttl.map(|t| t.0),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(spec.spiffe.jwt.extra_claims["team"], "pay");
    assert_eq!(
        spec.rules.allow[0].conditions[0].eq.as_deref(),
        Some("1000")
    );
    // JSON and YAML output parse back to the same resource.
    let json = serde_json::to_string(&res[0].to_json_value().unwrap()).unwrap();
    assert_eq!(parse_resources(&json, "out.json").unwrap(), res);
    let yaml = serde_norway::to_string(&res[0]).unwrap();
    assert_eq!(parse_resources(&yaml, "out.yaml").unwrap(), res, "{yaml}");
    let v = res[0].to_json_value().unwrap();
    assert_eq!(
        v["spec"]["rules"]["allow"][0]["conditions"][0],
        serde_json::json!({"attribute": "workload.unix.uid", "eq": "1000"})
    );
}

#[test]
fn bad_yaml_names_field_and_line() {
    let cases = [
        (
            WI.replace("hint: payments", "hnt: payments"),
            7,
            "spec.spiffe",
            "hnt",
        ),
        (
            WI.replace("eq: \"1000\"}", "eq: \"1000\", glob: \"1*\"}"),
            12,
            "spec.rules.allow[0].conditions[0]",
            "exactly one",
        ),
        (
            WI.replace("{{ workload.unix.uid }}", "{{ foo.bar }}"),
            6,
            "spec.spiffe.id",
            "foo.bar",
        ),
        (
            WI.replace("{{ workload.unix.uid }}", "{{ workload.unix.uid"),
            6,
            "spec.spiffe.id",
            "closing",
        ),
        (
            WI.replace("team: pay", "sub: pay"),
            9,
            "spec.spiffe.jwt.extra_claims.sub",
            "registered",
        ),
        (
            WI.replace("attribute: workload.unix.uid", "attribute: unix.uid"),
            12,
            "spec.rules.allow[0].conditions[0].attribute",
            "workload.",
        ),
        (
            WI.replace("ttl: 5m", "ttl: 30s"),
            9,
            "spec.spiffe.jwt.ttl",
            "1m",
        ),
        (
            WI.replace("ttl: 1h", "ttl: 31d"),
            8,
            "spec.spiffe.x509.ttl",
            "30d",
        ),
        (
            WI.replace("id: /svc", "id: svc"),
            6,
            "spec.spiffe.id",
            "start with '/'",
        ),
        (
            WI.replace("[payments.internal]", "[\"{{ workload.unix.uid }}..x\"]"),
            8,
            "spec.spiffe.x509.dns_sans[0]",
            "DNS",
        ),
    ];
    for (text, line, field, needle) in cases {
        let err = parse_resources(&text, "wi.yaml").unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        assert!(
            err.field.as_deref().unwrap_or("").starts_with(field),
            "{field}: {err}"
        );
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(err.to_string().starts_with("wi.yaml:"), "{err}");
    }
}

#[test]
fn validation_bounds() {
    let mut spec = spec_of(WI);
    spec.rules.allow = vec![entry(vec![]); 1];
    let res = sigil_types::WorkloadIdentity::new(sigil_types::Metadata::named("w"), spec.clone());
    assert_eq!(
        res.validate().unwrap_err().field,
        "spec.rules.allow[0].conditions"
    );
    let c = cond("workload.a", |c| c.eq = Some("x".into()));
    spec.rules.allow = vec![entry(vec![c.clone()]); 65];
    let res = sigil_types::WorkloadIdentity::new(sigil_types::Metadata::named("w"), spec.clone());
    assert_eq!(res.validate().unwrap_err().field, "spec.rules.allow");
    spec.rules.allow = vec![];
    spec.rules.deny = vec![entry(vec![cond("workload.a", |c| c.in_ = Some(vec![]))])];
    let res = sigil_types::WorkloadIdentity::new(sigil_types::Metadata::named("w"), spec.clone());
    assert_eq!(
        res.validate().unwrap_err().field,
        "spec.rules.deny[0].conditions[0].in"
    );
    spec.rules.deny = vec![entry(vec![cond("workload.a", |_| {})])];
    let res = sigil_types::WorkloadIdentity::new(sigil_types::Metadata::named("w"), spec);
    let err = res.validate().unwrap_err();
    assert_eq!(err.field, "spec.rules.deny[0].conditions[0]");
    assert!(err.message.contains("none is set"), "{err}");
}

#[test]
fn renders_identity() {
    let spec = spec_of(WI);
    let r = spec
        .render("example.test", &attrs(&[("workload.unix.uid", "1000")]))
        .unwrap();
    assert_eq!(
        r.spiffe_id.to_string(),
        "spiffe://example.test/svc/payments/1000"
    );
    assert_eq!(r.hint, "payments");
    assert_eq!(r.dns_sans, ["payments.internal"]);
    assert_eq!(r.x509_ttl, Some(Duration::from_secs(3600)));
    assert_eq!(r.jwt_ttl, Some(Duration::from_secs(300)));
    assert_eq!(r.extra_claims["team"], "pay");

    assert_eq!(
        spec.render("example.test", &attrs(&[("workload.unix.gid", "1000")])),
        Err(TemplateError::MissingAttribute("workload.unix.uid".into()))
    );
    for bad in ["..", ".", "a/b", "", "a b", "%2F", "é"] {
        let err = spec
            .render("example.test", &attrs(&[("workload.unix.uid", bad)]))
            .unwrap_err();
        let TemplateError::InvalidValue {
            attribute, value, ..
        } = &err
        else {
            panic!("{bad:?}: {err:?}")
        };
        assert_eq!(
            (attribute.as_str(), value.as_str()),
            ("workload.unix.uid", bad)
        );
        assert!(err.to_string().contains("workload.unix.uid"), "{err}");
    }
    let err = spec
        .render("Example.test", &attrs(&[("workload.unix.uid", "1")]))
        .unwrap_err();
    assert!(
        matches!(err, TemplateError::InvalidResult { .. }),
        "{err:?}"
    );
}

#[test]
fn sigil_paths_are_reserved() {
    // Literally, refused at validation, naming the field.
    let err = parse_resources(
        &WI.replace("/svc/payments/{{ workload.unix.uid }}", "/sigil/bot/admin"),
        "wi.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.spiffe.id") && err.contains("reserved"),
        "{err}"
    );
    // Rendered from attributes: refused when rendered.
    let spec = spec_of(&WI.replace(
        "/svc/payments/{{ workload.unix.uid }}",
        "/{{ workload.unix.uid }}/bot/admin",
    ));
    let err = spec
        .render("example.test", &attrs(&[("workload.unix.uid", "sigil")]))
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(
        spec.render("example.test", &attrs(&[("workload.unix.uid", "sigils")]))
            .is_ok()
    );
}

#[test]
fn renders_templated_dns_sans() {
    let text = WI.replace(
        "[payments.internal]",
        "[\"*.payments.internal\", \"{{ workload.k8s.pod }}.pods.internal\"]",
    );
    let spec = spec_of(&text);
    let a = attrs(&[("workload.unix.uid", "1000"), ("workload.k8s.pod", "web-1")]);
    let r = spec.render("example.test", &a).unwrap();
    assert_eq!(r.dns_sans, ["*.payments.internal", "web-1.pods.internal"]);
    for bad in ["a.b", "*", "", "a_b", &"a".repeat(64)] {
        let a = attrs(&[("workload.unix.uid", "1000"), ("workload.k8s.pod", bad)]);
        let err = spec.render("example.test", &a).unwrap_err();
        assert!(
            matches!(err, TemplateError::InvalidValue { .. }),
            "{bad}: {err:?}"
        );
    }
    // A value that is a label but cannot end one.
    let a = attrs(&[("workload.unix.uid", "1000"), ("workload.k8s.pod", "web-")]);
    let err = spec.render("example.test", &a).unwrap_err();
    assert!(
        matches!(err, TemplateError::InvalidResult { .. }),
        "{err:?}"
    );
}

#[test]
fn referenced_attributes_sorted() {
    let text = WI
        .replace("[payments.internal]", "[\"{{bot.name}}.internal\"]")
        .replace(
            "      - conditions: [{attribute: workload.unix.uid, eq: \"1000\"}]",
            "      - conditions: [{attribute: workload.unix.uid, eq: \"1000\"}]\n    deny:\n      - conditions: [{attribute: join.github.repository, glob: \"evil/*\"}]",
        );
    let names: Vec<String> = spec_of(&text).referenced_attributes().into_iter().collect();
    assert_eq!(
        names,
        ["bot.name", "join.github.repository", "workload.unix.uid"]
    );
}

#[test]
fn evaluates_rules() {
    let mut spec = spec_of(WI);
    let uid = |u: &str| attrs(&[("workload.unix.uid", u), ("bot.name", "ci")]);
    assert_eq!(
        spec.evaluate(&uid("1000")),
        RuleDecision::Allowed {
            rule: Some(0),
            matched: attrs(&[("workload.unix.uid", "1000")]),
        }
    );
    spec.rules
        .allow
        .push(entry(vec![cond("workload.systemd.unit", |c| {
            c.glob = Some("pay-*.service".into())
        })]));
    let RuleDecision::Denied { reason } = spec.evaluate(&uid("1001")) else {
        panic!()
    };
    assert_eq!(
        reason,
        "no allow rule matched: rule 0: workload.unix.uid is \"1001\", wanted eq \"1000\"; rule 1: attribute workload.systemd.unit is missing"
    );
    let mut a = uid("1001");
    a.insert("workload.systemd.unit".into(), "pay-api.service".into());
    assert_eq!(
        spec.evaluate(&a),
        RuleDecision::Allowed {
            rule: Some(1),
            matched: attrs(&[("workload.systemd.unit", "pay-api.service")]),
        }
    );

    // Deny is checked first.
    spec.rules.deny = vec![entry(vec![cond("workload.unix.uid", |c| {
        c.eq = Some("0".into())
    })])];
    spec.rules.allow = vec![];
    assert_eq!(
        spec.evaluate(&uid("0")),
        RuleDecision::Denied {
            reason: "deny rule 0 matched (workload.unix.uid eq \"0\")".into()
        }
    );
    assert_eq!(
        spec.evaluate(&uid("5")),
        RuleDecision::Allowed {
            rule: None,
            matched: Attributes::new()
        }
    );
    // A deny condition on a missing attribute does not match.
    assert!(spec.evaluate(&attrs(&[])).is_allowed());
}

#[test]
fn operators_and_missing_attributes() {
    let a = attrs(&[("workload.x", "b")]);
    let holds = |f: fn(&mut Condition)| cond("workload.x", f).holds(&a);
    let missing = |f: fn(&mut Condition)| cond("workload.y", f).holds(&a);
    assert!(holds(|c| c.eq = Some("b".into())));
    assert!(!holds(|c| c.eq = Some("B".into())));
    assert!(holds(|c| c.not_eq = Some("a".into())));
    assert!(!holds(|c| c.not_eq = Some("b".into())));
    assert!(holds(|c| c.in_ = Some(vec!["a".into(), "b".into()])));
    assert!(!holds(|c| c.in_ = Some(vec!["b*".into()])));
    assert!(holds(|c| c.not_in = Some(vec!["a".into()])));
    assert!(!holds(|c| c.not_in = Some(vec!["b".into()])));
    assert!(holds(|c| c.glob = Some("?".into())));
    assert!(!holds(|c| c.glob = Some("a*".into())));
    // Fail closed: a missing attribute satisfies nothing, not even not_eq / not_in.
    assert!(!missing(|c| c.not_eq = Some("a".into())));
    assert!(!missing(|c| c.not_in = Some(vec!["a".into()])));
    assert!(!missing(|c| c.glob = Some("*".into())));
    // Two operators never hold, and evaluation refuses.
    assert!(!holds(|c| {
        c.eq = Some("b".into());
        c.glob = Some("*".into());
    }));
    let mut spec = WorkloadIdentitySpec::default();
    spec.rules.allow = vec![entry(vec![cond("workload.x", |c| {
        c.eq = Some("b".into());
        c.not_eq = Some("c".into());
    })])];
    assert!(!spec.evaluate(&a).is_allowed());
}

#[test]
fn selector_by_name_and_labels() {
    let by_name: WorkloadIdentitySelector = serde_norway::from_str("{name: payments}").unwrap();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(by_name.validate().is_ok());
    assert!(by_name.matches("payments", &labels(&[])));
    assert!(!by_name.matches("payments-2", &labels(&[])));

    let by_labels: WorkloadIdentitySelector =
        serde_norway::from_str("labels: {env: [prod, stag*], team: pay}").unwrap();
    assert!(by_labels.validate().is_ok());
    assert!(by_labels.matches("x", &labels(&[("env", "staging"), ("team", "pay")])));
    assert!(by_labels.matches(
        "y",
        &labels(&[("env", "prod"), ("team", "pay"), ("o", "1")])
    ));
    assert!(!by_labels.matches("x", &labels(&[("env", "dev"), ("team", "pay")])));
    assert!(!by_labels.matches("x", &labels(&[("env", "prod")])));

    let both: WorkloadIdentitySelector =
        serde_json::from_str(r#"{"name":"a","labels":{"env":"prod"}}"#).unwrap();
    assert_eq!(both.validate().unwrap_err().field, "name");
    let none = WorkloadIdentitySelector::default();
    assert!(none.validate().is_err());
    assert!(!none.matches("a", &labels(&[])));
    let bad_name = WorkloadIdentitySelector::by_name("a b");
    assert_eq!(bad_name.validate().unwrap_err().field, "name");
    let empty_values: WorkloadIdentitySelector =
        serde_json::from_str(r#"{"labels":{"env":[]}}"#).unwrap();
    assert_eq!(empty_values.validate().unwrap_err().field, "labels.env");
    assert!(serde_json::from_str::<WorkloadIdentitySelector>(r#"{"nme":"a"}"#).is_err());
    assert_eq!(
        serde_json::to_string(&by_name).unwrap(),
        r#"{"name":"payments"}"#
    );
}

#[test]
fn revocation_parses() {
    let text = "\
kind: workload_identity_x509_revocation
version: v1
metadata: {name: 1f3a9c}
spec:
  reason: key leaked
  revoked_at: 2025-01-01T00:00:00Z
";
    let res = parse_resources(text, "r.yaml").unwrap();
    let [AnyResource::WorkloadIdentityX509Revocation(r)] = res.as_slice() else {
        panic!("{res:?}")
    };
    assert_eq!(r.spec.reason, "key leaked");
    let json = serde_json::to_string(&res[0].to_json_value().unwrap()).unwrap();
    assert_eq!(parse_resources(&json, "r.json").unwrap(), res);
    let err = parse_resources(&text.replace("1f3a9c", "001F"), "r.yaml").unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(3), Some("metadata.name")),
        "{err}"
    );
    let err = parse_resources(&text.replace("key leaked", "\"\""), "r.yaml").unwrap_err();
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(5), Some("spec.reason")),
        "{err}"
    );
    assert!(sigil_types::RULE_RESOURCES.contains(&"workload_identity_x509_revocation"));
    for k in ["workload_identity", "workload_identity_x509_revocation"] {
        assert!(sigil_types::KNOWN_KINDS.contains(&k));
    }
}

proptest! {
    #[test]
    fn render_yields_valid_ids(
        a in prop_oneof!["[A-Za-z0-9._-]{0,8}", "\\PC{0,8}", Just("..".to_string())],
        b in prop_oneof!["[A-Za-z0-9._-]{0,8}", "\\PC{0,8}", Just("a/b".to_string())],
        literal in "[a-z]{1,4}",
    ) {
        let mut spec = WorkloadIdentitySpec::default();
        spec.spiffe.id = format!("/{literal}/{{{{ workload.a }}}}/x{{{{workload.b}}}}");
        let template_segments = spec.spiffe.id.split('/').count() - 1;
        let attributes = attrs(&[("workload.a", &a), ("workload.b", &b)]);
        match spec.render("example.test", &attributes) {
            Err(_) => {}
            Ok(r) => {
                let parsed = SpiffeId::parse(&r.spiffe_id.to_string()).unwrap();
                prop_assert_eq!(parsed.segments().count(), template_segments);
                prop_assert_eq!(&parsed, &r.spiffe_id);
                prop_assert_eq!(parsed.path(), format!("/{literal}/{a}/x{b}"));
            }
        }
    }
}
