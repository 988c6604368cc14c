//! The certificate chain of an X.509 CA: what goes after a leaf, and what peers trust.
//!
//! A generated CA is self-signed: its chain is its own certificate, which is also the
//! trust anchor. An intermediate CA under an organisation's root ([`crate::import_x509_ca`])
//! stores the certificates above its own ([`crate::StoredCa::chain_pem`]), nearest first:
//!
//! - [`X509Ca::chain_ders`]: the CA's certificate, then the intermediates above it, without
//!   a self-signed root. A TLS peer or a SPIFFE Workload API response sends the leaf
//!   followed by these (`openssl verify -untrusted`).
//! - [`X509Ca::trust_anchor_der`]: what relying parties put in their trust store (the CA
//!   bundle, the SPIFFE bundle's X.509 authority): the self-signed root at the end of the
//!   supplied chain, or the CA's own certificate when it is self-signed.
//!
//! **When the root was not supplied** (the chain stops at an intermediate), the topmost
//! certificate supplied is the trust anchor, and it also stays in [`X509Ca::chain_ders`].
//! Relying parties then trust that intermediate directly: rustls-webpki, Go's crypto/x509
//! and SPIFFE libraries accept a non-self-signed anchor; `openssl verify` needs
//! `-partial_chain` for it. Give the root to make the organisation's root the anchor.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::name_constraints::LeafNameConstraints;
use crate::x509_ca::{X509Ca, pem_encode};
use crate::{PkiError, Result};

/// The chain of a loaded CA (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct CaChain {
    /// The CA's certificate, then the intermediates above it (no self-signed root).
    ders: Vec<Vec<u8>>,
    /// What relying parties trust.
    anchor: Vec<u8>,
    /// The earliest notAfter of the CA's certificate and those above it (leaves must expire before).
    pub(crate) not_after: OffsetDateTime,
    /// DNS/IP name constraints of the CA's certificate and those above it.
    pub(crate) names: LeafNameConstraints,
}

impl CaChain {
    /// The chain of the CA whose certificate is `cert_der`, with `above` its issuers,
    /// nearest first. Checks each certificate is signed by the next (not validity: a
    /// stored CA loads even once expired, so that it can be rotated out).
    pub(crate) fn new(cert_der: &[u8], above: Vec<Vec<u8>>) -> Result<CaChain> {
        let mut parsed = Vec::with_capacity(above.len() + 1);
        for (i, der) in std::iter::once(cert_der)
            .chain(above.iter().map(Vec::as_slice))
            .enumerate()
        {
            parsed.push(parse(der).map_err(|e| {
                PkiError::InvalidCertificate(format!("stored CA chain, certificate {}: {e}", i + 1))
            })?);
        }
        let names = LeafNameConstraints::of(&parsed);
        let not_after = parsed
            .iter()
            .map(|c| c.validity().not_after.to_datetime())
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if above.is_empty() {
            return Ok(CaChain {
                ders: vec![cert_der.to_vec()],
                anchor: cert_der.to_vec(),
                not_after,
                names,
            });
        }
        for (i, pair) in parsed.windows(2).enumerate() {
            if let Some(why) = link_error(&pair[0], &pair[1]) {
                return Err(PkiError::InvalidCertificate(format!(
                    "stored CA chain: certificate {} is not issued by certificate {}: {why}; the CA record is corrupt, restore it from backup",
                    i + 1,
                    i + 2
                )));
            }
        }
        let top = &parsed[parsed.len() - 1];
        let root_supplied = is_self_signed(top);
        drop(parsed);
        let mut ders = Vec::with_capacity(above.len() + 1);
        ders.push(cert_der.to_vec());
        ders.extend(above);
        let anchor = if root_supplied {
            ders.pop().unwrap_or_default()
        } else {
            ders[ders.len() - 1].clone()
        };
        Ok(CaChain {
            ders,
            anchor,
            not_after,
            names,
        })
    }
}

impl X509Ca {
    /// DER certificates to send after a leaf this CA issued: the CA's own certificate,
    /// then the intermediates above it, without a self-signed root. For a self-signed CA,
    /// just its certificate.
    pub fn chain_ders(&self) -> &[Vec<u8>] {
        &self.chain.ders
    }

    /// PEM of [`X509Ca::chain_ders`], in order (LF line endings).
    pub fn chain_pem(&self) -> String {
        self.chain.ders.iter().map(|d| pem_encode(d)).collect()
    }

    /// DER of the certificate relying parties trust for this CA: the root at the end of
    /// the supplied chain, the topmost supplied certificate when the root was not supplied,
    /// or the CA's own certificate when it is self-signed (module docs).
    pub fn trust_anchor_der(&self) -> &[u8] {
        &self.chain.anchor
    }

    /// Whether this CA is an intermediate (its certificate is not self-signed).
    pub fn is_intermediate(&self) -> bool {
        self.chain.ders.len() > 1 || self.chain.anchor != self.cert_der
    }
}

pub(crate) fn parse(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(format!("not a DER X.509 certificate: {e}")),
    }
}

/// Why `parent` did not issue `child`, or `None` when it did: names must chain and the
/// signature must verify under the parent's key (aws-lc-rs, through x509-parser).
pub(crate) fn link_error(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
) -> Option<String> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Some(format!(
            "its issuer is \"{}\" but the next certificate's subject is \"{}\"",
            child.issuer(),
            parent.subject()
        ));
    }
    match child.verify_signature(Some(parent.public_key())) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "its signature does not verify under the next certificate's key ({e})"
        )),
    }
}

/// Whether the CA certificate `parent_der` issued `child_der` (names chain and the
/// signature verifies under the CA's key).
pub fn issued_by(child_der: &[u8], parent_der: &[u8]) -> bool {
    match (parse(child_der), parse(parent_der)) {
        (Ok(c), Ok(p)) => link_error(&c, &p).is_none(),
        _ => false,
    }
}

/// Self-issued (subject = issuer) and signed by its own key: a root.
pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok()
}
