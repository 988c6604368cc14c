//! The `https_spiffe` profile's server authentication (SPIFFE Federation §5.2):
//! the bundle endpoint must present an X.509-SVID that chains to the foreign
//! domain's last known bundle and whose URI SAN is exactly the configured
//! `endpoint_spiffe_id`. The host name is not checked (SVIDs name workloads,
//! not hosts), as the standard says.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

/// Verifies a bundle endpoint's SVID against a foreign bundle.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    endpoint_spiffe_id: String,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Trust `authorities` (DER CA certificates) for `endpoint_spiffe_id` only.
    pub fn new(authorities: &[Vec<u8>], endpoint_spiffe_id: &str) -> Result<Self, String> {
        let mut anchors = Vec::with_capacity(authorities.len());
        for der in authorities {
            let cert = CertificateDer::from(der.as_slice());
            let a = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| format!("a bundle authority is not usable as a trust anchor: {e}"))?;
            anchors.push(a.to_owned());
        }
        if anchors.is_empty() {
            return Err(
                "the last known bundle has no X.509 authority to authenticate the endpoint with"
                    .into(),
            );
        }
        Ok(SpiffeServerVerifier {
            anchors,
            endpoint_spiffe_id: endpoint_spiffe_id.to_string(),
            algs: crate::tls::provider().signature_verification_algorithms,
        })
    }

    /// A rustls client configuration using this verifier.
    pub fn client_config(self) -> Result<rustls::ClientConfig, String> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// The URI SANs of a certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("bundle endpoint certificate: {e}")))?;
        ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::General(format!(
                "the bundle endpoint's certificate does not chain to the domain's bundle: {e}"
            ))
        })?;
        let ids = uri_sans(end_entity.as_ref());
        // An X.509-SVID has exactly one URI SAN.
        if ids.len() != 1 || ids[0] != self.endpoint_spiffe_id {
            return Err(rustls::Error::General(format!(
                "the bundle endpoint presented SPIFFE ID {:?}, not {:?}",
                ids.join(","),
                self.endpoint_spiffe_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
