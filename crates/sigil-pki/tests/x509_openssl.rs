//! X.509 issuance checked by the real `openssl` CLI.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sigil_pki::*;

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn text_of(path: &str) -> String {
    let (ok, out, err) = openssl(&["x509", "-noout", "-text", "-in", path], None);
    assert!(ok, "{err}");
    String::from_utf8(out).unwrap()
}

fn verify(ca: &str, leaf: &str, purpose: Option<&str>) -> (bool, String) {
    let mut args = vec!["verify", "-x509_strict", "-CAfile", ca];
    if let Some(p) = purpose {
        args.extend(["-purpose", p]);
    }
    args.push(leaf);
    let (ok, out, err) = openssl(&args, None);
    (ok, format!("{}{err}", String::from_utf8_lossy(&out)))
}

fn identity() -> ClientIdentity {
    ClientIdentity {
        cluster: "prod".into(),
        bot: "ci-bot".into(),
        bot_uid: String::new(),
        instance_id: "5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11".into(),
        roles: vec!["deploy".into(), "read".into()],
        generation: 3,
        renewable: true,
        join_method: "github".into(),
        logins: vec!["ubuntu".into()],
        delegated: false,
        join_attributes: Default::default(),
    }
}

#[test]
fn ca_and_leaves_are_accepted_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem());

    let ca_text = text_of(&ca_path);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(
        ca_text.contains("X509v3 Subject Key Identifier"),
        "{ca_text}"
    );
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
    assert!(
        ca_text.contains("Subject: O = prod, CN = prod client CA, serialNumber = "),
        "{ca_text}"
    );

    let key = TlsKeyPair::generate().unwrap();
    let client = ca
        .issue_client(&key.spki_der(), &identity(), Duration::from_secs(3600))
        .unwrap();
    let client_path = write(dir.path(), "client.pem", &client.pem);
    let (ok, out) = verify(&ca_path, &client_path, Some("sslclient"));
    assert!(ok, "{out}");
    // A client cert must not pass as a server cert.
    let (ok, _) = verify(&ca_path, &client_path, Some("sslserver"));
    assert!(!ok, "client cert accepted for serverAuth");

    let t = text_of(&client_path);
    assert!(t.contains("TLS Web Client Authentication"), "{t}");
    assert!(!t.contains("TLS Web Server Authentication"), "{t}");
    assert!(t.contains("CA:FALSE"), "{t}");
    assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
    assert!(t.contains("Digital Signature"), "{t}");
    assert!(
        t.contains("URI:sigil://prod/bot/ci-bot/5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11"),
        "{t}"
    );
    assert!(t.contains("Subject: O = prod, CN = ci-bot"), "{t}");
    assert!(t.contains(IDENTITY_EXTENSION_OID), "{t}");
    assert!(t.contains("ecdsa-with-SHA256"), "{t}");
    assert!(t.contains("Public-Key: (256 bit)"), "{t}");

    let server_key = TlsKeyPair::generate().unwrap();
    let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let server = ca
        .issue_server(
            &server_key.spki_der(),
            "auth.prod",
            &["auth.example.com".into(), "*.auth.example.com".into()],
            &ips,
            Duration::from_secs(3600),
        )
        .unwrap();
    let server_path = write(dir.path(), "server.pem", &server.pem);
    let (ok, out) = verify(&ca_path, &server_path, Some("sslserver"));
    assert!(ok, "{out}");
    let t = text_of(&server_path);
    assert!(
        t.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{t}"
    );
    assert!(
        t.contains("DNS:auth.example.com, DNS:*.auth.example.com"),
        "{t}"
    );
    assert!(
        t.contains("IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
        "{t}"
    );
    assert!(t.contains("CA:FALSE"), "{t}");
    let (ok, out, err) = openssl(
        &[
            "x509",
            "-noout",
            "-checkhost",
            "auth.example.com",
            "-in",
            &server_path,
        ],
        None,
    );
    assert!(
        ok && String::from_utf8_lossy(&out).contains("does match"),
        "{err}"
    );

    // A leaf from another CA of the same cluster must not verify against this CA.
    let (other, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let foreign = other
        .issue_client(&key.spki_der(), &identity(), Duration::from_secs(60))
        .unwrap();
    let foreign_path = write(dir.path(), "foreign.pem", &foreign.pem);
    let (ok, _) = verify(&ca_path, &foreign_path, None);
    assert!(!ok, "leaf of a different CA verified");
}

#[test]
fn validity_and_serial_match_cert_info() {
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Host, "prod").unwrap();
    let key = TlsKeyPair::generate().unwrap();
    let before = time::OffsetDateTime::now_utc();
    let c = ca
        .issue_server(
            &key.spki_der(),
            "h",
            &["h.example".into()],
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let info = cert_info(&c.der).unwrap();
    assert_eq!(info.serial_hex, c.serial_hex);
    assert_eq!(info.not_after, c.not_after);
    let skew = before - info.not_before;
    assert!(
        skew >= time::Duration::seconds(299) && skew <= time::Duration::seconds(301),
        "{skew}"
    );
    let life = info.not_after - before;
    assert!(
        life > time::Duration::seconds(598) && life <= time::Duration::seconds(600),
        "{life}"
    );
    assert_eq!(info.spki_sha256_hex, key.spki_sha256_hex());
    assert_eq!(
        info.issuer_spki_pin.as_deref(),
        Some(ca.spki_pin().as_str())
    );
    // Serials are random.
    let c2 = ca
        .issue_server(
            &key.spki_der(),
            "h",
            &["h.example".into()],
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    assert_ne!(c.serial_hex, c2.serial_hex);
    // Serial as openssl sees it.
    let (ok, out, _) = openssl(&["x509", "-noout", "-serial"], Some(c.pem.as_bytes()));
    assert!(ok);
    let shown = String::from_utf8(out).unwrap();
    let shown = shown.trim().trim_start_matches("serial=").to_lowercase();
    assert_eq!(
        shown.trim_start_matches('0'),
        c.serial_hex.trim_start_matches('0')
    );
}

#[test]
fn spki_pin_matches_openssl_pipeline() {
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Host, "prod").unwrap();
    let (ok, pubkey_pem, err) = openssl(
        &["x509", "-pubkey", "-noout"],
        Some(ca.cert_pem().as_bytes()),
    );
    assert!(ok, "{err}");
    let (ok, der, err) = openssl(&["pkey", "-pubin", "-outform", "DER"], Some(&pubkey_pem));
    assert!(ok, "{err}");
    let expected = format!("sha256:{}", sha256_hex(&der));
    assert_eq!(ca.spki_pin(), expected);
    assert_eq!(spki_pin_of_cert(ca.cert_der()).unwrap(), expected);
    assert!(ca.spki_pin().starts_with("sha256:") && ca.spki_pin().len() == 7 + 64);
}

#[test]
fn client_identity_round_trips_and_tampering_is_detected() {
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let key = TlsKeyPair::generate().unwrap();
    let id = identity();
    let c = ca
        .issue_client(&key.spki_der(), &id, Duration::from_secs(60))
        .unwrap();
    let (back, info) = read_client_identity(&c.der).unwrap();
    assert_eq!(back, id);
    assert_eq!(info.serial_hex, c.serial_hex);
    assert_eq!(info.spki_sha256_hex, key.spki_sha256_hex());

    // Corrupt the JSON inside the extension: `"generation":3` -> `"generation":x`.
    let needle = b"\"generation\":3";
    let pos = c
        .der
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bad = c.der.clone();
    bad[pos + needle.len() - 1] = b'x';
    let err = read_client_identity(&bad).unwrap_err();
    assert!(
        matches!(err, PkiError::MalformedIdentityExtension(_)),
        "{err}"
    );
    // ...and openssl notices the signature no longer matches.
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem());
    let bad_pem = pem::encode(&pem::Pem::new("CERTIFICATE", bad));
    let bad_path = write(dir.path(), "bad.pem", &bad_pem);
    assert!(!verify(&ca_path, &bad_path, None).0);

    // A server cert has no identity extension.
    let s = ca
        .issue_server(
            &key.spki_der(),
            "h",
            &["h.example".into()],
            &[],
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(matches!(
        read_client_identity(&s.der),
        Err(PkiError::MissingIdentityExtension { .. })
    ));
    assert!(read_client_identity(b"not a cert").is_err());
}

#[test]
fn issuance_rejects_bad_input() {
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let key = TlsKeyPair::generate().unwrap();
    let ttl = Duration::from_secs(60);
    let mut id = identity();
    id.cluster = "other".into();
    assert!(ca.issue_client(&key.spki_der(), &id, ttl).is_err());
    let mut id = identity();
    id.bot = "evil/../bot".into();
    assert!(ca.issue_client(&key.spki_der(), &id, ttl).is_err());
    assert!(matches!(
        ca.issue_client(b"\x30\x03\x02\x01\x01", &identity(), ttl),
        Err(PkiError::InvalidPublicKey(_))
    ));
    let mut spki = key.spki_der();
    spki.push(0);
    assert!(ca.issue_client(&spki, &identity(), ttl).is_err());
    assert!(matches!(
        ca.issue_client(&key.spki_der(), &identity(), Duration::ZERO),
        Err(PkiError::InvalidTtl(_))
    ));
    assert!(matches!(
        ca.issue_client(
            &key.spki_der(),
            &identity(),
            Duration::from_secs(20 * 365 * 86400)
        ),
        Err(PkiError::InvalidTtl(_))
    ));
    assert!(
        ca.issue_server(&key.spki_der(), "h", &["bad name".into()], &[], ttl)
            .is_err()
    );
    assert!(
        ca.issue_server(&key.spki_der(), "h", &[], &[], ttl)
            .is_err()
    );
    assert!(X509Ca::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").is_err());
}

#[test]
fn stored_ca_round_trip_then_issue_and_verify() {
    let (ca, stored) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::DbClient, "prod").unwrap();
    let json = serde_json::to_string(&stored).unwrap();
    assert!(json.contains("\"purpose\":\"db-client\""), "{json}");
    let back: StoredCa = serde_json::from_str(&json).unwrap();
    let loaded = X509Ca::load(&SoftwareKeyManager, &back).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.spki_pin(), ca.spki_pin());
    assert_eq!(loaded.purpose(), CaPurpose::DbClient);

    let key = TlsKeyPair::generate().unwrap();
    let leaf = loaded
        .issue_client(&key.spki_der(), &identity(), Duration::from_secs(60))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem());
    let leaf_path = write(dir.path(), "leaf.pem", &leaf.pem);
    let (ok, out) = verify(&ca_path, &leaf_path, Some("sslclient"));
    assert!(ok, "{out}");

    // Debug of the stored CA never shows the key material.
    let dbg = format!("{back:?}");
    assert!(!dbg.contains(&back.key.material), "{dbg}");

    // A record whose certificate belongs to a different key is refused.
    let (_, other) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::DbClient, "prod").unwrap();
    let mut mixed = back.clone();
    mixed.cert_pem = other.cert_pem.clone();
    assert!(matches!(
        X509Ca::load(&SoftwareKeyManager, &mixed),
        Err(PkiError::KeyMismatch { .. })
    ));
    let mut no_cert = back;
    no_cert.cert_pem = None;
    assert!(X509Ca::load(&SoftwareKeyManager, &no_cert).is_err());
}

#[test]
fn ca_subjects_are_unique() {
    let (a, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "prod").unwrap();
    let (b, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "prod").unwrap();
    let subj = |ca: &X509Ca| {
        let (ok, out, _) = openssl(
            &["x509", "-noout", "-subject"],
            Some(ca.cert_pem().as_bytes()),
        );
        assert!(ok);
        String::from_utf8(out).unwrap()
    };
    assert_ne!(subj(&a), subj(&b));
    let pems = pem_to_ders(&format!("{}{}", a.cert_pem(), b.cert_pem()), "CERTIFICATE").unwrap();
    assert_eq!(pems, vec![a.cert_der().to_vec(), b.cert_der().to_vec()]);
}

#[test]
#[ignore = "prints certificates for manual inspection"]
fn dump() {
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let key = TlsKeyPair::generate().unwrap();
    let c = ca
        .issue_client(&key.spki_der(), &identity(), Duration::from_secs(60))
        .unwrap();
    let (_, out, _) = openssl(&["x509", "-noout", "-text"], Some(ca.cert_pem().as_bytes()));
    println!("{}", String::from_utf8_lossy(&out));
    let (_, out, _) = openssl(&["x509", "-noout", "-text"], Some(c.pem.as_bytes()));
    println!("{}", String::from_utf8_lossy(&out));
}
