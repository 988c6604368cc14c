//! `Pkcs11KeyManager` against a real SoftHSM2 token (Debian `softhsm2`) in a temp dir:
//! CA keys are made on the token, sign there (checked by aws-lc-rs and openssl) and cannot
//! be read out.
//!
//! One test function: SoftHSM reads SOFTHSM2_CONF once, when the module is initialised,
//! and a PKCS#11 module is initialised once per process.

use std::path::Path;
use std::process::Command;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sigil_pki::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "sigil-test";
const PIN: &str = "user-pin-1234";

fn init_token(dir: &Path) {
    assert!(
        Path::new(MODULE).exists(),
        "{MODULE} is missing: install softhsm2 (scripts/test does)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // SAFETY: set before any thread of this test binary loads the module or reads the
    // environment (this is the binary's only test).
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let o = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", LABEL, "--pin", PIN])
        .args(["--so-pin", "so-pin-5678"])
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn ca_keys_on_softhsm_sign_and_never_leave_the_token() {
    let dir = tempfile::tempdir().unwrap();
    init_token(dir.path());
    let module = Path::new(MODULE);

    let err = Pkcs11KeyManager::open(module, "no-such-token", PIN)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no-such-token") && err.contains(LABEL),
        "{err}"
    );
    let err = Pkcs11KeyManager::open(module, LABEL, "wrong-pin")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("PIN") && !err.contains("wrong-pin"), "{err}");

    let km = Pkcs11KeyManager::open(module, LABEL, PIN).unwrap();
    assert!(km.supports_ed25519(), "Debian's SoftHSM2 has CKM_EDDSA");

    // X.509 CA: openssl accepts the self-signed certificate the token signed (DER ECDSA).
    let (ca, stored) = X509Ca::generate(&km, CaPurpose::Client, "prod").unwrap();
    assert_eq!(stored.key.manager, "pkcs11");
    assert!(
        stored.key.material.contains(LABEL),
        "{:?}",
        stored.key.material
    );
    let pem_path = dir.path().join("ca.pem");
    std::fs::write(&pem_path, ca.cert_pem()).unwrap();
    let p = pem_path.to_str().unwrap();
    let v = Command::new("openssl")
        .args(["verify", "-CAfile", p, p])
        .output()
        .expect("openssl");
    assert!(
        v.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // Loaded again from the record (a restart), it signs what aws-lc-rs verifies.
    let reloaded = X509Ca::load(&km, &stored).unwrap();
    assert_eq!(reloaded.cert_pem(), ca.cert_pem());
    let ctx = KeyContext::ca("prod", CaPurpose::Client);
    let key = km.load(&ctx, &stored.key).unwrap();
    let sig = key.sign(b"to be signed").unwrap();
    let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key_raw());
    pk.verify(b"to be signed", &sig).unwrap();
    assert!(pk.verify(b"to be signed!", &sig).is_err());

    // SSH CA: Ed25519 on the token.
    let (ssh, ssh_stored) = SshCa::generate(&km, CaPurpose::SshUser, "prod").unwrap();
    assert!(ssh.public_key_openssh().starts_with("ssh-ed25519 "));
    let ed = km
        .load(&KeyContext::ca("prod", CaPurpose::SshUser), &ssh_stored.key)
        .unwrap();
    let sig = ed.sign(b"ssh").unwrap();
    assert_eq!(sig.len(), 64);
    UnparsedPublicKey::new(&ED25519, ed.public_key_raw())
        .verify(b"ssh", &sig)
        .unwrap();
    SshCa::load(&km, &ssh_stored).unwrap();

    // A record moved to another CA is refused by the label the token holds.
    let err = km
        .load(&KeyContext::ca("prod", CaPurpose::Host), &stored.key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sigil prod client"), "{err}");
    // So is a record naming another token, with the flag to pass.
    let mut elsewhere = stored.key.clone();
    elsewhere.material = elsewhere.material.replace(LABEL, "other-token");
    let err = km.load(&ctx, &elsewhere).err().unwrap().to_string();
    assert!(err.contains("--hsm-token-label \"other-token\""), "{err}");

    // The private keys cannot be read out: CKA_VALUE is sensitive, and the keys were
    // never extractable.
    let lib = Pkcs11::new(module).unwrap();
    match lib.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = lib
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| lib.get_token_info(*s).unwrap().label().trim() == LABEL)
        .unwrap();
    let session = lib.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new(PIN.into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 2, "one key per CA generated");
    for k in keys {
        let info = session
            .get_attribute_info(k, &[AttributeType::Value])
            .unwrap();
        assert!(
            matches!(info[0], AttributeInfo::Sensitive),
            "CKA_VALUE readable: {info:?}"
        );
        let attrs = session
            .get_attributes(
                k,
                &[
                    AttributeType::Value,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the token returned the private key"
        );
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(
            attrs.contains(&Attribute::NeverExtractable(true)),
            "{attrs:?}"
        );
    }

    // A retired CA's key is destroyed on the token (both halves), once; a record
    // pointing at another CA's object destroys nothing.
    let (_, retired) = X509Ca::generate(&km, CaPurpose::Spiffe, "prod").unwrap();
    let spiffe_ctx = KeyContext::ca("prod", CaPurpose::Spiffe);
    let err = km.retire(&ctx, &retired.key).err().unwrap().to_string();
    assert!(err.contains("left alone"), "{err}");
    km.load(&spiffe_ctx, &retired.key).unwrap();
    assert!(km.retire(&spiffe_ctx, &retired.key).unwrap());
    let err = km
        .load(&spiffe_ctx, &retired.key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("has no key with CKA_ID"), "{err}");
    assert!(
        !km.retire(&spiffe_ctx, &retired.key).unwrap(),
        "already gone"
    );
    let left = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(left.len(), 2, "only the retired key went");
    let publics = session
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
        .unwrap();
    assert_eq!(publics.len(), 2, "its public half went too");
    // The other CAs still sign.
    km.load(&ctx, &stored.key).unwrap().sign(b"still").unwrap();
    // Software keys live in their record only: nothing to destroy.
    let soft = SoftwareKeyManager;
    let (_, s) = X509Ca::generate(&soft, CaPurpose::Client, "prod").unwrap();
    assert!(!soft.retire(&ctx, &s.key).unwrap());
}
