//! Intermediate CAs on a real SoftHSM2 token (Debian `softhsm2`): an imported key becomes
//! a sensitive, non-extractable token object that signs leaves `openssl verify` accepts up
//! to the organisation's root; in the CSR flow the key is made on the token and never
//! leaves it.
//!
//! One test function: SoftHSM reads SOFTHSM2_CONF once, when the module is initialised,
//! and a PKCS#11 module is initialised once per process.

mod org_pki;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use org_pki::{Alg, CA_EXT, OrgPki, cat, verify};
use sigil_pki::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "sigil-import";
const PIN: &str = "user-pin-4321";

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
        .args(["--so-pin", "so-pin-8765"])
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every leaf kind of `ca` verifies to `root` through the CA's chain.
fn leaves_verify(pki: &OrgPki, ca: &X509Ca, root: &Path, tag: &str) {
    let spki = TlsKeyPair::generate().unwrap().spki_der();
    let ttl = Duration::from_secs(600);
    let mut pems = vec![
        ca.issue_server(&spki, "web", &["web.prod.internal".into()], &[], ttl)
            .unwrap()
            .pem,
    ];
    if ca.purpose() == CaPurpose::Spiffe {
        pems.push(
            ca.issue_x509_svid(&spki, "spiffe://prod/web", &[], ttl)
                .unwrap()
                .pem,
        );
    }
    let untrusted = pki.write(&format!("{tag}-chain.pem"), &ca.chain_pem());
    for (i, pem) in pems.iter().enumerate() {
        let leaf = pki.write(&format!("{tag}-leaf{i}.pem"), pem);
        let (ok, out) = verify(root.to_str().unwrap(), &untrusted, &leaf, &[]);
        assert!(ok, "{tag} leaf {i}: {out}");
    }
}

#[test]
fn intermediate_ca_keys_on_softhsm() {
    let dir = tempfile::tempdir().unwrap();
    init_token(dir.path());
    let km = Pkcs11KeyManager::open(Path::new(MODULE), LABEL, PIN).unwrap();
    let pki = OrgPki::in_dir(dir.path());
    let root = pki.root("root", Alg::P256);
    let spiffe_ext = format!("{CA_EXT}subjectAltName = URI:spiffe://prod\n");

    // Import: the organisation's key goes onto the token.
    let imported = pki.issue("sigil-spiffe", Alg::P256, &root, &spiffe_ext);
    let stored = import_x509_ca(
        &km,
        CaPurpose::Spiffe,
        "prod",
        &cat(&[&imported.cert, &root.cert]),
        &imported.key_pem(),
    )
    .unwrap();
    assert_eq!(stored.key.manager, "pkcs11");
    assert!(stored.key.material.contains(LABEL));
    // Loaded again from the record (a restart), it signs leaves openssl accepts.
    let ca = X509Ca::load(&km, &stored).unwrap();
    leaves_verify(&pki, &ca, &root.cert, "imported");
    // The record is bound to its CA by the token's label.
    let err = km
        .load(&KeyContext::ca("prod", CaPurpose::Host), &stored.key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sigil prod spiffe"), "{err}");

    // CSR flow: the key is made on the token, the CSR signed there.
    let (pending, csr_pem) = new_x509_ca_request(&km, CaPurpose::Host, "prod").unwrap();
    let csr = pki.write("host.csr", &csr_pem);
    let cert = pki.sign_csr("sigil-host", Path::new(&csr), &root, CA_EXT);
    let stored_host = complete_x509_ca_request(
        &km,
        CaPurpose::Host,
        "prod",
        &pending,
        &cat(&[&cert, &root.cert]),
    )
    .unwrap();
    let host = X509Ca::load(&km, &stored_host).unwrap();
    leaves_verify(&pki, &host, &root.cert, "csr");

    // On the token: both private keys are sensitive and non-extractable, labelled like
    // generated keys; only the one made there is CKA_NEVER_EXTRACTABLE / CKA_LOCAL.
    let lib = Pkcs11::new(Path::new(MODULE)).unwrap();
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
    assert_eq!(keys.len(), 2, "one imported key, one made for the CSR");
    let mut labels = Vec::new();
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
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::Label,
                    AttributeType::Local,
                ],
            )
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
        for a in attrs {
            match a {
                Attribute::Label(l) => labels.push(String::from_utf8(l).unwrap()),
                Attribute::Local(local) => labels.push(format!("local={local}")),
                _ => {}
            }
        }
    }
    labels.sort();
    assert_eq!(
        labels,
        [
            "local=false",
            "local=true",
            "sigil prod host",
            "sigil prod spiffe"
        ],
        "{labels:?}"
    );
    // Unsupported keys are refused before anything reaches the token.
    let rsa = pki.issue("rsa", Alg::Rsa, &root, CA_EXT);
    let err = import_x509_ca(
        &km,
        CaPurpose::Client,
        "prod",
        &cat(&[&rsa.cert, &root.cert]),
        &rsa.key_pem(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("RSA"), "{err}");
    assert_eq!(
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap()
            .len(),
        2
    );
}
