//! X.509-SVIDs, CRLs and the SPIFFE trust bundle, checked by the real `openssl` CLI and
//! by parsing the results back with x509-parser.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use sigil_pki::*;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const ID: &str = "spiffe://prod/ns/default/sa/web";

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

fn spiffe_ca() -> X509Ca {
    X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "prod")
        .unwrap()
        .0
}

fn svid(ca: &X509Ca, id: &str) -> IssuedCert {
    let key = TlsKeyPair::generate().unwrap();
    ca.issue_x509_svid(
        &key.spki_der(),
        id,
        &["web.prod.svc".into()],
        Duration::from_secs(3600),
    )
    .unwrap()
}

#[test]
fn svid_verifies_with_openssl_for_client_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = spiffe_ca();
    let cert = svid(&ca, ID);
    let ca_path = write(dir.path(), "ca.pem", ca.cert_pem().as_bytes());
    let leaf_path = write(dir.path(), "leaf.pem", cert.pem.as_bytes());
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl(&[
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            &ca_path,
            &leaf_path,
        ]);
        assert!(ok, "{purpose}: {out}");
    }
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", &leaf_path]);
    assert!(ok, "{text}");
    assert!(text.contains("Subject: O = prod, CN = web"), "{text}");
    assert!(
        text.contains("URI:spiffe://prod/ns/default/sa/web, DNS:web.prod.svc"),
        "{text}"
    );
    // A different spiffe CA of the same cluster does not vouch for it.
    let other = spiffe_ca();
    let other_path = write(dir.path(), "other.pem", other.cert_pem().as_bytes());
    let (ok, _) = openssl(&["verify", "-CAfile", &other_path, &leaf_path]);
    assert!(!ok);
}

#[test]
fn svid_extensions_parse_back_as_the_standard_requires() {
    let ca = spiffe_ca();
    let cert = svid(&ca, ID);
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [ID]);
    assert!(
        san.value
            .general_names
            .contains(&GeneralName::DNSName("web.prod.svc"))
    );

    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    assert!(!leaf.is_ca());

    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());

    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);

    let skid_of = |c: &x509_parser::certificate::X509Certificate<'_>| {
        c.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
    };
    assert!(skid_of(&leaf).is_some_and(|k| !k.is_empty()));
    let akid = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert_eq!(akid, skid_of(&ca_cert));
    assert!(akid.is_some());
    assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());

    // Long last segment: CN is cut to 64 characters, the URI SAN keeps the full ID.
    let long_id = format!("spiffe://prod/{}", "a".repeat(100));
    let c = svid(&ca, &long_id);
    let (_, leaf) = x509_parser::parse_x509_certificate(&c.der).unwrap();
    let cn = leaf.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap().len(), 64);
}

#[test]
fn svid_issuance_refuses_wrong_ca_domain_and_ids() {
    let ca = spiffe_ca();
    let key = TlsKeyPair::generate().unwrap().spki_der();
    let ttl = Duration::from_secs(60);
    for purpose in [CaPurpose::Client, CaPurpose::Host, CaPurpose::Jwt] {
        let (wrong, _) = X509Ca::generate(&SoftwareKeyManager, purpose, "prod").unwrap();
        assert!(
            matches!(
                wrong.issue_x509_svid(&key, ID, &[], ttl),
                Err(PkiError::WrongPurpose { .. })
            ),
            "{purpose}"
        );
    }
    assert!(matches!(
        ca.issue_x509_svid(&key, "spiffe://other/web", &[], ttl),
        Err(PkiError::InvalidName { .. })
    ));
    for bad in [
        "spiffe://prod",
        "spiffe://prod/",
        "spiffe://Prod/web",
        "spiffe://prod/a//b",
        "spiffe://prod/a/../b",
        "spiffe://prod/a?x=1",
        "spiffe://prod/a#f",
        "spiffe://prod:443/a",
        "spiffe://prod/a b",
        "http://prod/web",
        "spiffe:prod/web",
        "",
    ] {
        assert!(ca.issue_x509_svid(&key, bad, &[], ttl).is_err(), "{bad}");
    }
    let too_long = format!("spiffe://prod/{}", "a/".repeat(1100)) + "a";
    assert!(ca.issue_x509_svid(&key, &too_long, &[], ttl).is_err());
    assert!(
        ca.issue_x509_svid(&key, ID, &["bad name".into()], ttl)
            .is_err()
    );
    assert!(matches!(
        ca.issue_x509_svid(b"\x30\x00", ID, &[], ttl),
        Err(PkiError::InvalidPublicKey(_))
    ));
    assert!(ca.issue_x509_svid(&key, ID, &[], Duration::ZERO).is_err());
}

#[test]
fn crl_verifies_and_revokes_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = spiffe_ca();
    let revoked = svid(&ca, "spiffe://prod/revoked");
    let good = svid(&ca, "spiffe://prod/good");
    let crl = ca
        .sign_crl(
            42,
            &[RevokedSerial {
                serial_hex: revoked.serial_hex.clone(),
                revoked_at: time::OffsetDateTime::now_utc(),
            }],
            Duration::from_secs(600),
        )
        .unwrap();
    let ca_path = write(dir.path(), "ca.pem", ca.cert_pem().as_bytes());
    let crl_der_path = write(dir.path(), "crl.der", &crl);
    let crl_pem = pem::encode(&pem::Pem::new("X509 CRL", crl.clone()));
    let crl_path = write(dir.path(), "crl.pem", crl_pem.as_bytes());

    let (ok, out) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl_der_path,
        "-CAfile",
        &ca_path,
        "-noout",
        "-verify",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl_der_path,
        "-noout",
        "-text",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("Version 2"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("42"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");

    let verify = |leaf: &IssuedCert, name: &str| {
        let leaf_path = write(dir.path(), name, leaf.pem.as_bytes());
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            &crl_path,
            "-CAfile",
            &ca_path,
            &leaf_path,
        ])
    };
    let (ok, out) = verify(&revoked, "revoked.pem");
    assert!(!ok, "{out}");
    assert!(out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(&good, "good.pem");
    assert!(ok, "{out}");

    // A CRL is only valid under the CA that signed it.
    let other = spiffe_ca();
    let other_path = write(dir.path(), "other.pem", other.cert_pem().as_bytes());
    let (ok, out) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl_der_path,
        "-CAfile",
        &other_path,
        "-noout",
        "-verify",
    ]);
    assert!(!ok || !out.contains("verify OK"), "{out}");

    // An empty CRL is valid too, and bad serials are refused.
    let empty = ca.sign_crl(43, &[], Duration::from_secs(60)).unwrap();
    let empty_path = write(dir.path(), "empty.der", &empty);
    let (ok, out) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &empty_path,
        "-CAfile",
        &ca_path,
        "-noout",
        "-verify",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    let bad = RevokedSerial {
        serial_hex: "not-hex".into(),
        revoked_at: time::OffsetDateTime::now_utc(),
    };
    assert!(ca.sign_crl(44, &[bad], Duration::from_secs(60)).is_err());
}

#[test]
fn spiffe_bundle_document_members() {
    let x509 = spiffe_ca();
    let (jwt, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Jwt, "prod").unwrap();
    let jwt_spki = jwt.public_key_spki_der();
    let doc = spiffe_bundle_document(
        &[x509.cert_der().to_vec()],
        std::slice::from_ref(&jwt_spki),
        7,
        Duration::from_secs(300),
    )
    .unwrap();
    // Round-trip through text as a bundle endpoint client would see it.
    let doc: serde_json::Value = serde_json::from_str(&doc.to_string()).unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);

    let x = keys[0].as_object().unwrap();
    assert_eq!(x["use"], "x509-svid");
    assert_eq!(x["kty"], "EC");
    assert_eq!(x["crv"], "P-256");
    assert!(!x.contains_key("kid"), "x509-svid JWKs must not carry kid");
    let x5c = x["x5c"].as_array().unwrap();
    assert_eq!(x5c.len(), 1);
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c[0].as_str().unwrap())
        .unwrap();
    assert_eq!(der, x509.cert_der());
    // x/y are the CA certificate's key.
    let ca_jwk = jwk_for_spki(&x509.public_key_spki_der()).unwrap();
    assert_eq!(x["x"], ca_jwk["x"]);
    assert_eq!(x["y"], ca_jwk["y"]);

    let j = keys[1].as_object().unwrap();
    assert_eq!(j["use"], "jwt-svid");
    assert_eq!(j["kid"], jwk_key_id(&jwt_spki).unwrap().as_str());
    assert!(!j.contains_key("x5c"));
    let plain = jwk_for_spki(&jwt_spki).unwrap();
    assert_eq!((&j["x"], &j["y"]), (&plain["x"], &plain["y"]));

    // Leaves are not authorities; empty bundles are fine.
    let leaf = svid(&x509, ID);
    assert!(spiffe_bundle_document(&[leaf.der], &[], 1, Duration::from_secs(1)).is_err());
    let empty = spiffe_bundle_document(&[], &[], 0, Duration::ZERO).unwrap();
    assert_eq!(empty["keys"], serde_json::json!([]));
}
