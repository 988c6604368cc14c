//! Client certificates presented to the auth service's gRPC API: forged,
//! out of their validity window, from the wrong CA, shaped wrong, tampered
//! with. A certificate the handshake refuses never reaches the API; one that
//! passes it is refused by the API with its reason, and nothing is issued.
//! (Real credentials of the wrong kind or generation: credentials.rs.)

use crate::common::*;
use crate::harness::*;
use std::sync::Arc;
use tonic::Code;

static AUTH: Slot = Slot::new(None);
static OTHER: Slot = Slot::new(None);

/// The handshake's reasons are logged at debug level.
fn start() -> Auth {
    Auth::start_with_env(&[], &[("SIGIL_LOG", "info,sigil_auth=debug")])
}

fn auth() -> Arc<Auth> {
    shared(&AUTH, start)
}

/// Every certificate issued to `bot` (audited), and its instances' generations.
fn issued(auth: &Auth, bot: &str) -> (usize, Vec<u64>) {
    (events_for(auth, "cert.issued", bot), generations(auth, bot))
}

/// Joins `bot`, then checks a renewal presenting `forged(cred)` is refused at
/// the handshake and nothing new was issued to the bot.
fn handshake_refuses(bot: &str, alert: &str, forged: impl FnOnce(&Auth, &Pem) -> Pem) {
    let auth = auth();
    let (_agent, cred) = joined(&auth, bot);
    let before = issued(&auth, bot);
    let bad = forged(&auth, &cred);
    refused_at_handshake(&auth, &bad, renew(&auth, Some(&bad)), alert);
    assert_eq!(issued(&auth, bot), before, "something was issued");
    // Control: the genuine certificate passes the same handshake.
    assert!(handshake_alert(&auth, &cred).0.starts_with("accepted"));
}

/// attack: certificates | renewal with no client certificate | Unauthenticated "needs a client certificate"
#[test]
fn renewal_without_a_client_certificate() {
    let auth = auth();
    refused(
        renew(&auth, None),
        Code::Unauthenticated,
        "needs a client certificate",
    );
}

/// attack: certificates | forged: the bot's exact identity signed by the attacker's own CA of the same cluster name | TLS handshake refused ("UnknownIssuer")
#[test]
fn forged_identity_from_an_attacker_ca() {
    handshake_refuses("cert-forged", "UnknownIssuer", |_, cred| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let ca = p.self_signed(&key).unwrap();
        forge_leaf((ca.der(), &key), &identity_of(&cred.cert), Forge::default())
    });
}

/// attack: certificates | another CA with the real client CA's exact subject (same name, other key) | TLS handshake refused ("UnknownIssuer": its signature does not verify)
#[test]
fn lookalike_ca_with_the_real_ca_name() {
    handshake_refuses("cert-lookalike", "UnknownIssuer", |auth, cred| {
        let (ca, key) = lookalike_ca(&client_ca(auth).cert_der);
        forge_leaf((&ca, &key), &identity_of(&cred.cert), Forge::default())
    });
}

/// attack: certificates | self-signed leaf carrying the bot's identity extension | TLS handshake refused ("UnknownIssuer")
#[test]
fn self_signed_leaf_with_the_identity() {
    handshake_refuses("cert-selfsigned", "UnknownIssuer", |_, cred| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let id = serde_json::to_vec(&identity_of(&cred.cert)).unwrap();
        let mut v = vec![0x0c, 0x82, (id.len() >> 8) as u8, id.len() as u8];
        v.extend_from_slice(&id);
        let oid: Vec<u64> = sigil_pki::IDENTITY_EXTENSION_OID
            .split('.')
            .map(|a| a.parse().unwrap())
            .collect();
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&oid, v)];
        let c = p.self_signed(&key).unwrap();
        Pem {
            cert: c.pem(),
            key: key.serialize_pem(),
        }
    });
}

/// attack: certificates | expired certificate signed by the real client CA | TLS handshake refused ("certificate expired")
#[test]
fn expired_certificate_from_the_real_ca() {
    handshake_refuses("cert-expired", "certificate expired", |auth, cred| {
        let ca = client_ca(auth);
        let now = time::OffsetDateTime::now_utc();
        let f = Forge {
            not_before: Some(now - time::Duration::hours(2)),
            not_after: Some(now - time::Duration::minutes(10)),
            ..Default::default()
        };
        forge_leaf((&ca.cert_der, &ca.key), &identity_of(&cred.cert), f)
    });
}

/// attack: certificates | not-yet-valid certificate signed by the real client CA | TLS handshake refused ("certificate not valid yet")
#[test]
fn not_yet_valid_certificate_from_the_real_ca() {
    handshake_refuses("cert-future", "certificate not valid yet", |auth, cred| {
        let ca = client_ca(auth);
        let now = time::OffsetDateTime::now_utc();
        let f = Forge {
            not_before: Some(now + time::Duration::hours(1)),
            not_after: Some(now + time::Duration::hours(2)),
            ..Default::default()
        };
        forge_leaf((&ca.cert_der, &ca.key), &identity_of(&cred.cert), f)
    });
}

/// attack: certificates | leaf with CA=true signed by the real client CA | TLS handshake refused ("CaUsedAsEndEntity")
#[test]
fn ca_true_leaf_from_the_real_ca() {
    handshake_refuses("cert-catrue", "CaUsedAsEndEntity", |auth, cred| {
        let ca = client_ca(auth);
        let f = Forge {
            is_ca: true,
            ..Default::default()
        };
        forge_leaf((&ca.cert_der, &ca.key), &identity_of(&cred.cert), f)
    });
}

/// attack: certificates | leaf whose only EKU is serverAuth (clientAuth missing) from the real client CA | TLS handshake refused ("does not allow extended key usage for client authentication")
#[test]
fn server_auth_only_eku_from_the_real_ca() {
    handshake_refuses(
        "cert-eku",
        "does not allow extended key usage for client authentication",
        |auth, cred| {
            let ca = client_ca(auth);
            let f = Forge {
                ekus: Some(vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]),
                ..Default::default()
            };
            forge_leaf((&ca.cert_der, &ca.key), &identity_of(&cred.cert), f)
        },
    );
}

/// attack: certificates | leaf with codeSigning and emailProtection EKUs but no clientAuth | TLS handshake refused ("does not allow extended key usage for client authentication")
#[test]
fn unrelated_ekus_without_client_auth() {
    handshake_refuses(
        "cert-eku2",
        "does not allow extended key usage for client authentication",
        |auth, cred| {
            let ca = client_ca(auth);
            let f = Forge {
                ekus: Some(vec![
                    rcgen::ExtendedKeyUsagePurpose::CodeSigning,
                    rcgen::ExtendedKeyUsagePurpose::EmailProtection,
                ]),
                ..Default::default()
            };
            forge_leaf((&ca.cert_der, &ca.key), &identity_of(&cred.cert), f)
        },
    );
}

/// Joins `bot`, then renews with a leaf the real client CA signed, shaped
/// by `f` and carrying `id(identity)`: it passes the handshake, so the API
/// must refuse it with `code` and `says`; nothing is issued.
fn api_refuses(
    bot: &str,
    f: Forge,
    id: impl FnOnce(sigil_pki::ClientIdentity) -> sigil_pki::ClientIdentity,
    code: Code,
    says: &str,
) {
    let auth = auth();
    let (_agent, cred) = joined(&auth, bot);
    let before = issued(&auth, bot);
    let ca = client_ca(&auth);
    let bad = forge_leaf((&ca.cert_der, &ca.key), &id(identity_of(&cred.cert)), f);
    assert!(handshake_alert(&auth, &bad).0.starts_with("accepted"));
    refused(renew(&auth, Some(&bad)), code, says);
    assert_eq!(issued(&auth, bot), before, "something was issued");
}

/// attack: certificates | a leaf from the real client CA without Sigil's identity extension | Unauthenticated "not a Sigil identity"
#[test]
fn leaf_without_the_identity_extension() {
    let f = Forge {
        identity_extensions: Some(0),
        ..Default::default()
    };
    api_refuses(
        "cert-noext",
        f,
        |i| i,
        Code::Unauthenticated,
        "not a Sigil identity",
    );
}

/// attack: certificates | a leaf from the real client CA with the identity extension twice (two identities to disagree) | Unauthenticated "not a Sigil identity"
#[test]
fn leaf_with_two_identity_extensions() {
    let f = Forge {
        identity_extensions: Some(2),
        ..Default::default()
    };
    api_refuses(
        "cert-twoext",
        f,
        |i| i,
        Code::Unauthenticated,
        "not a Sigil identity",
    );
}

/// attack: certificates | a leaf from the real client CA whose identity names another cluster | Unauthenticated "the identity belongs to another cluster"
#[test]
fn identity_naming_another_cluster() {
    api_refuses(
        "cert-othercl",
        Forge::default(),
        |i| sigil_pki::ClientIdentity {
            cluster: "other.test".into(),
            ..i
        },
        Code::Unauthenticated,
        "the identity belongs to another cluster",
    );
}

/// Flips `from` to `to` (same length) inside the DER of `cred`'s leaf.
fn tampered(cred: &Pem, from: &str, to: &str) -> Pem {
    assert_eq!(from.len(), to.len());
    let mut der = sigil_pki::pem_to_ders(&cred.cert, "CERTIFICATE").unwrap()[0].clone();
    let at = der
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in the certificate"));
    der[at..at + to.len()].copy_from_slice(to.as_bytes());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    Pem {
        cert: format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
        key: cred.key.clone(),
    }
}

/// attack: certificates | real certificate with its SAN URI edited to name another bot | TLS handshake refused ("BadSignature")
#[test]
fn tampered_san_uri() {
    handshake_refuses("cert-san-a", "BadSignature", |_, cred| {
        tampered(cred, "/bot/cert-san-a/", "/bot/cert-san-b/")
    });
}

/// attack: certificates | real certificate with the generation in its identity extension raised | TLS handshake refused ("BadSignature")
#[test]
fn tampered_identity_generation() {
    handshake_refuses("cert-gen", "BadSignature", |_, cred| {
        tampered(cred, "\"generation\":1", "\"generation\":9")
    });
}

/// attack: certificates | real certificate with a role name in its identity extension swapped | TLS handshake refused ("BadSignature")
#[test]
fn tampered_identity_roles() {
    handshake_refuses("cert-role", "BadSignature", |_, cred| {
        tampered(cred, "cert-role-role", "cert-rolx-role")
    });
}

/// An intermediate signed by the real client CA (whose pathlen 0 forbids
/// one) and a leaf under it.
fn under_intermediate(auth: &Auth, cred: &Pem) -> (Pem, String) {
    let ca = client_ca(auth);
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.cert_der.clone().into(), &ca.key).unwrap();
    let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = rcgen::CertificateParams::new(vec![]).unwrap();
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let int = ip.signed_by(&int_key, &issuer).unwrap();
    let leaf = forge_leaf(
        (int.der(), &int_key),
        &identity_of(&cred.cert),
        Forge::default(),
    );
    (leaf, int.pem())
}

/// attack: certificates | truncated chain: a leaf under an intermediate of the real client CA, sent without the intermediate | TLS handshake refused ("UnknownIssuer")
#[test]
fn truncated_chain_without_its_intermediate() {
    handshake_refuses("cert-truncated", "UnknownIssuer", |auth, cred| {
        under_intermediate(auth, cred).0
    });
}

/// attack: certificates | a leaf under an intermediate of the real client CA, chain complete (the CA's pathlen 0 forbids intermediates) | Unauthenticated "not signed by a client CA this cluster trusts now": only the cluster's own client CA may sign identities
#[test]
fn intermediate_below_the_client_ca() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-pathlen");
    let before = issued(&auth, "cert-pathlen");
    let (leaf, int) = under_intermediate(&auth, &cred);
    let bad = Pem {
        cert: format!("{}{}", leaf.cert, int),
        key: leaf.key,
    };
    let denied = events_for(&auth, "bot.renewal.denied", "cert-pathlen");
    refused(
        renew(&auth, Some(&bad)),
        Code::Unauthenticated,
        "not signed by a client CA this cluster trusts now",
    );
    assert_eq!(issued(&auth, "cert-pathlen"), before);
    assert_eq!(
        events_for(&auth, "bot.renewal.denied", "cert-pathlen"),
        denied
    );
}

/// attack: certificates | leaf signed by an intermediate the attacker made under nothing the cluster trusts (chain without its root) | TLS handshake refused ("UnknownIssuer")
#[test]
fn chain_through_an_untrusted_intermediate() {
    handshake_refuses("cert-chain", "UnknownIssuer", |_, cred| {
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut rp = rcgen::CertificateParams::new(vec![]).unwrap();
        rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = rp.self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
        let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ip = rcgen::CertificateParams::new(vec![]).unwrap();
        ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let int = ip.signed_by(&int_key, &root_issuer).unwrap();
        let leaf = forge_leaf(
            (int.der(), &int_key),
            &identity_of(&cred.cert),
            Forge::default(),
        );
        Pem {
            cert: format!("{}{}", leaf.cert, int.pem()),
            key: leaf.key,
        }
    });
}

/// attack: certificates | a real certificate of another cluster with the same cluster name | TLS handshake refused ("UnknownIssuer")
#[test]
fn certificate_of_another_cluster_with_the_same_name() {
    let other = shared(&OTHER, start);
    let (_a, foreign) = joined(&other, "cert-foreign");
    assert_eq!(identity_of(&foreign.cert).cluster, "example.test");
    let auth = auth();
    let (_b, _) = joined(&auth, "cert-foreign");
    let before = issued(&auth, "cert-foreign");
    refused_at_handshake(
        &auth,
        &foreign,
        renew(&auth, Some(&foreign)),
        "UnknownIssuer",
    );
    assert_eq!(issued(&auth, "cert-foreign"), before);
}

/// attack: certificates | a certificate signed by the host CA (serverAuth+clientAuth EKU, as servers get) carrying the bot's identity | TLS handshake refused ("UnknownIssuer": the host CA is not the client CA)
#[test]
fn host_certificate_presented_as_a_client_certificate() {
    let auth = auth();
    // Someone who took a server's certificate and key: sign one with the
    // host CA as the service does (serverAuth+clientAuth EKU).
    let db = auth.data.join("sigil.db");
    let o = run(
        "sqlite3",
        &[
            db.to_str().unwrap(),
            "SELECT CAST(value AS TEXT) FROM kv WHERE key = '/cas/host'",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(v["key"]["material"].as_str().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
    let ca_der =
        sigil_pki::pem_to_ders(v["cert_pem"].as_str().unwrap(), "CERTIFICATE").unwrap()[0].clone();
    let (_agent, cred) = joined(&auth, "cert-hostca");
    let before = issued(&auth, "cert-hostca");
    let f = Forge {
        ekus: Some(vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ]),
        ..Default::default()
    };
    let bad = forge_leaf((&ca_der, &key), &identity_of(&cred.cert), f);
    refused_at_handshake(&auth, &bad, renew(&auth, Some(&bad)), "UnknownIssuer");
    assert_eq!(issued(&auth, "cert-hostca"), before);
}
