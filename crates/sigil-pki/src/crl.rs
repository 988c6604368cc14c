//! Certificate revocation lists (RFC 5280 v2 CRLs) signed by an [`X509Ca`] through rcgen,
//! with the CA key reached through the key manager (`RcgenKey`).

use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use crate::keys::KeyAlgorithm;
use crate::x509_ca::{RcgenKey, X509Ca, sha256_raw};
use crate::{PkiError, Result};

/// Longest serial number RFC 5280 allows, in bytes.
const MAX_SERIAL_LEN: usize = 20;

/// One revoked certificate for [`X509Ca::sign_crl`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Serial number as lowercase or uppercase hex (as in `IssuedCert::serial_hex`).
    pub serial_hex: String,
    /// When it was revoked (the entry's revocationDate; second precision).
    pub revoked_at: OffsetDateTime,
}

fn serial_bytes(serial_hex: &str) -> Result<Vec<u8>> {
    let bad = |reason| PkiError::InvalidName {
        field: "serial number",
        value: serial_hex.to_string(),
        reason,
    };
    let padded = if serial_hex.len() % 2 == 1 {
        format!("0{serial_hex}")
    } else {
        serial_hex.to_string()
    };
    let bytes = hex::decode(&padded).map_err(|_| bad("must be hexadecimal"))?;
    let magnitude = crate::der::strip_leading_zeros(&bytes);
    if magnitude.is_empty() {
        return Err(bad("must be a positive number"));
    }
    if magnitude.len() > MAX_SERIAL_LEN {
        return Err(bad("must be at most 20 bytes"));
    }
    Ok(magnitude.to_vec())
}

/// Drop sub-second precision: X.509 times carry whole seconds.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t - time::Duration::nanoseconds(i64::from(t.nanosecond()))
}

impl X509Ca {
    /// A v2 CRL signed by this CA: thisUpdate now, nextUpdate now+`validity`, CRLNumber
    /// extension = `crl_number`, AuthorityKeyIdentifier = the CA's SKID; one entry per
    /// serial (revocationDate). Returns DER.
    pub fn sign_crl(
        &self,
        crl_number: u64,
        revoked: &[RevokedSerial],
        validity: Duration,
    ) -> Result<Vec<u8>> {
        let validity = time::Duration::try_from(validity)
            .map_err(|_| PkiError::InvalidTtl("CRL validity too large to represent"))?;
        if validity < time::Duration::SECOND {
            return Err(PkiError::InvalidTtl(
                "CRL validity must be at least one second",
            ));
        }
        let this_update = whole_seconds(OffsetDateTime::now_utc());
        let next_update = this_update
            .checked_add(validity)
            .ok_or(PkiError::InvalidTtl("CRL validity too large to represent"))?;
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&serial_bytes(&r.serial_hex)?),
                    revocation_time: whole_seconds(r.revoked_at),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::PreSpecified(self.subject_key_id()?),
        };
        let alg = match self.key.algorithm() {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        };
        let signer = RcgenKey {
            key: self.key.as_ref(),
            raw: self.key.public_key_raw(),
            alg,
        };
        let ca_der = rustls_pki_types::CertificateDer::from(self.cert_der.as_slice());
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der, signer)
            .map_err(|e| PkiError::CrlBuild(format!("CA certificate: {e}")))?;
        let crl = params
            .signed_by(&issuer)
            .map_err(|e| PkiError::CrlBuild(e.to_string()))?;
        Ok(crl.der().to_vec())
    }

    /// The CA certificate's SubjectKeyIdentifier (what leaves carry as AKID).
    fn subject_key_id(&self) -> Result<Vec<u8>> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| PkiError::InvalidCertificate(format!("CA certificate: {e}")))?;
        Ok(cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| sha256_raw(&self.key.public_key_spki_der()).to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::CaPurpose;
    use crate::software_keys::SoftwareKeyManager;
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    #[test]
    fn serials_parse_like_issued_cert_serial_hex() {
        assert_eq!(serial_bytes("0a1b").unwrap(), [0x0a, 0x1b]);
        assert_eq!(serial_bytes("a1b").unwrap(), [0x0a, 0x1b]);
        assert_eq!(serial_bytes("00ff").unwrap(), [0xff]);
        assert_eq!(serial_bytes("FF").unwrap(), [0xff]);
        for bad in ["", "00", "xyz", &"ab".repeat(21)] {
            assert!(serial_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crl_fields_match_the_ca() {
        let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Spiffe, "prod").unwrap();
        let t = time::macros::datetime!(2030-01-02 03:04:05.678 UTC);
        let revoked = [
            RevokedSerial {
                serial_hex: "80aa".into(),
                revoked_at: t,
            },
            RevokedSerial {
                serial_hex: "1".into(),
                revoked_at: t,
            },
        ];
        let der = ca
            .sign_crl(u64::MAX, &revoked, Duration::from_secs(3600))
            .unwrap();
        let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(crl.version().map(|v| v.0), Some(1));
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(crl.issuer().as_raw(), cert.subject().as_raw());
        assert_eq!(
            crl.crl_number().map(|n| n.to_string()),
            Some(u64::MAX.to_string())
        );
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, ["0080aa", "01"]);
        for r in crl.iter_revoked_certificates() {
            assert_eq!(r.revocation_date.to_datetime(), whole_seconds(t));
        }
        let next = crl.next_update().unwrap().to_datetime();
        assert_eq!(next - crl.last_update().to_datetime(), time::Duration::HOUR);
        let akid = crl
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0)
                }
                _ => None,
            });
        assert_eq!(akid, Some(ca.subject_key_id().unwrap().as_slice()));
        assert!(ca.sign_crl(1, &[], Duration::ZERO).is_err());
    }
}
