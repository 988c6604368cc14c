//! Intermediate CAs under an organisation's root made with the real `openssl` CLI: import
//! (certificate chain + key) and the CSR flow; leaves of every kind an `X509Ca` issues
//! verify with `openssl verify -CAfile root -untrusted chain`, and not against another
//! root; each refusal says what is wrong.

mod org_pki;

use std::path::Path;
use std::time::Duration;

use org_pki::{Alg, CA_EXT, Issuer, OrgPki, cat, openssl, verify};
use sigil_pki::*;

const CLUSTER: &str = "prod";
const SPIFFE_EXT: &str = "basicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign, digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\nsubjectAltName = URI:spiffe://prod\n";

fn identity() -> ClientIdentity {
    ClientIdentity {
        cluster: CLUSTER.into(),
        bot: "ci-bot".into(),
        bot_uid: String::new(),
        instance_id: "5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11".into(),
        roles: vec!["deploy".into()],
        generation: 1,
        renewable: true,
        join_method: "token".into(),
        logins: vec![],
        delegated: false,
        join_attributes: Default::default(),
    }
}

/// Issues one leaf of each kind `ca` can issue, and returns (name, PEM, openssl purpose).
fn leaves(ca: &X509Ca) -> Vec<(&'static str, String, &'static str)> {
    let spki = TlsKeyPair::generate().unwrap().spki_der();
    let ttl = Duration::from_secs(3600);
    let mut out = vec![
        (
            "client",
            ca.issue_client(&spki, &identity(), ttl).unwrap().pem,
            "sslclient",
        ),
        (
            "server",
            ca.issue_server(&spki, "web", &["web.prod.internal".into()], &[], ttl)
                .unwrap()
                .pem,
            "sslserver",
        ),
    ];
    if ca.purpose() == CaPurpose::Spiffe {
        let svid = ca
            .issue_x509_svid(&spki, "spiffe://prod/ns/web", &[], ttl)
            .unwrap();
        out.push(("svid", svid.pem, "sslclient"));
    }
    out
}

fn der_of(path: &Path) -> Vec<u8> {
    pem_to_ders(&std::fs::read_to_string(path).unwrap(), "CERTIFICATE")
        .unwrap()
        .remove(0)
}

/// Root (RSA) → organisation intermediate (P-384, pathlen:1) → the imported CA (P-256).
struct Hierarchy {
    pki: OrgPki,
    root: Issuer,
    org_int: Issuer,
}

fn hierarchy() -> Hierarchy {
    let pki = OrgPki::new();
    let root = pki.root("root", Alg::Rsa);
    let org_int = pki.issue(
        "org-int",
        Alg::P384,
        &root,
        "basicConstraints = critical, CA:TRUE, pathlen:1\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n",
    );
    Hierarchy { pki, root, org_int }
}

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

fn refusal(purpose: CaPurpose, chain: &str, key_pem: &str) -> String {
    let err = import_x509_ca(&SoftwareKeyManager, purpose, CLUSTER, chain, key_pem)
        .expect_err("the import must be refused")
        .to_string();
    // Nothing of the key's PEM body appears in any refusal.
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!err.contains(line), "key material in {err}");
    }
    err
}

#[test]
fn imports_are_refused_with_what_to_fix() {
    let h = hierarchy();
    let pki = &h.pki;
    let good = pki.issue("good", Alg::P256, &h.org_int, SPIFFE_EXT);
    let with_chain = |c: &Issuer| cat(&[&c.cert, &h.org_int.cert, &h.root.cert]);

    // Not a CA.
    let leafish = pki.issue(
        "not-ca",
        Alg::P256,
        &h.org_int,
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n",
    );
    let err = refusal(CaPurpose::Client, &with_chain(&leafish), &leafish.key_pem());
    assert!(err.contains("not a CA") && err.contains("CA:TRUE"), "{err}");

    // A CA whose keyUsage lacks keyCertSign.
    let no_certsign = pki.issue(
        "no-certsign",
        Alg::P256,
        &h.org_int,
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, cRLSign\n",
    );
    let err = refusal(
        CaPurpose::Host,
        &with_chain(&no_certsign),
        &no_certsign.key_pem(),
    );
    assert!(err.contains("keyCertSign"), "{err}");

    // The wrong key.
    let other_key = pki.key("other", Alg::P256);
    let err = refusal(
        CaPurpose::Spiffe,
        &with_chain(&good),
        &std::fs::read_to_string(&other_key).unwrap(),
    );
    assert!(
        err.contains("another key") && err.contains("sha256:"),
        "{err}"
    );

    // Certificates in the wrong order: the key's certificate is not first.
    let reversed = cat(&[&h.root.cert, &h.org_int.cert, &good.cert]);
    let err = refusal(CaPurpose::Spiffe, &reversed, &good.key_pem());
    assert!(
        err.contains("certificate 3") && err.contains("first"),
        "{err}"
    );

    // A chain with a gap (the root directly after the CA the intermediate signed).
    let gap = cat(&[&good.cert, &h.root.cert]);
    let err = refusal(CaPurpose::Spiffe, &gap, &good.key_pem());
    assert!(err.contains("is not issued by certificate 2"), "{err}");

    // A root of the same name but another key: the signature does not verify.
    let fake_pki = OrgPki::new();
    let fake_root = fake_pki.root("root", Alg::Rsa);
    let forged = cat(&[&good.cert, &h.org_int.cert, &fake_root.cert]);
    let err = refusal(CaPurpose::Spiffe, &forged, &good.key_pem());
    assert!(err.contains("signature does not verify"), "{err}");

    // Expired, and expiring within a day: the error gives notAfter.
    let key = pki.key("expired", Alg::P256);
    let cert = pki.issue_dated(
        "expired",
        &key,
        &h.org_int,
        "20200101000000Z",
        "20200201000000Z",
    );
    let expired = Issuer { cert, key };
    let err = refusal(CaPurpose::Client, &with_chain(&expired), &expired.key_pem());
    assert!(err.contains("expired at 2020-02-01T00:00:00Z"), "{err}");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let end = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        soon.year(),
        u8::from(soon.month()),
        soon.day(),
        soon.hour(),
        soon.minute(),
        soon.second()
    );
    let key = pki.key("short", Alg::P256);
    let cert = pki.issue_dated("short", &key, &h.org_int, "20200101000000Z", &end);
    let short = Issuer { cert, key };
    let err = refusal(CaPurpose::Client, &with_chain(&short), &short.key_pem());
    assert!(
        err.contains("less than 24 hours") && err.contains("notAfter"),
        "{err}"
    );

    // Not valid yet.
    let key = pki.key("future", Alg::P256);
    let cert = pki.issue_dated(
        "future",
        &key,
        &h.org_int,
        "20990101000000Z",
        "20991231000000Z",
    );
    let future = Issuer { cert, key };
    let err = refusal(CaPurpose::Client, &with_chain(&future), &future.key_pem());
    assert!(
        err.contains("not valid before 2099-01-01T00:00:00Z"),
        "{err}"
    );

    // An extendedKeyUsage on the CA that leaves the SVIDs' serverAuth out.
    let client_only = pki.issue(
        "eku-client",
        Alg::P256,
        &h.org_int,
        &format!("{CA_EXT}extendedKeyUsage = clientAuth\n"),
    );
    let err = refusal(
        CaPurpose::Spiffe,
        &with_chain(&client_only),
        &client_only.key_pem(),
    );
    assert!(err.contains("serverAuth"), "{err}");
    // ... which a client CA may have.
    import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Client,
        CLUSTER,
        &with_chain(&client_only),
        &client_only.key_pem(),
    )
    .unwrap();

    // pathlen:0 on the organisation's intermediate, with the CA a further level below.
    let pathlen0 = pki.issue(
        "pathlen0",
        Alg::P256,
        &h.root,
        "basicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
    );
    let below = pki.issue("below-pathlen0", Alg::P256, &pathlen0, CA_EXT);
    let chain = cat(&[&below.cert, &pathlen0.cert, &h.root.cert]);
    let err = refusal(CaPurpose::Host, &chain, &below.key_pem());
    assert!(
        err.contains("certificate 2") && err.contains("pathLenConstraint 0"),
        "{err}"
    );
    // openssl agrees that nothing below it would verify.
    let leaf_ca = X509Ca::load(
        &SoftwareKeyManager,
        &import_x509_ca(
            &SoftwareKeyManager,
            CaPurpose::Host,
            CLUSTER,
            &cat(&[&pathlen0.cert, &h.root.cert]),
            &pathlen0.key_pem(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        leaf_ca.is_intermediate(),
        "pathlen:0 itself may issue leaves"
    );

    // A SPIFFE CA with another trust domain's ID, or a path.
    for uri in ["spiffe://other", "spiffe://prod/ca"] {
        let ext = SPIFFE_EXT.replace("URI:spiffe://prod", &format!("URI:{uri}"));
        let c = pki.issue(&format!("uri-{}", uri.len()), Alg::P256, &h.org_int, &ext);
        let err = refusal(CaPurpose::Spiffe, &with_chain(&c), &c.key_pem());
        assert!(
            err.contains(uri) && err.contains("\"spiffe://prod\""),
            "{err}"
        );
    }
    // A SPIFFE CA without cRLSign (Sigil signs the SVID CRL with it).
    let no_crl = pki.issue(
        "no-crlsign",
        Alg::P256,
        &h.org_int,
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n",
    );
    let err = refusal(CaPurpose::Spiffe, &with_chain(&no_crl), &no_crl.key_pem());
    assert!(err.contains("cRLSign"), "{err}");

    // Name constraints that rustls-webpki cannot process.
    let uri_nc = pki.issue(
        "uri-nc",
        Alg::P256,
        &h.org_int,
        &format!("{CA_EXT}nameConstraints = critical, permitted;URI:.prod\n"),
    );
    let err = refusal(CaPurpose::Client, &with_chain(&uri_nc), &uri_nc.key_pem());
    assert!(err.contains("URI name constraint"), "{err}");
    let dn_nc = pki.issue(
        "dn-nc",
        Alg::P256,
        &h.org_int,
        &format!(
            "{CA_EXT}nameConstraints = critical, permitted;dirName:dn_sect\n[dn_sect]\nO = Acme\n"
        ),
    );
    let err = refusal(CaPurpose::Host, &with_chain(&dn_nc), &dn_nc.key_pem());
    assert!(err.contains("directoryName"), "{err}");
    // DNS constraints are left to issuance (documented): accepted here.
    let dns_nc = pki.issue(
        "dns-nc",
        Alg::P256,
        &h.org_int,
        &format!("{CA_EXT}nameConstraints = critical, permitted;DNS:.prod.internal\n"),
    );
    let stored = import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Host,
        CLUSTER,
        &with_chain(&dns_nc),
        &dns_nc.key_pem(),
    )
    .unwrap();
    // ... and enforced there: a name inside verifies, one outside is not issued.
    let ca = X509Ca::load(&SoftwareKeyManager, &stored).unwrap();
    let spki = TlsKeyPair::generate().unwrap().spki_der();
    let ttl = Duration::from_secs(600);
    let inside = ca
        .issue_server(&spki, "web", &["web.prod.internal".into()], &[], ttl)
        .unwrap();
    let untrusted = pki.write("dns-nc-chain.pem", &ca.chain_pem());
    let leaf = pki.write("dns-nc-leaf.pem", &inside.pem);
    let (ok, out) = verify(h.root.cert.to_str().unwrap(), &untrusted, &leaf, &[]);
    assert!(ok, "{out}");
    let err = ca
        .issue_server(&spki, "web", &["web.example.com".into()], &[], ttl)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("web.example.com") && err.contains(".prod.internal"),
        "{err}"
    );
    // A leaf may not outlive the organisation's intermediate (365 days), even when the
    // CA's own certificate runs longer.
    let key = pki.key("long", Alg::P256);
    let cert = pki.issue_dated(
        "long",
        &key,
        &h.org_int,
        "20200101000000Z",
        "20991231000000Z",
    );
    let long = import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Host,
        CLUSTER,
        &with_chain(&Issuer { cert, key }),
        &std::fs::read_to_string(pki.path("long.key")).unwrap(),
    )
    .unwrap();
    let long = X509Ca::load(&SoftwareKeyManager, &long).unwrap();
    let err = long
        .issue_server(
            &spki,
            "web",
            &["web".into()],
            &[],
            Duration::from_secs(400 * 86400),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("outlive its CA"), "{err}");

    // Keys of other algorithms are named, with the one accepted.
    for (alg, name) in [(Alg::Rsa, "RSA"), (Alg::P384, "ECDSA P-384")] {
        let c = pki.issue(
            &format!("alg-{name}").replace(' ', ""),
            alg,
            &h.org_int,
            CA_EXT,
        );
        let err = refusal(CaPurpose::Host, &with_chain(&c), &c.key_pem());
        assert!(
            err.contains(&format!("is {name}")) && err.contains("ECDSA P-256"),
            "{err}"
        );
    }

    // Only X.509 CAs with a chain can be imported.
    for purpose in [CaPurpose::SshUser, CaPurpose::SshHost, CaPurpose::Jwt] {
        let err = refusal(purpose, &with_chain(&good), &good.key_pem());
        assert!(err.contains("cannot be imported"), "{err}");
    }

    // A private key pasted into the chain file is refused without echoing it.
    let pasted = format!("{}{}", with_chain(&good), good.key_pem());
    let err = refusal(CaPurpose::Spiffe, &pasted, &good.key_pem());
    assert!(err.contains("'PRIVATE KEY' block"), "{err}");

    // And the good one is accepted.
    import_x509_ca(
        &SoftwareKeyManager,
        CaPurpose::Spiffe,
        CLUSTER,
        &with_chain(&good),
        &good.key_pem(),
    )
    .unwrap();
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
