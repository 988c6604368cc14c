//! Real credentials used where they do not belong: an `identity` output's
//! certificate renewing or minting, a renewed certificate's predecessor, the
//! certificate of a removed or locked bot or instance, renewals to weak or
//! garbage keys. Each passes the handshake and is refused by the API with
//! its reason; nothing is issued.

use crate::common::*;
use crate::harness::*;
use sigil_proto::v1::IssueIdentityRequest;
use std::sync::Arc;
use tonic::Code;

static AUTH: Slot = Slot::new(None);

fn auth() -> Arc<Auth> {
    shared(&AUTH, Auth::start)
}

/// Every certificate issued to `bot` (audited), and its instances' generations.
fn issued(auth: &Auth, bot: &str) -> (usize, Vec<u64>) {
    (events_for(auth, "cert.issued", bot), generations(auth, bot))
}

/// The certificate and key of an agent's `identity` output file.
fn identity_output(agent: &AgentDirs) -> Pem {
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.out.join("identity")).expect("identity output"),
    )
    .expect("identity json");
    Pem {
        cert: f["tls_cert_pem"].as_str().expect("cert").to_string(),
        key: f["tls_key_pem"].as_str().expect("key").to_string(),
    }
}

/// attack: certificates | a valid `identity` output certificate used to renew | PermissionDenied "not renewable", audited
#[test]
fn identity_output_certificate_used_to_renew() {
    let auth = auth();
    let (agent, _) = joined(&auth, "cert-output");
    let before = issued(&auth, "cert-output");
    let out = identity_output(&agent);
    assert!(!identity_of(&out.cert).renewable);
    refused(
        renew(&auth, Some(&out)),
        Code::PermissionDenied,
        "not renewable",
    );
    assert_eq!(issued(&auth, "cert-output"), before);
}

/// attack: certificates | a valid `identity` output certificate used to mint another identity | PermissionDenied, nothing issued
#[test]
fn identity_output_certificate_used_to_mint_identities() {
    let auth = auth();
    let (agent, _) = joined(&auth, "cert-mint");
    let before = issued(&auth, "cert-mint");
    let out = identity_output(&agent);
    let r = rt().block_on(async {
        auth_client(&auth, Some(&out))
            .issue_identity(IssueIdentityRequest {
                tls_public_key_spki: sigil_pki::TlsKeyPair::generate().unwrap().spki_der(),
                ssh_public_key: String::new(),
                ttl_seconds: 600,
            })
            .await
    });
    refused(
        r,
        Code::PermissionDenied,
        "cannot request further credentials",
    );
    assert_eq!(issued(&auth, "cert-mint"), before);
}

/// attack: certificates | a renewed certificate's predecessor replayed to renew | PermissionDenied "generation mismatch", instance locked, audited
#[test]
fn predecessor_replayed_after_renewal() {
    let auth = auth();
    let (agent, old) = joined(&auth, "cert-replay");
    let o = agent.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(agent.generation(), 2);
    let before = events_for(&auth, "cert.issued", "cert-replay");
    refused(
        renew(&auth, Some(&old)),
        Code::PermissionDenied,
        "generation mismatch",
    );
    assert_eq!(events_for(&auth, "cert.issued", "cert-replay"), before);
    assert_eq!(
        events_for(&auth, "bot.generation_mismatch", "cert-replay"),
        1
    );
    assert_eq!(generations(&auth, "cert-replay"), vec![2]);
    // The current holder is locked out too: the copy is contained.
    let cur = stored_credential(&agent);
    refused(renew(&auth, Some(&cur)), Code::PermissionDenied, "lock");
}

/// attack: certificates | certificate of a bot removed after it joined | PermissionDenied "renewal denied", audited, nothing issued
#[test]
fn certificate_of_a_removed_bot() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-removed");
    auth.ok(&["bots", "rm", "cert-removed"]);
    let before = events_for(&auth, "cert.issued", "cert-removed");
    let denied = events_for(&auth, "bot.renewal.denied", "cert-removed");
    refused(
        renew(&auth, Some(&cred)),
        Code::PermissionDenied,
        "renewal denied",
    );
    assert_eq!(events_for(&auth, "cert.issued", "cert-removed"), before);
    assert_eq!(
        events_for(&auth, "bot.renewal.denied", "cert-removed"),
        denied + 1
    );
}

/// attack: certificates | certificate of a locked bot | PermissionDenied "locked", nothing issued
#[test]
fn certificate_of_a_locked_bot() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-locked");
    auth.ok(&[
        "locks",
        "add",
        "--bot",
        "cert-locked",
        "--message",
        "incident",
    ]);
    let before = issued(&auth, "cert-locked");
    refused(renew(&auth, Some(&cred)), Code::PermissionDenied, "locked");
    assert_eq!(issued(&auth, "cert-locked"), before);
}

/// attack: certificates | certificate of an instance removed by an admin | PermissionDenied "removed", nothing issued
#[test]
fn certificate_of_a_removed_instance() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-noinst");
    let id = identity_of(&cred.cert).instance_id;
    auth.ok(&["rm", &format!("bot_instance/{id}")]);
    let before = events_for(&auth, "cert.issued", "cert-noinst");
    refused(renew(&auth, Some(&cred)), Code::PermissionDenied, "removed");
    assert_eq!(events_for(&auth, "cert.issued", "cert-noinst"), before);
    assert!(generations(&auth, "cert-noinst").is_empty());
}

/// attack: certificates | renewal asking to certify a 1024-bit RSA key | InvalidArgument "an RSA key of 1024 bits", nothing issued
#[test]
fn renewal_to_a_weak_rsa_key() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-weak");
    let before = issued(&auth, "cert-weak");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let der = dir.path().join("k.der");
    assert!(
        run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                key.to_str().unwrap()
            ]
        )
        .status
        .success()
    );
    assert!(
        run(
            "openssl",
            &[
                "pkey",
                "-pubout",
                "-outform",
                "DER",
                "-in",
                key.to_str().unwrap(),
                "-out",
                der.to_str().unwrap()
            ]
        )
        .status
        .success()
    );
    let spki = std::fs::read(der).unwrap();
    let r = rt().block_on(async {
        auth_client(&auth, Some(&cred))
            .renew(sigil_proto::v1::RenewRequest {
                public_key_spki: spki,
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
    });
    refused(r, Code::InvalidArgument, "an RSA key of 1024 bits");
    assert_eq!(issued(&auth, "cert-weak"), before);
}

/// attack: certificates | renewal asking to certify bytes that are no public key | InvalidArgument "not a DER SubjectPublicKeyInfo", nothing issued
#[test]
fn renewal_to_a_garbage_public_key() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-garbage");
    let before = issued(&auth, "cert-garbage");
    let r = rt().block_on(async {
        auth_client(&auth, Some(&cred))
            .renew(sigil_proto::v1::RenewRequest {
                public_key_spki: vec![0x30, 0x03, 0x02, 0x01, 0x00],
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
    });
    refused(r, Code::InvalidArgument, "not a DER SubjectPublicKeyInfo");
    assert_eq!(issued(&auth, "cert-garbage"), before);
}

/// attack: certificates | renewal asking to certify an Ed25519 SPKI with a 4-byte key and junk inside its SEQUENCE (found by fuzzing) | InvalidArgument "bytes after the key inside the SEQUENCE", nothing issued
#[test]
fn renewal_to_a_malformed_ed25519_key() {
    let auth = auth();
    let (_agent, cred) = joined(&auth, "cert-short-ed");
    let before = issued(&auth, "cert-short-ed");
    let spki = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/x509/crash-c946a30ed9432c1778951ee3d987b95cde4ea7dd"),
    )
    .expect("the fuzz regression input");
    let r = rt().block_on(async {
        auth_client(&auth, Some(&cred))
            .renew(sigil_proto::v1::RenewRequest {
                public_key_spki: spki,
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
    });
    refused(
        r,
        Code::InvalidArgument,
        "bytes after the key inside the SEQUENCE",
    );
    assert_eq!(issued(&auth, "cert-short-ed"), before);
}

/// attack: certificates | Renew called on the owner-only admin socket (no bot identity) | Unimplemented: the socket serves no AuthService
#[test]
fn renewal_over_the_admin_socket() {
    let auth = auth();
    let r = rt().block_on(async {
        let ch = sigil_cli::admin::connect::local_channel(&auth.data)
            .await
            .unwrap();
        sigil_proto::v1::auth_service_client::AuthServiceClient::new(ch)
            .renew(sigil_proto::v1::RenewRequest {
                public_key_spki: sigil_pki::TlsKeyPair::generate().unwrap().spki_der(),
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
    });
    let e = r.expect_err("ACCEPTED a renewal on the admin socket");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}
