//! Tests of `sigil workload-identity`.
use super::*;
use crate::cli::FormatArg;
use crate::error::Failure;
use sigil_proto::v1::{JwtSvid, TrustBundle, WorkloadIdentityDenial, X509Svid};
use std::os::unix::fs::PermissionsExt;

#[test]
fn serials_are_normalised() {
    for (input, want) in [
        ("01:A2:FF", "01a2ff"),
        ("0x01a2ff", "01a2ff"),
        ("0X1A2FF", "01a2ff"),
        ("00001f", "1f"),
        ("1F3A9C", "1f3a9c"),
        ("serial=01A2FF", "01a2ff"),
        (" 7 ", "07"),
    ] {
        assert_eq!(parse_serial(input).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn bad_serials_are_usage_errors_that_explain() {
    for bad in ["", "0", "00:00", "xyz", "0x", "12-34", &"f".repeat(41)] {
        let err = parse_serial(bad).unwrap_err();
        assert_eq!(err.failure, Failure::Usage, "{bad}");
        assert_eq!(err.failure.exit_code(), 2);
        assert!(err.message.contains("in hex"), "{}", err.message);
        assert!(
            err.message
                .contains("openssl x509 -noout -serial -in svid.pem"),
            "{}",
            err.message
        );
    }
}

#[test]
fn attrs() {
    let got = parse_attrs(&[
        "workload.unix.uid=1000".into(),
        "workload.k8s.label=a=b".into(),
        "bot.name=".into(),
    ])
    .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got["workload.unix.uid"], "1000");
    assert_eq!(got["workload.k8s.label"], "a=b");
    assert_eq!(got["bot.name"], "");
    assert!(parse_attrs(&[]).unwrap().is_empty());
    for bad in ["workload.unix.uid", "=1000", " =x"] {
        let err = parse_attrs(&[bad.into()]).unwrap_err();
        assert_eq!(err.failure, Failure::Usage, "{bad}");
        assert!(err.message.contains("--attr"), "{}", err.message);
    }
    let err = parse_attrs(&["a.b=1".into(), "a.b=2".into()]).unwrap_err();
    assert!(err.message.contains("more than once"), "{}", err.message);
}

#[test]
fn revocation_resource_shape() {
    let now = OffsetDateTime::from_unix_timestamp(1_714_564_800).unwrap()
        + time::Duration::milliseconds(250);
    let v = revocation_resource("01:A2:FF", "key leaked", now).unwrap();
    assert_eq!(v["kind"], "workload_identity_x509_revocation");
    assert_eq!(v["version"], "v1");
    assert_eq!(v["metadata"]["name"], "01a2ff");
    assert_eq!(v["spec"]["reason"], "key leaked");
    assert_eq!(v["spec"]["revoked_at"], "2024-05-01T12:00:00Z");
    let spec = v["spec"].as_object().unwrap();
    assert_eq!(spec.len(), 2, "{v}");
    assert_eq!(revocation_text(&v), "revoked serial 01a2ff (key leaked)");

    let err = revocation_resource("nope", "x", now).unwrap_err();
    assert_eq!(err.failure, Failure::Usage);
    for bad in ["", "  ", "two\nlines"] {
        let err = revocation_resource("1f", bad, now).unwrap_err();
        assert_eq!(err.failure, Failure::Usage, "{bad:?}");
        assert!(err.message.contains("--reason"), "{}", err.message);
    }
}

fn issue_args(attrs: &[&str], ttl: Option<&str>, auds: &[&str]) -> WorkloadIdentityIssueArgs {
    WorkloadIdentityIssueArgs {
        name: "payments".into(),
        out: "/tmp/x".into(),
        attrs: attrs.iter().map(|s| s.to_string()).collect(),
        ttl: ttl.map(str::to_string),
        jwt_audiences: auds.iter().map(|s| s.to_string()).collect(),
        format: FormatArg::default(),
    }
}

#[test]
fn issue_request_from_flags() {
    let args = issue_args(&["workload.unix.uid=1000"], Some("1h"), &["aud1", "aud2"]);
    let req = issue_request(&args, vec![1, 2, 3]).unwrap();
    assert_eq!(req.name, "payments");
    assert_eq!(req.attributes["workload.unix.uid"], "1000");
    assert_eq!(req.x509_public_key_spki, [1, 2, 3]);
    assert_eq!(req.jwt_audiences, ["aud1", "aud2"]);
    assert_eq!((req.x509_ttl_seconds, req.jwt_ttl_seconds), (3600, 3600));

    let req = issue_request(&issue_args(&[], None, &[]), vec![1]).unwrap();
    assert_eq!((req.x509_ttl_seconds, req.jwt_ttl_seconds), (0, 0));
    assert!(req.jwt_audiences.is_empty() && req.attributes.is_empty());

    let err = issue_request(&issue_args(&["nokey"], None, &[]), vec![1]).unwrap_err();
    assert_eq!(err.failure, Failure::Usage);
    let err = issue_request(&issue_args(&[], Some("soon"), &[]), vec![1]).unwrap_err();
    assert!(err.message.contains("--ttl"), "{}", err.message);
    let err = issue_request(&issue_args(&[], None, &[""]), vec![1]).unwrap_err();
    assert!(err.message.contains("--jwt-audience"), "{}", err.message);
}

fn issued(crl: &[u8], jwt: bool) -> IssueWorkloadIdentitiesResponse {
    IssueWorkloadIdentitiesResponse {
        x509_svids: vec![X509Svid {
            name: "payments".into(),
            spiffe_id: "spiffe://example.test/svc/payments/1000".into(),
            hint: String::new(),
            cert_der: vec![0x30, 0x03, 1, 2, 3],
            serial_hex: "01a2ff".into(),
            expires_unix: 1_714_564_800,
            chain_der: vec![],
            federates_with: vec![],
        }],
        jwt_svids: if jwt {
            vec![JwtSvid {
                name: "payments".into(),
                spiffe_id: "spiffe://example.test/svc/payments/1000".into(),
                hint: String::new(),
                token: "eyJ.tok.sig".into(),
                expires_unix: 1_714_565_100,
            }]
        } else {
            vec![]
        },
        denials: vec![],
        bundle: Some(TrustBundle {
            trust_domain: "example.test".into(),
            x509_authorities: vec![vec![0x30, 1, 9], vec![0x30, 1, 8]],
            jwt_jwks_json: "{}".into(),
            crl_der: crl.to_vec(),
            sequence: 1,
            revoked_serials: vec![],
            crl_ders: if crl.is_empty() {
                vec![]
            } else {
                // The old CA's too, during a rotation.
                vec![crl.to_vec(), vec![0x30, 1, 7]]
            },
            federated: Default::default(),
        }),
    }
}

#[test]
fn denied_issue_is_exit_3_and_lists_reasons() {
    let resp = IssueWorkloadIdentitiesResponse {
        denials: vec![WorkloadIdentityDenial {
            name: "payments".into(),
            reason: "no allow rule matched".into(),
        }],
        bundle: issued(&[], false).bundle,
        ..Default::default()
    };
    assert_eq!(denial_lines(&resp), ["payments: no allow rule matched"]);
    let err = issued_files("payments", &resp, "KEY").unwrap_err();
    assert_eq!(err.failure, Failure::Denied);
    assert_eq!(err.failure.exit_code(), 3);
    assert!(err.message.contains("\"payments\""), "{}", err.message);
}

#[test]
fn issued_files_and_their_contents() {
    let resp = issued(&[0x30, 0x00], true);
    let out = issued_files("payments", &resp, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let names: Vec<&str> = out.iter().map(|f| f.name).collect();
    assert_eq!(names, [SVID_KEY, SVID_CERT, BUNDLE, CRL, JWT_SVID]);
    let by = |n: &str| out.iter().find(|f| f.name == n).unwrap();
    assert_eq!(by(SVID_KEY).mode, 0o600);
    assert_eq!(by(JWT_SVID).mode, 0o600);
    assert_eq!(by(SVID_CERT).mode, 0o644);
    let text = |n: &str| String::from_utf8(by(n).data.clone()).unwrap();
    assert_eq!(
        sigil_pki::pem_to_ders(&text(SVID_CERT), "CERTIFICATE").unwrap(),
        [vec![0x30, 0x03, 1, 2, 3]]
    );
    assert_eq!(
        sigil_pki::pem_to_ders(&text(BUNDLE), "CERTIFICATE").unwrap(),
        [vec![0x30, 1, 9], vec![0x30, 1, 8]]
    );
    assert_eq!(
        sigil_pki::pem_to_ders(&text(CRL), "X509 CRL").unwrap(),
        [vec![0x30, 0x00], vec![0x30, 1, 7]]
    );
    assert_eq!(text(JWT_SVID), "eyJ.tok.sig\n");

    // No CRL when nothing is revoked, no JWT-SVID without audiences.
    let out = issued_files("payments", &issued(&[], false), "K").unwrap();
    let names: Vec<&str> = out.iter().map(|f| f.name).collect();
    assert_eq!(names, [SVID_KEY, SVID_CERT, BUNDLE]);

    // A response without a bundle is not written half-way.
    let mut no_bundle = issued(&[], false);
    no_bundle.bundle = None;
    assert_eq!(
        issued_files("p", &no_bundle, "K").unwrap_err().failure,
        Failure::Other
    );
}

#[test]
fn write_files_creates_a_private_dir_and_drops_stale_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("svids");
    let full = issued_files("p", &issued(&[0x30, 0], true), "KEY").unwrap();
    let written = write_files(&dir, &full).unwrap();
    assert_eq!(written.len(), 5);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(SVID_KEY)), 0o600);
    assert_eq!(mode(&dir.join(JWT_SVID)), 0o600);
    assert_eq!(std::fs::read_to_string(dir.join(SVID_KEY)).unwrap(), "KEY");

    let small = issued_files("p", &issued(&[], false), "KEY2").unwrap();
    let written = write_files(&dir, &small).unwrap();
    assert_eq!(
        written,
        [dir.join(SVID_KEY), dir.join(SVID_CERT), dir.join(BUNDLE)]
    );
    assert!(!dir.join(CRL).exists() && !dir.join(JWT_SVID).exists());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [BUNDLE, SVID_KEY, SVID_CERT]);
}

#[test]
fn issue_json_and_text() {
    let resp = issued(&[], true);
    let dir = Path::new("/out");
    let written = vec![dir.join(SVID_KEY), dir.join(SVID_CERT)];
    let v = issue_json(&resp, &written);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["expires", "files", "jwt_svids", "serial", "spiffe_id"]
    );
    assert_eq!(v["spiffe_id"], "spiffe://example.test/svc/payments/1000");
    assert_eq!(v["serial"], "01a2ff");
    assert_eq!(v["expires"], "2024-05-01T12:00:00Z");
    assert_eq!(v["files"], json!(["/out/svid.key", "/out/svid.pem"]));
    assert_eq!(
        v["jwt_svids"],
        json!([{"spiffe_id": "spiffe://example.test/svc/payments/1000",
                "expires": "2024-05-01T12:05:00Z"}])
    );
    assert!(!v.to_string().contains("eyJ.tok.sig"), "token leaked: {v}");

    let t = issue_text(&resp, dir, &["aud1".into()]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0],
        "issued spiffe://example.test/svc/payments/1000 (serial 01a2ff, expires \
         2024-05-01T12:00:00Z) into /out"
    );
    assert_eq!(lines.len(), 2, "{t}");
    assert!(lines[1].contains("JWT-SVID"), "{t}");
    assert!(
        lines[1].contains("aud1") && lines[1].contains("/out/jwt_svid"),
        "{t}"
    );
    assert!(!t.contains("eyJ.tok.sig"), "{t}");
}

fn tested(allowed: bool, explanation: &str, template_error: &str) -> TestWorkloadIdentityResponse {
    TestWorkloadIdentityResponse {
        allowed,
        matched_rule: if allowed { 0 } else { -1 },
        explanation: explanation.into(),
        spiffe_id: if allowed {
            "spiffe://example.test/svc/1000".into()
        } else {
            String::new()
        },
        template_error: template_error.into(),
        dns_sans: if allowed {
            vec!["a.internal".into(), "b.internal".into()]
        } else {
            vec![]
        },
    }
}

#[test]
fn test_allowed() {
    let r = tested(true, "allowed by rule 0 (workload.unix.uid=\"1000\")", "");
    assert_eq!(
        test_text(&r),
        "allowed: by rule 0 (workload.unix.uid=\"1000\")\n\
         SPIFFE ID: spiffe://example.test/svc/1000\n\
         DNS SANs: a.internal, b.internal"
    );
    assert_eq!(test_outcome("p", &r), Ok(()));
    let mut r = tested(true, "allowed: the identity has no allow rules", "");
    r.dns_sans.clear();
    assert_eq!(
        test_text(&r),
        "allowed: the identity has no allow rules\nSPIFFE ID: spiffe://example.test/svc/1000"
    );
}

#[test]
fn test_denied_and_template_errors_exit_3() {
    let r = tested(
        false,
        "deny rule 0 matched (workload.unix.uid eq \"0\")",
        "",
    );
    assert_eq!(
        test_text(&r),
        "denied: deny rule 0 matched (workload.unix.uid eq \"0\")"
    );
    let err = test_outcome("p", &r).unwrap_err();
    assert_eq!(err.failure.exit_code(), 3);

    let r = tested(
        false,
        "allowed by rule 1 (x=\"y\")",
        "attribute workload.unix.uid is missing",
    );
    let t = test_text(&r);
    assert!(
        t.starts_with("denied: the rules allow it (by rule 1"),
        "{t}"
    );
    assert!(
        t.ends_with("\ntemplate: attribute workload.unix.uid is missing"),
        "{t}"
    );
    assert!(!t.contains("SPIFFE ID"), "{t}");
    let err = test_outcome("p", &r).unwrap_err();
    assert_eq!(err.failure, Failure::Denied);
    assert!(err.message.contains("template"), "{}", err.message);

    let r = tested(
        false,
        "no allow rule matched: rule 0: attribute x is missing",
        "bad",
    );
    let t = test_text(&r);
    assert_eq!(
        t,
        "denied: no allow rule matched: rule 0: attribute x is missing\ntemplate: bad"
    );
}

#[test]
fn test_json_shape() {
    let v = test_json(&tested(true, "allowed by rule 0 ()", ""));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "allowed",
            "dns_sans",
            "explanation",
            "matched_rule",
            "spiffe_id",
            "template_error"
        ]
    );
    assert_eq!(v["allowed"], true);
    assert_eq!(v["matched_rule"], 0);
    assert_eq!(v["spiffe_id"], "spiffe://example.test/svc/1000");
    assert_eq!(v["dns_sans"], json!(["a.internal", "b.internal"]));
    let v = test_json(&tested(false, "no", "oops"));
    assert_eq!(
        (v["allowed"].clone(), v["matched_rule"].clone()),
        (json!(false), json!(-1))
    );
    assert_eq!(v["template_error"], "oops");
}
