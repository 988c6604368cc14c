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
