//! Client certificates on the public listener (`--web-client-certificates`),
//! for the console's certificate login.
//!
//! The handshake asks for a certificate but never fails over one: the
//! listener also serves health checks, JWKS, bundles and link logins to
//! clients that send none, or one this cluster does not trust, and a person
//! whose certificate is refused should read "access denied" on the login
//! page, not a TLS error. So the handshake only proves that the client holds
//! the certificate's key ([`RequestClientCert`]); right after it, the chain
//! is verified against the client CAs the cluster trusts now (the same
//! verifier, swapped on every CA rotation, as the mTLS control plane's:
//! [`crate::tls::ClientRoots`]), and the result rides on every request of
//! the connection ([`PresentedCert`]). Only the certificate login reads it.

use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};
use sigil_pki::{CertInfo, ClientIdentity};

use crate::state::AuthState;

/// What the client of a public-listener connection presented.
#[derive(Debug)]
pub enum PresentedCert {
    /// No certificate.
    None,
    /// A certificate that cannot log in: `why` is for the audit log only;
    /// `bot` is the name it states (unverified: only shown to its holder).
    Refused { bot: Option<String>, why: String },
    /// A Sigil identity, verified against a client CA trusted at the handshake.
    Verified {
        identity: Box<ClientIdentity>,
        info: Box<CertInfo>,
        /// SPKI pin of the client CA that signed it (re-checked per request).
        client_ca_pin: String,
    },
}

/// The connection's [`PresentedCert`], as a request extension.
#[derive(Clone, Debug)]
pub struct ConnCert(pub Arc<PresentedCert>);

/// Verify what the client presented, once per connection.
pub fn inspect(state: &AuthState, conn: &rustls::ServerConnection) -> PresentedCert {
    let Some((leaf, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
        return PresentedCert::None;
    };
    let parsed = sigil_pki::read_client_identity(leaf);
    let bot = parsed.as_ref().ok().map(|(id, _)| id.bot.clone());
    if let Err(e) = state
        .client_roots
        .verify_client_cert(leaf, intermediates, UnixTime::now())
    {
        return PresentedCert::Refused {
            bot,
            why: format!(
                "the client certificate does not verify against the client CAs this cluster trusts now (rotated out, expired, or not a Sigil identity): {e}"
            ),
        };
    }
    let (identity, info) = match parsed {
        Ok(v) => v,
        Err(e) => {
            return PresentedCert::Refused {
                bot,
                why: format!("the client certificate is not a Sigil identity: {e}"),
            };
        }
    };
    // Which trusted CA signed it, found by the signature (as the control
    // plane's listener does), for the session's pin.
    let pin = state
        .cas()
        .client
        .trusted
        .iter()
        .find(|ca| sigil_pki::issued_by(leaf, ca.cert_der()))
        .map(|ca| ca.spki_pin());
    match pin {
        Some(client_ca_pin) => PresentedCert::Verified {
            identity: Box::new(identity),
            info: Box::new(info),
            client_ca_pin,
        },
        None => PresentedCert::Refused {
            bot,
            why: "the client certificate's issuing CA is not a client CA this cluster trusts now"
                .into(),
        },
    }
}

/// Asks for an optional client certificate and checks only the handshake's
/// proof of its key; [`inspect`] verifies the chain after the handshake.
#[derive(Debug)]
pub struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl RequestClientCert {
    pub fn new() -> Arc<RequestClientCert> {
        Arc::new(RequestClientCert {
            algorithms: crate::tls::provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    // No hints (as the control plane): browsers then offer every installed
    // certificate, which is why this listener asks only when configured to.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately unchecked here: see the module's comment. Nothing
        // trusts the certificate unless `inspect` verified it.
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConnection, ServerConnection};

    fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
        (c.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
    }

    /// Presents `cert` signed for by `key`, matching or not (rustls's own
    /// client configs refuse a mismatch before any handshake).
    #[derive(Debug)]
    struct Present(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Present {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    /// A TLS 1.3 handshake in memory against a server using
    /// [`RequestClientCert`]: the certificates the server then holds.
    fn handshake(
        present: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Result<usize, rustls::Error> {
        let provider = crate::tls::provider();
        let (server_cert, server_key) = self_signed();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(RequestClientCert::new())
            .with_single_cert(vec![server_cert.clone()], server_key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let client = match present {
            None => client.with_no_client_auth(),
            Some((cert, key)) => {
                let signer = provider.key_provider.load_private_key(key).unwrap();
                let ck = rustls::sign::CertifiedKey::new(vec![cert], signer);
                client.with_client_cert_resolver(Arc::new(Present(Arc::new(ck))))
            }
        };
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut wire = Vec::new();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().map_or(0, |p| p.len()));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn any_certificate_is_accepted_but_only_with_its_key() {
        assert_eq!(handshake(None).unwrap(), 0, "no certificate: served");
        // A certificate of no trusted CA still completes the handshake
        // (`inspect` refuses it for login).
        assert_eq!(handshake(Some(self_signed())).unwrap(), 1);
        // Someone else's certificate without its key does not.
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        assert!(handshake(Some((cert, other_key))).is_err());
    }
}
