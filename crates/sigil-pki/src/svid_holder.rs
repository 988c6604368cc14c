//! Which bot instance an X.509-SVID was issued to (its "holder"), carried in
//! a private non-critical extension of the SVID itself.
//!
//! An SVID names a workload (its SPIFFE ID), not the bot whose roles granted
//! it. Services that authorise an SVID-presenting caller by that bot's
//! *current* roles and locks (the app proxy) read the holder here instead of
//! keeping a record per SVID. Relying parties that do not know the
//! extension ignore it (non-critical); the SPIFFE ID stays the only URI SAN.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use x509_parser::extensions::GeneralName;

use crate::der;
use crate::identity::{CertInfo, cert_info};
use crate::svid::check_spiffe_id;
use crate::x509_ca::{IssuedCert, X509Ca};
use crate::{PkiError, Result};

/// Dotted form of the holder extension OID: UUID
/// 3b9f4bbd-3dc0-4bbc-a3d3-41ab222241e5 in the GUID arc (see
/// [`crate::IDENTITY_EXTENSION_OID`] for why this arc).
pub const SVID_HOLDER_EXTENSION_OID: &str =
    "1.2.840.113556.1.8000.2554.15263.19389.15808.19388.41939.4303650.2245093";

/// [`SVID_HOLDER_EXTENSION_OID`] as DER content bytes.
const SVID_HOLDER_OID_DER: [u8; 32] = [
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0xbe, 0x40, 0x93, 0x7a, 0xf7, 0x1f, 0x81, 0x97, 0x3d,
    0xfb, 0x40, 0x81, 0x97, 0x3c, 0x82, 0xc7, 0x53, 0x82, 0x86, 0xd6, 0x22, 0x81, 0x89, 0x83, 0x65,
];

/// The bot instance an SVID was issued to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidHolder {
    /// Bot name.
    pub bot: String,
    /// The bot's unique id at issuance (a re-created bot of the same name is another).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bot_uid: String,
    /// Bot instance id.
    pub instance_id: String,
}

/// What an X.509-SVID says: its SPIFFE ID, its holder (absent in SVIDs an
/// admin issued, or issued before holders were recorded) and validity.
#[derive(Clone, Debug)]
pub struct SvidFacts {
    pub spiffe_id: String,
    pub holder: Option<SvidHolder>,
    pub info: CertInfo,
}

impl X509Ca {
    /// [`X509Ca::issue_x509_svid`], recording `holder` in the SVID.
    pub fn issue_x509_svid_for(
        &self,
        subject_spki_der: &[u8],
        spiffe_id: &str,
        dns_sans: &[String],
        ttl: Duration,
        holder: &SvidHolder,
    ) -> Result<IssuedCert> {
        let json = serde_json::to_vec(holder)
            .map_err(|e| PkiError::InvalidCertificate(format!("SVID holder JSON: {e}")))?;
        let mut value = Vec::with_capacity(json.len() + 4);
        der::tlv(&mut value, der::TAG_UTF8_STRING, &json);
        self.issue_svid_leaf(
            subject_spki_der,
            spiffe_id,
            dns_sans,
            ttl,
            Some((&SVID_HOLDER_OID_DER, &value)),
        )
    }
}

/// Read an X.509-SVID: exactly one URI SAN, a valid SPIFFE ID, and the
/// holder extension if present. Does not verify the chain: call it on a
/// certificate already verified against the SPIFFE CA.
pub fn read_x509_svid(cert_der: &[u8]) -> Result<SvidFacts> {
    let info = cert_info(cert_der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::InvalidCertificate(format!("cannot parse DER: {e}")))?;
    let mut uris = Vec::new();
    let mut holder = None;
    for ext in cert.extensions() {
        if ext.oid.as_bytes() == SVID_HOLDER_OID_DER {
            if holder.is_some() {
                return Err(PkiError::InvalidCertificate(
                    "the SVID holder extension appears more than once".into(),
                ));
            }
            let (tag, content, rest) = der::read_tlv(ext.value).ok_or_else(|| {
                PkiError::InvalidCertificate("SVID holder: not a DER string".into())
            })?;
            if tag != der::TAG_UTF8_STRING || !rest.is_empty() {
                return Err(PkiError::InvalidCertificate(
                    "SVID holder: must be one UTF8String".into(),
                ));
            }
            holder = Some(
                serde_json::from_slice::<SvidHolder>(content)
                    .map_err(|e| PkiError::InvalidCertificate(format!("SVID holder: {e}")))?,
            );
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                uris.push(u.to_string());
            }
        }
    }
    let [spiffe_id] = <[String; 1]>::try_from(uris).map_err(|_| {
        PkiError::InvalidCertificate("an X.509-SVID has exactly one URI SAN".into())
    })?;
    check_spiffe_id(&spiffe_id)?;
    Ok(SvidFacts {
        spiffe_id,
        holder,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaPurpose, SoftwareKeyManager, TlsKeyPair};

    #[test]
    fn oid_bytes_match_the_dotted_form() {
        assert_eq!(
            der::oid_to_string(&SVID_HOLDER_OID_DER).unwrap(),
            SVID_HOLDER_EXTENSION_OID
        );
    }

    #[test]
    fn holder_round_trips_and_is_optional() {
        let (ca, _) =
            X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "example.test").unwrap();
        let key = TlsKeyPair::generate().unwrap();
        let ttl = Duration::from_secs(60);
        let id = "spiffe://example.test/svc/web";
        let holder = SvidHolder {
            bot: "ci".into(),
            bot_uid: "u1".into(),
            instance_id: "i1".into(),
        };
        let with = ca
            .issue_x509_svid_for(&key.spki_der(), id, &[], ttl, &holder)
            .unwrap();
        let f = read_x509_svid(&with.der).unwrap();
        assert_eq!(f.spiffe_id, id);
        assert_eq!(f.holder, Some(holder));
        let without = ca.issue_x509_svid(&key.spki_der(), id, &[], ttl).unwrap();
        let f = read_x509_svid(&without.der).unwrap();
        assert_eq!(f.holder, None);
        assert!(read_x509_svid(b"\x30\x00").is_err());
    }
}
