//! The bot identity carried inside client certificates, and read-side helpers for certs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::der;
use crate::keys::sha256_hex;
use crate::{PkiError, Result};

/// Dotted form of the identity extension OID. It names UUID
/// cfdf0768-1e6a-4205-8ec1-ff473632032d in the arc Microsoft set aside for
/// GUID-derived OIDs (1.2.840.113556.1.8000.2554, the GUID split into 16- and
/// 24-bit arcs), which needs no registration. Every arc fits in 31 bits: Go's
/// `crypto/x509` (kubectl, Terraform, Vault, the Kubernetes API server) refuses
/// a whole certificate if any extension OID has a larger arc.
pub const IDENTITY_EXTENSION_OID: &str =
    "1.2.840.113556.1.8000.2554.53215.1896.7786.16901.36545.16729910.3277613";

/// The OID certificates issued before 2026-12 carry: the same UUID as a
/// `2.25.<128-bit integer>` OID (ITU-T X.667), which Go cannot parse. Still
/// read, so those certificates renew (into the new OID) after an upgrade.
pub const LEGACY_IDENTITY_EXTENSION_OID: &str = "2.25.276308227552939987507662315743379325741";

/// [`IDENTITY_EXTENSION_OID`] as DER content bytes (what follows tag 0x06 and the length).
pub(crate) const IDENTITY_OID_DER: [u8; 32] = [
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0xbe, 0x40, 0x93, 0x7a, 0x83, 0x9f, 0x5f, 0x8e, 0x68,
    0xbc, 0x6a, 0x81, 0x84, 0x05, 0x82, 0x9d, 0x41, 0x87, 0xfd, 0x8e, 0x36, 0x81, 0xc8, 0x86, 0x2d,
];

/// [`LEGACY_IDENTITY_EXTENSION_OID`] as DER content bytes.
const LEGACY_IDENTITY_OID_DER: [u8; 20] = [
    0x69, 0x83, 0x9f, 0xdf, 0x83, 0xda, 0x83, 0xe6, 0xd2, 0x88, 0x8b, 0x8e, 0xe0, 0xff, 0xe8, 0xf3,
    0xb1, 0xc8, 0x86, 0x2d,
];

/// Who a client certificate was issued to; serialised as JSON into the identity extension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientIdentity {
    /// Cluster that issued it.
    pub cluster: String,
    /// Bot name.
    pub bot: String,
    /// The bot's unique id when this was issued: a re-created bot of the
    /// same name has another, so this certificate is not its. Empty in
    /// certificates of bots created before ids existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bot_uid: String,
    /// Bot instance id.
    pub instance_id: String,
    /// Roles granted at issuance.
    pub roles: Vec<String>,
    /// Renewal generation counter (theft detection).
    pub generation: u64,
    /// Whether the credential may be renewed with itself.
    pub renewable: bool,
    /// How the bot joined (`token`, `github`, `kubernetes`, ...).
    pub join_method: String,
    /// SSH logins allowed, if any.
    #[serde(default)]
    pub logins: Vec<String>,
    /// An agent's own identity from a delegated join method: not renewable
    /// (the agent re-proves to renew) but, unlike an output credential, it
    /// may request outputs. Absent in older certificates: treated as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegated: bool,
    /// The verified claims of the join (`repository`, `aws_arn`, ...), by
    /// the method's own names.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub join_attributes: std::collections::BTreeMap<String, String>,
}

impl ClientIdentity {
    /// Whether this certificate may request further credentials (outputs,
    /// workload identities): an agent's own identity, renewable or delegated.
    pub fn is_agent_identity(&self) -> bool {
        self.renewable || self.delegated
    }
}

/// Facts about a certificate that callers check (expiry, key binding, issuer).
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Serial number: lowercase hex of the magnitude without leading zero bytes.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// SHA-256 (hex) over the certificate's SubjectPublicKeyInfo DER.
    pub spki_sha256_hex: String,
    /// `sha256:<hex>` pin of the issuer's key, recovered from the AuthorityKeyIdentifier when
    /// that is a full 32-byte SHA-256 of the issuer SPKI (as Sigil CAs set it); else `None`.
    pub issuer_spki_pin: Option<String>,
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::InvalidCertificate(format!("cannot parse DER: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

fn info_of(cert: &X509Certificate<'_>) -> CertInfo {
    let issuer_spki_pin = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki
                .key_identifier
                .as_ref()
                .filter(|kid| kid.0.len() == 32)
                .map(|kid| format!("sha256:{}", hex::encode(kid.0))),
            _ => None,
        });
    CertInfo {
        serial_hex: hex::encode(der::strip_leading_zeros(cert.raw_serial())),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        spki_sha256_hex: sha256_hex(cert.public_key().raw),
        issuer_spki_pin,
    }
}

/// Serial, validity and key hashes of a DER certificate. Does not verify the signature.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo> {
    Ok(info_of(&parse(cert_der)?))
}

/// `sha256:<hex>` over the certificate's SubjectPublicKeyInfo DER (same as `X509Ca::spki_pin`).
pub fn spki_pin_of_cert(cert_der: &[u8]) -> Result<String> {
    let cert = parse(cert_der)?;
    Ok(format!("sha256:{}", sha256_hex(cert.public_key().raw)))
}

/// Read the [`ClientIdentity`] from a Sigil client certificate.
///
/// This does not verify the certificate chain: call it on certificates the TLS handshake
/// (or `openssl verify`-equivalent code) has already verified against the client CA.
pub fn read_client_identity(cert_der: &[u8]) -> Result<(ClientIdentity, CertInfo)> {
    let cert = parse(cert_der)?;
    let mut found = None;
    for ext in cert.extensions() {
        let oid = ext.oid.as_bytes();
        if oid == IDENTITY_OID_DER || oid == LEGACY_IDENTITY_OID_DER {
            // Either OID, but one extension only: two could disagree.
            if found.is_some() {
                return Err(PkiError::MalformedIdentityExtension(
                    "extension appears more than once".into(),
                ));
            }
            found = Some(ext.value);
        }
    }
    let value = found.ok_or(PkiError::MissingIdentityExtension {
        oid: IDENTITY_EXTENSION_OID,
    })?;
    let (tag, content, rest) = der::read_tlv(value)
        .ok_or_else(|| PkiError::MalformedIdentityExtension("value is not a DER string".into()))?;
    if !rest.is_empty() || !(tag == der::TAG_UTF8_STRING || tag == der::TAG_OCTET_STRING) {
        return Err(PkiError::MalformedIdentityExtension(
            "value must be one UTF8String or OCTET STRING".into(),
        ));
    }
    let identity: ClientIdentity = serde_json::from_slice(content)
        .map_err(|e| PkiError::MalformedIdentityExtension(format!("JSON: {e}")))?;
    Ok((identity, info_of(&cert)))
}

/// All PEM blocks with `label` (e.g. `"CERTIFICATE"`), decoded to DER, in order.
/// Errors when the text is not PEM or contains no block with that label.
pub fn pem_to_ders(pem_text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::InvalidPem(e.to_string()))?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(pem::Pem::into_contents)
        .collect();
    if ders.is_empty() {
        return Err(PkiError::InvalidPem(format!(
            "no '-----BEGIN {label}-----' block found"
        )));
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "cfdf0768-1e6a-4205-8ec1-ff473632032d";

    #[test]
    fn oid_is_the_uuid_in_microsofts_guid_arc_with_31_bit_arcs() {
        assert_eq!(
            der::oid_to_string(&IDENTITY_OID_DER).unwrap(),
            IDENTITY_EXTENSION_OID
        );
        // aaaabbbb-cccc-dddd-eeee-ffffffgggggg -> ...2554.a.b.c.d.e.f.g (hex chunks).
        let hex = UUID.replace('-', "");
        let chunks = [
            (0, 4),
            (4, 8),
            (8, 12),
            (12, 16),
            (16, 20),
            (20, 26),
            (26, 32),
        ];
        let mut arcs: Vec<u128> = vec![1, 2, 840, 113556, 1, 8000, 2554];
        for (a, b) in chunks {
            arcs.push(u128::from_str_radix(&hex[a..b], 16).unwrap());
        }
        assert_eq!(der::oid_content(&arcs), IDENTITY_OID_DER);
        assert!(
            arcs.iter().all(|a| *a < 1 << 31),
            "Go parses arcs up to 2^31-1"
        );
    }

    #[test]
    fn legacy_oid_is_the_same_uuid_as_one_arc() {
        assert_eq!(
            der::oid_to_string(&LEGACY_IDENTITY_OID_DER).unwrap(),
            LEGACY_IDENTITY_EXTENSION_OID
        );
        let arc: u128 = LEGACY_IDENTITY_EXTENSION_OID
            .trim_start_matches("2.25.")
            .parse()
            .unwrap();
        assert_eq!(der::oid_content(&[2, 25, arc]), LEGACY_IDENTITY_OID_DER);
        assert_eq!(uuid::Uuid::from_u128(arc).to_string(), UUID);
    }

    #[test]
    fn certificates_carrying_the_legacy_oid_are_still_read() {
        use crate::{CaPurpose, SoftwareKeyManager, TlsKeyPair, X509Ca};
        let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
        let key = TlsKeyPair::generate().unwrap();
        let id = ClientIdentity {
            cluster: "prod".into(),
            bot: "b".into(),
            bot_uid: String::new(),
            instance_id: "i".into(),
            roles: vec!["r".into()],
            generation: 7,
            renewable: true,
            join_method: "token".into(),
            logins: vec![],
            delegated: false,
            join_attributes: Default::default(),
        };
        let mut value = Vec::new();
        der::tlv(
            &mut value,
            der::TAG_UTF8_STRING,
            &serde_json::to_vec(&id).unwrap(),
        );
        let ttl = std::time::Duration::from_secs(60);
        let legacy = ca
            .issue_leaf(
                &key.spki_der(),
                "b",
                &[],
                &[],
                Some((&LEGACY_IDENTITY_OID_DER, &value)),
                ttl,
            )
            .unwrap();
        assert_eq!(read_client_identity(&legacy.der).unwrap().0, id);
        let current = ca.issue_client(&key.spki_der(), &id, ttl).unwrap();
        assert_eq!(read_client_identity(&current.der).unwrap().0, id);
        // Another UUID OID is not ours.
        let other = der::oid_content(&[2, 25, 12345]);
        let foreign = ca
            .issue_leaf(&key.spki_der(), "b", &[], &[], Some((&other, &value)), ttl)
            .unwrap();
        assert!(matches!(
            read_client_identity(&foreign.der),
            Err(PkiError::MissingIdentityExtension { .. })
        ));
    }

    #[test]
    fn pem_to_ders_filters_by_label() {
        let a = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        let b = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![9]));
        let c = pem::encode(&pem::Pem::new("CERTIFICATE", vec![4]));
        let all = format!("{a}{b}{c}");
        assert_eq!(
            pem_to_ders(&all, "CERTIFICATE").unwrap(),
            vec![vec![1, 2, 3], vec![4]]
        );
        assert!(pem_to_ders(&b, "CERTIFICATE").is_err());
        assert!(pem_to_ders("garbage", "CERTIFICATE").is_err());
    }

    #[test]
    fn identity_json_defaults_logins() {
        let json = r#"{"cluster":"c","bot":"b","instance_id":"i","roles":[],"generation":1,"renewable":true,"join_method":"token"}"#;
        let id: ClientIdentity = serde_json::from_str(json).unwrap();
        assert!(id.logins.is_empty());
    }
}
