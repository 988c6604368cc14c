//! Intermediate CAs under an organisation's root made with the real `openssl` CLI: import
//! (certificate chain + key) and the CSR flow; leaves of every kind an `X509Ca` issues
//! verify with `openssl verify -CAfile root -untrusted chain`, and not against another
//! root. The refusals are in `ca_import_refusals.rs`.

mod org_pki;

use std::path::Path;
use std::time::Duration;

use org_pki::{Alg, CA_EXT, CLUSTER, SPIFFE_EXT, cat, der_of, hierarchy, leaves, openssl, verify};
use sigil_pki::*;

#[test]
fn imported_intermediates_issue_leaves_openssl_verifies_to_the_root() {
    let h = hierarchy();
    let other_root = h.pki.root("other-root", Alg::P256);
    for (purpose, ext) in [
        (CaPurpose::Spiffe, SPIFFE_EXT),
        (CaPurpose::Client, CA_EXT),
        (CaPurpose::Host, CA_EXT),
        (CaPurpose::DbClient, CA_EXT),
    ] {
        let ca_files = h
            .pki
            .issue(&format!("sigil-{purpose}"), Alg::P256, &h.org_int, ext);
        let chain = cat(&[&ca_files.cert, &h.org_int.cert, &h.root.cert]);
        let stored = import_x509_ca(
            &SoftwareKeyManager,
            purpose,
            CLUSTER,
            &chain,
            &ca_files.key_pem(),
        )
        .unwrap();
        assert!(stored.chain_pem.is_some());
        // The record survives JSON (how the store keeps it) and loads.
        let json = serde_json::to_string(&stored).unwrap();
        let stored: StoredCa = serde_json::from_str(&json).unwrap();
        let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
        assert!(ca.is_intermediate());
        assert_eq!(ca.cert_der(), der_of(&ca_files.cert).as_slice());
        assert_eq!(
            ca.chain_ders(),
            &[der_of(&ca_files.cert), der_of(&h.org_int.cert)]
        );
        assert_eq!(ca.trust_anchor_der(), der_of(&h.root.cert).as_slice());

        let untrusted = h
            .pki
            .write(&format!("{purpose}-chain.pem"), &ca.chain_pem());
        let root = h.root.cert.to_str().unwrap();
        for (kind, pem, openssl_purpose) in leaves(&ca) {
            let leaf = h.pki.write(&format!("{purpose}-{kind}.pem"), &pem);
            let (ok, out) = verify(root, &untrusted, &leaf, &["-purpose", openssl_purpose]);
            assert!(ok, "{purpose} {kind}: {out}");
            let (ok, out) = verify(other_root.cert.to_str().unwrap(), &untrusted, &leaf, &[]);
            assert!(!ok, "{purpose} {kind} verified against another root: {out}");
        }
    }
}

#[test]
fn crl_of_an_imported_spiffe_ca_revokes_its_svid() {
    let h = hierarchy();
    let ca_files = h
        .pki
        .issue("sigil-spiffe", Alg::P256, &h.org_int, SPIFFE_EXT);
    let chain = cat(&[&ca_files.cert, &h.org_int.cert, &h.root.cert]);
    let stored = import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Spiffe,
        CLUSTER,
        &chain,
        &ca_files.key_pem(),
    )
    .unwrap();
    let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
    let spki = TlsKeyPair::generate().unwrap().spki_der();
    let svid = ca
        .issue_x509_svid(&spki, "spiffe://prod/web", &[], Duration::from_secs(600))
        .unwrap();
    let leaf = h.pki.write("svid.pem", &svid.pem);
    let untrusted = h.pki.write("chain.pem", &ca.chain_pem());
    let root = h.root.cert.to_str().unwrap();
    let crl = |revoked: &[RevokedSerial]| {
        let der = ca.sign_crl(1, revoked, Duration::from_secs(600)).unwrap();
        let pem = pem::encode(&pem::Pem::new("X509 CRL", der));
        h.pki.write("svid.crl", &pem)
    };
    let path = crl(&[]);
    let (ok, out) = verify(root, &untrusted, &leaf, &["-crl_check", "-CRLfile", &path]);
    assert!(ok, "{out}");
    let path = crl(&[RevokedSerial {
        serial_hex: svid.serial_hex.clone(),
        revoked_at: time::OffsetDateTime::now_utc(),
    }]);
    let (ok, out) = verify(root, &untrusted, &leaf, &["-crl_check", "-CRLfile", &path]);
    assert!(!ok && out.contains("revoked"), "{out}");
}

#[test]
fn without_the_root_the_topmost_certificate_is_the_anchor() {
    let h = hierarchy();
    let ca_files = h
        .pki
        .issue("sigil-spiffe", Alg::P256, &h.org_int, SPIFFE_EXT);
    let chain = cat(&[&ca_files.cert, &h.org_int.cert]);
    let stored = import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Spiffe,
        CLUSTER,
        &chain,
        &ca_files.key_pem(),
    )
    .unwrap();
    let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
    assert_eq!(ca.trust_anchor_der(), der_of(&h.org_int.cert).as_slice());
    assert_eq!(
        ca.chain_ders(),
        &[der_of(&ca_files.cert), der_of(&h.org_int.cert)]
    );
    let (_, pem, _) = leaves(&ca).pop().unwrap();
    let leaf = h.pki.write("leaf.pem", &pem);
    let untrusted = h.pki.write("chain.pem", &ca.chain_pem());
    let anchor = h.org_int.cert.to_str().unwrap();
    let (ok, out) = verify(anchor, &untrusted, &leaf, &["-partial_chain"]);
    assert!(ok, "{out}");
    // And the real root still verifies it, given the intermediate.
    let (ok, out) = verify(h.root.cert.to_str().unwrap(), &untrusted, &leaf, &[]);
    assert!(ok, "{out}");

    // A CA imported directly under the root (one certificate above it: the root).
    let direct = h.pki.issue("direct", Alg::P256, &h.root, CA_EXT);
    let stored = import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Client,
        CLUSTER,
        &cat(&[&direct.cert, &h.root.cert]),
        &direct.key_pem(),
    )
    .unwrap();
    let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
    assert_eq!(ca.chain_ders(), &[der_of(&direct.cert)]);
    assert_eq!(ca.trust_anchor_der(), der_of(&h.root.cert).as_slice());
    assert!(ca.is_intermediate());
    // A generated CA is its own anchor and chain.
    let (own, stored) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Host, CLUSTER).unwrap();
    assert!(stored.chain_pem.is_none() && !own.is_intermediate());
    assert_eq!(own.chain_ders(), &[own.cert_der().to_vec()]);
    assert_eq!(own.trust_anchor_der(), own.cert_der());
    // A record written before chains existed reads as self-signed.
    let mut json: serde_json::Value = serde_json::to_value(&stored).unwrap();
    json.as_object_mut().unwrap().remove("chain_pem");
    let old: StoredCa = serde_json::from_value(json).unwrap();
    assert!(old.chain_pem.is_none());
    X509Ca::load(&SoftwareKeyManager, &old).unwrap();
}

#[test]
fn csr_flow_keeps_the_key_in_the_manager() {
    let h = hierarchy();
    let km = SoftwareKeyManager;
    let (pending, csr_pem) = new_x509_ca_request(&km, CaPurpose::Spiffe, CLUSTER).unwrap();
    let csr = h.pki.write("sigil.csr", &csr_pem);
    let (ok, out, err) = openssl(&["req", "-in", &csr, "-noout", "-text", "-verify"], None);
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{err}");
    assert!(
        text.contains("CA:TRUE") && text.contains("Certificate Sign") && text.contains("O = prod"),
        "{text}"
    );
    let cert = h
        .pki
        .sign_csr("sigil-spiffe", Path::new(&csr), &h.org_int, SPIFFE_EXT);
    let chain = cat(&[&cert, &h.org_int.cert, &h.root.cert]);
    let stored =
        complete_x509_ca_request(&km, CaPurpose::Spiffe, CLUSTER, &pending, &chain).unwrap();
    let ca = X509Ca::load(&km, &stored).unwrap();
    let untrusted = h.pki.write("chain.pem", &ca.chain_pem());
    for (kind, pem, _) in leaves(&ca) {
        let leaf = h.pki.write(&format!("{kind}.pem"), &pem);
        let (ok, out) = verify(h.root.cert.to_str().unwrap(), &untrusted, &leaf, &[]);
        assert!(ok, "{kind}: {out}");
    }
    // A certificate for another key does not complete the request.
    let (other_pending, _) = new_x509_ca_request(&km, CaPurpose::Spiffe, CLUSTER).unwrap();
    let err = complete_x509_ca_request(&km, CaPurpose::Spiffe, CLUSTER, &other_pending, &chain)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another key"), "{err}");
    // Nor does one the organisation issued without CA:TRUE.
    let (pending, csr_pem) = new_x509_ca_request(&km, CaPurpose::Host, CLUSTER).unwrap();
    let csr = h.pki.write("host.csr", &csr_pem);
    let cert = h.pki.sign_csr(
        "sigil-host-leafish",
        Path::new(&csr),
        &h.org_int,
        "basicConstraints = critical, CA:FALSE\n",
    );
    let err = complete_x509_ca_request(
        &km,
        CaPurpose::Host,
        CLUSTER,
        &pending,
        &cat(&[&cert, &h.org_int.cert]),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a CA"), "{err}");
    assert!(new_x509_ca_request(&km, CaPurpose::Jwt, CLUSTER).is_err());
}

#[test]
fn import_into_the_encrypted_manager_seals_loads_and_signs() {
    let h = hierarchy();
    let ca_files = h.pki.issue("sigil-client", Alg::P256, &h.org_int, CA_EXT);
    let chain = cat(&[&ca_files.cert, &h.org_int.cert, &h.root.cert]);
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let km = EncryptedKeyManager::new(&kek).unwrap();
    let stored =
        import_x509_ca(&km, CaPurpose::Client, CLUSTER, &chain, &ca_files.key_pem()).unwrap();
    assert_eq!(stored.key.manager, "encrypted");
    assert_eq!(
        EncryptedKeyManager::sealed_kek_id(&stored.key).as_deref(),
        Some(kek.id())
    );
    // The database record holds no usable key: not the PEM's body, not a software key.
    let body: String = ca_files
        .key_pem()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!stored.key.material.contains(&body[..40]));
    assert!(X509Ca::load(&SoftwareKeyManager, &stored).is_err());
    let other = EncryptedKeyManager::new(&Kek::from_bytes(&[8u8; 32]).unwrap()).unwrap();
    assert!(X509Ca::load(&other, &stored).is_err());
    // Loaded again (a restart), it signs leaves openssl verifies to the root.
    let ca = X509Ca::load(&km, &stored).unwrap();
    let untrusted = h.pki.write("chain.pem", &ca.chain_pem());
    for (kind, pem, _) in leaves(&ca) {
        let leaf = h.pki.write(&format!("{kind}.pem"), &pem);
        let (ok, out) = verify(h.root.cert.to_str().unwrap(), &untrusted, &leaf, &[]);
        assert!(ok, "{kind}: {out}");
    }
    // Sealed for the client CA: the same record as another CA's is refused.
    let mut moved = stored.clone();
    moved.purpose = CaPurpose::Host;
    assert!(X509Ca::load(&km, &moved).is_err());
}

/// The hex digits of the `pub:` block of `openssl pkey -pubin -text` (an EC point).
fn openssl_ec_point(cert: &Path) -> Vec<u8> {
    let (ok, pubkey, err) = openssl(
        &["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
    let (ok, text, err) = openssl(&["pkey", "-pubin", "-noout", "-text"], Some(&pubkey));
    assert!(ok, "{err}");
    let text = String::from_utf8(text).unwrap();
    let hex: String = text
        .lines()
        .skip_while(|l| !l.starts_with("pub:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .flat_map(|l| l.trim().split(':'))
        .collect();
    hex::decode(hex).unwrap()
}

#[test]
fn spiffe_bundle_publishes_an_organisation_root_of_any_algorithm() {
    use base64::Engine as _;
    let b64url = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let h = hierarchy();
    let p384_root = h.pki.root("p384-root", Alg::P384);
    for root in [&h.root, &p384_root] {
        let ca_files = h.pki.issue(
            &format!(
                "sigil-under-{}",
                root.cert.file_stem().unwrap().to_str().unwrap()
            ),
            Alg::P256,
            root,
            SPIFFE_EXT,
        );
        let stored = import_x509_ca(
            &SoftwareKeyManager,
            CaPurpose::Spiffe,
            CLUSTER,
            &cat(&[&ca_files.cert, &root.cert]),
            &ca_files.key_pem(),
        )
        .unwrap();
        let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
        let doc = spiffe_bundle_document(
            &[ca.trust_anchor_der().to_vec()],
            &[],
            1,
            Duration::from_secs(60),
        )
        .unwrap();
        let jwk = &doc["keys"][0];
        assert_eq!(jwk["use"], "x509-svid");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(jwk["x5c"][0].as_str().unwrap())
                .unwrap(),
            der_of(&root.cert)
        );
        if std::ptr::eq(root, &h.root) {
            assert_eq!(jwk["kty"], "RSA");
            let (ok, out, err) = openssl(
                &[
                    "x509",
                    "-noout",
                    "-modulus",
                    "-in",
                    root.cert.to_str().unwrap(),
                ],
                None,
            );
            assert!(ok, "{err}");
            let modulus = String::from_utf8(out).unwrap();
            let modulus = modulus.trim().trim_start_matches("Modulus=");
            assert_eq!(hex::encode_upper(b64url(&jwk["n"])), modulus);
            assert_eq!(b64url(&jwk["e"]), [1, 0, 1]);
        } else {
            assert_eq!((&jwk["kty"], &jwk["crv"]), (&"EC".into(), &"P-384".into()));
            let point = openssl_ec_point(&root.cert);
            assert_eq!(point.len(), 97);
            assert_eq!(b64url(&jwk["x"]), point[1..49]);
            assert_eq!(b64url(&jwk["y"]), point[49..]);
        }
    }
}
