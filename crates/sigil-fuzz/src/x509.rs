//! The X.509 parse paths the auth service runs on what a client sends. Sigil
//! takes no CSRs: an agent submits a bare SubjectPublicKeyInfo to be
//! certified (`check_spki`, then the CA's own DER writer), and presents its
//! client certificate to renew (`read_client_identity`, `cert_info`,
//! `spki_pin_of_cert`, after the TLS handshake verified the chain). Every
//! input goes down both paths.

use std::cell::OnceCell;
use std::time::Duration;

use sigil_pki::{CaPurpose, ClientIdentity, SoftwareKeyManager, X509Ca};

thread_local! {
    /// One client CA per thread (key generation is the slow part).
    static CA: OnceCell<X509Ca> = const { OnceCell::new() };
}

pub fn x509(data: &[u8]) {
    presented_certificate(data);
    submitted_spki(data);
}

/// Never panics; the three readers agree on what they share; an identity that
/// was read is one the CA would write again unchanged.
fn presented_certificate(data: &[u8]) {
    let info = sigil_pki::cert_info(data);
    let pin = sigil_pki::spki_pin_of_cert(data);
    assert_eq!(
        info.is_ok(),
        pin.is_ok(),
        "cert_info and spki_pin_of_cert disagree"
    );
    if let (Ok(info), Ok(pin)) = (&info, &pin) {
        assert_eq!(*pin, format!("sha256:{}", info.spki_sha256_hex));
        assert!(
            !info.serial_hex.starts_with("00")
                && info
                    .serial_hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "serial {:?} is not minimal lowercase hex",
            info.serial_hex
        );
        if let Some(p) = &info.issuer_spki_pin {
            assert_eq!(p.len(), "sha256:".len() + 64, "issuer pin {p}");
        }
    }
    let Ok((identity, id_info)) = sigil_pki::read_client_identity(data) else {
        return;
    };
    let info = info.expect("a certificate with an identity parses on its own");
    assert_eq!(id_info.serial_hex, info.serial_hex);
    assert_eq!(id_info.spki_sha256_hex, info.spki_sha256_hex);
    assert_eq!(id_info.not_after, info.not_after);
    let json = serde_json::to_vec(&identity).expect("an identity serialises");
    let again: ClientIdentity = serde_json::from_slice(&json).expect("and parses back");
    assert_eq!(again, identity);
}

/// Never panics; the CA certifies exactly what `check_spki` accepts, and the
/// certificate binds that very key, chains to the CA and carries the identity
/// it was given.
fn submitted_spki(data: &[u8]) {
    let accepted = sigil_pki::check_spki(data).is_ok();
    CA.with(|cell| {
        let ca = cell.get_or_init(|| {
            X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "fuzz.example")
                .expect("a client CA")
                .0
        });
        let id = identity();
        let issued = ca.issue_client(data, &id, Duration::from_secs(600));
        assert_eq!(
            issued.is_ok(),
            accepted,
            "the CA and check_spki disagree: {:?}",
            issued.as_ref().err()
        );
        let Ok(cert) = issued else {
            return;
        };
        let pin = sigil_pki::spki_pin_of_cert(&cert.der).expect("an issued cert parses");
        assert_eq!(pin, format!("sha256:{}", sigil_pki::sha256_hex(data)));
        assert!(sigil_pki::issued_by(&cert.der, ca.cert_der()));
        let (read, info) = sigil_pki::read_client_identity(&cert.der).expect("its identity reads");
        assert_eq!(read, id);
        assert_eq!(
            info.issuer_spki_pin.as_deref(),
            Some(ca.spki_pin().as_str())
        );
        assert_eq!(info.serial_hex, cert.serial_hex);
    });
}

fn identity() -> ClientIdentity {
    ClientIdentity {
        cluster: "fuzz.example".into(),
        bot: "fuzz-bot".into(),
        bot_uid: "0b6f3c1e-1d2a-4e5f-8a9b-0c1d2e3f4a5b".into(),
        instance_id: "5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11".into(),
        roles: vec!["fuzz-role".into()],
        generation: 1,
        renewable: true,
        join_method: "token".into(),
        logins: vec!["fuzz".into()],
        delegated: false,
        join_attributes: Default::default(),
    }
}
