//! Imports of intermediate CAs that must be refused, each with an error saying what to
//! change: certificates and keys made with the real `openssl` CLI.

mod org_pki;

use std::time::Duration;

use org_pki::{Alg, CA_EXT, CLUSTER, Issuer, OrgPki, SPIFFE_EXT, cat, hierarchy, verify};
use sigil_pki::*;

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
