//! X.509 certificate authorities: self-signed CA generation (rcgen, signing through the
//! [`KeyManager`]) and fast leaf issuance (a fixed-layout DER writer, see `der.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use crate::ca_import::ca_params;
use crate::der::{self, TAG_BIT_STRING, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, TAG_SET};
use crate::identity::{ClientIdentity, IDENTITY_OID_DER};
use crate::key_manager::{CaSigningKey, KeyContext, KeyManager};
use crate::keys::{CaPurpose, KeyAlgorithm, StoredCa, random_bytes, sha256_hex};
use crate::{PkiError, Result};

/// How long a generated CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Back-dating of notBefore so that peers whose clocks are up to 5 minutes
/// behind the issuer's accept new certs (an agent verifying the auth
/// service's fresh TLS certificate, a workload's peer checking an SVID);
/// tests/e2e_clock_skew.rs runs an agent 5 minutes behind.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

// OID contents (no tag/length) of what leaves carry.
pub(crate) const OID_ORG: &[u8] = &[0x55, 0x04, 0x0a];
pub(crate) const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
pub(crate) const OID_KP_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
pub(crate) const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// AlgorithmIdentifier ecdsa-with-SHA256 (no parameters, RFC 5758).
const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// AlgorithmIdentifier Ed25519 (RFC 8410).
const ALG_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// A certificate issued by an [`X509Ca`].
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// PEM of the certificate (LF line endings).
    pub pem: String,
    /// Serial number, lowercase hex without leading zero bytes (same as `CertInfo::serial_hex`).
    pub serial_hex: String,
    /// Expiry (second precision, as encoded).
    pub not_after: OffsetDateTime,
}

/// An X.509 CA loaded and ready to issue. Everything a leaf copies from the CA (issuer
/// name, AuthorityKeyIdentifier, signature algorithm) is pre-encoded once at load.
pub struct X509Ca {
    pub(crate) purpose: CaPurpose,
    pub(crate) cluster: String,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) key: Arc<dyn CaSigningKey>,
    issuer_name_der: Vec<u8>,
    akid_ext_der: Vec<u8>,
    sig_alg_der: &'static [u8],
    spki_pin: String,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) chain: crate::x509_chain::CaChain,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("purpose", &self.purpose)
            .field("cluster", &self.cluster)
            .field("spki_pin", &self.spki_pin)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Adapts a [`CaSigningKey`] to rcgen so the CA certificate is signed by the key manager.
pub(crate) struct RcgenKey<'a> {
    pub(crate) key: &'a dyn CaSigningKey,
    pub(crate) raw: Vec<u8>,
    pub(crate) alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.key.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

impl X509Ca {
    /// Generate a new P-256 CA key in `km` and a self-signed CA certificate valid 10 years.
    pub fn generate(
        km: &dyn KeyManager,
        purpose: CaPurpose,
        cluster: &str,
    ) -> Result<(X509Ca, StoredCa)> {
        if purpose.is_ssh() {
            return Err(PkiError::WrongPurpose {
                purpose,
                expected: "an X.509 purpose (host, client, db-client, spiffe, jwt); use SshCa",
            });
        }
        check_uri_safe("cluster", cluster)?;
        let ctx = KeyContext::ca(cluster, purpose);
        let stored_key = km.generate(&ctx, KeyAlgorithm::EcdsaP256)?;
        let key = km.load(&ctx, &stored_key)?;
        let spki = key.public_key_spki_der();
        let serial = random_bytes::<16>()?;

        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(purpose, cluster, &serial)?;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        // Full SHA-256 of the SPKI as SKID: leaves' AKID then equals the CA pin, so
        // `CertInfo::issuer_spki_pin` can be recovered from any leaf.
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(sha256_raw(&spki).to_vec());

        let signer = RcgenKey {
            key: key.as_ref(),
            raw: key.public_key_raw(),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let cert = params
            .self_signed(&signer)
            .map_err(|e| PkiError::CertificateBuild(e.to_string()))?;
        let ca = Self::from_parts(purpose, cluster, cert.der().to_vec(), Vec::new(), key)?;
        let stored = StoredCa {
            purpose,
            cluster: cluster.to_string(),
            key: stored_key,
            cert_pem: Some(ca.cert_pem()),
            chain_pem: None,
            ssh_public_key: None,
            created: now,
        };
        Ok((ca, stored))
    }

    /// Load a CA persisted by [`X509Ca::generate`], [`crate::import_x509_ca`] or
    /// [`crate::complete_x509_ca_request`]; checks the cert matches the key, and that each
    /// certificate of a stored chain is signed by the next.
    pub fn load(km: &dyn KeyManager, stored: &StoredCa) -> Result<X509Ca> {
        if stored.purpose.is_ssh() {
            return Err(PkiError::WrongPurpose {
                purpose: stored.purpose,
                expected: "an X.509 CA record; load SSH CAs with SshCa::load",
            });
        }
        let pem_text = stored
            .cert_pem
            .as_deref()
            .ok_or(PkiError::MissingStoredField {
                purpose: stored.purpose,
                field: "cert_pem",
            })?;
        let der = crate::identity::pem_to_ders(pem_text, "CERTIFICATE")?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::InvalidPem("no CERTIFICATE block".into()))?;
        let above = match stored.chain_pem.as_deref() {
            Some(text) => crate::identity::pem_to_ders(text, "CERTIFICATE")?,
            None => Vec::new(),
        };
        let key = km.load(
            &KeyContext::ca(&stored.cluster, stored.purpose),
            &stored.key,
        )?;
        Self::from_parts(stored.purpose, &stored.cluster, der, above, key)
    }

    /// `above`: the issuing certificates of an intermediate CA, nearest first (empty for a
    /// self-signed CA).
    fn from_parts(
        purpose: CaPurpose,
        cluster: &str,
        cert_der: Vec<u8>,
        above: Vec<Vec<u8>>,
        key: Arc<dyn CaSigningKey>,
    ) -> Result<X509Ca> {
        let (rest, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::InvalidCertificate(format!("CA certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCertificate(
                "trailing bytes after the CA certificate".into(),
            ));
        }
        let spki = key.public_key_spki_der();
        if cert.public_key().raw != spki.as_slice() {
            return Err(PkiError::KeyMismatch { purpose });
        }
        if !cert.is_ca() {
            return Err(PkiError::InvalidCertificate(
                "CA certificate lacks BasicConstraints CA:TRUE".into(),
            ));
        }
        let skid = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| sha256_raw(&spki).to_vec());
        let mut akid_ext_der = Vec::new();
        let mut akid_value = Vec::new();
        der::nested(&mut akid_value, TAG_SEQUENCE, |s| der::tlv(s, 0x80, &skid));
        extension(&mut akid_ext_der, OID_AUTHORITY_KEY_ID, false, &akid_value);
        let sig_alg_der = match key.algorithm() {
            KeyAlgorithm::EcdsaP256 => ALG_ECDSA_SHA256,
            KeyAlgorithm::Ed25519 => ALG_ED25519,
        };
        let chain = crate::x509_chain::CaChain::new(&cert_der, above)?;
        Ok(X509Ca {
            purpose,
            cluster: cluster.to_string(),
            issuer_name_der: cert.tbs_certificate.subject.as_raw().to_vec(),
            // A leaf must not outlive any certificate its path goes through.
            not_after: chain.not_after,
            chain,
            spki_pin: format!("sha256:{}", sha256_hex(&spki)),
            akid_ext_der,
            sig_alg_der,
            key,
            cert_der,
        })
    }

    /// What this CA signs.
    pub fn purpose(&self) -> CaPurpose {
        self.purpose
    }

    /// DER of the CA certificate.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// PEM of the CA certificate (LF line endings).
    pub fn cert_pem(&self) -> String {
        pem_encode(&self.cert_der)
    }

    /// The latest expiry a certificate this CA issues may have.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// `sha256:<lowercase hex>` over the CA certificate's SubjectPublicKeyInfo DER.
    pub fn spki_pin(&self) -> String {
        self.spki_pin.clone()
    }

    /// Issue a bot client certificate for `subject_spki_der` carrying `id`.
    ///
    /// Subject CN=<bot>, O=<cluster>; SAN URI `sigil://<cluster>/bot/<bot>/<instance_id>`;
    /// EKU clientAuth; the identity JSON in the non-critical extension
    /// [`crate::IDENTITY_EXTENSION_OID`].
    pub fn issue_client(
        &self,
        subject_spki_der: &[u8],
        id: &ClientIdentity,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        if id.cluster != self.cluster {
            return Err(PkiError::InvalidName {
                field: "identity cluster",
                value: id.cluster.clone(),
                reason: "must equal the cluster of the issuing CA",
            });
        }
        check_uri_safe("bot name", &id.bot)?;
        check_uri_safe("instance id", &id.instance_id)?;
        let uri = format!("sigil://{}/bot/{}/{}", id.cluster, id.bot, id.instance_id);
        let mut sans = Vec::new();
        der::tlv(&mut sans, 0x86, uri.as_bytes());
        let json = serde_json::to_vec(id)
            .map_err(|e| PkiError::MalformedIdentityExtension(format!("JSON: {e}")))?;
        let mut id_value = Vec::with_capacity(json.len() + 4);
        der::tlv(&mut id_value, der::TAG_UTF8_STRING, &json);
        self.issue_leaf(
            subject_spki_der,
            &id.bot,
            &sans,
            &[OID_KP_CLIENT_AUTH],
            Some((&IDENTITY_OID_DER, &id_value)),
            ttl,
        )
    }

    /// Issue a TLS server certificate (EKU serverAuth + clientAuth) with DNS and IP SANs.
    pub fn issue_server(
        &self,
        subject_spki_der: &[u8],
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<IssuedCert> {
        if common_name.is_empty()
            || common_name.len() > 64
            || common_name.chars().any(char::is_control)
        {
            return Err(PkiError::InvalidName {
                field: "common name",
                value: common_name.to_string(),
                reason: "must be 1-64 characters without control characters",
            });
        }
        if dns_names.is_empty() && ips.is_empty() {
            return Err(PkiError::InvalidName {
                field: "server names",
                value: String::new(),
                reason: "a server certificate needs at least one DNS name or IP address",
            });
        }
        self.check_leaf_names(dns_names, ips)?;
        let mut sans = Vec::new();
        for name in dns_names {
            check_dns_name(name)?;
            der::tlv(&mut sans, 0x82, name.as_bytes());
        }
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => der::tlv(&mut sans, 0x87, &v4.octets()),
                IpAddr::V6(v6) => der::tlv(&mut sans, 0x87, &v6.octets()),
            }
        }
        self.issue_leaf(
            subject_spki_der,
            common_name,
            &sans,
            &[OID_KP_SERVER_AUTH, OID_KP_CLIENT_AUTH],
            None,
            ttl,
        )
    }

    /// Build, sign and encode one end-entity certificate (subject O=cluster, CN).
    pub(crate) fn issue_leaf(
        &self,
        spki: &[u8],
        common_name: &str,
        san_content: &[u8],
        ekus: &[&[u8]],
        extra: Option<(&[u8], &[u8])>,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        self.issue_leaf_with_subject(
            spki,
            &[(OID_ORG, &self.cluster), (OID_CN, common_name)],
            san_content,
            ekus,
            extra,
            ttl,
        )
    }

    /// [`X509Ca::issue_leaf`] with the subject given as (OID, value) pairs, one
    /// RDN each, in order.
    pub(crate) fn issue_leaf_with_subject(
        &self,
        spki: &[u8],
        subject: &[(&[u8], &str)],
        san_content: &[u8],
        ekus: &[&[u8]],
        extra: Option<(&[u8], &[u8])>,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        check_spki(spki)?;
        let ttl = time::Duration::try_from(ttl)
            .map_err(|_| PkiError::InvalidTtl("too large to represent"))?;
        if ttl <= time::Duration::ZERO {
            return Err(PkiError::InvalidTtl("must be greater than zero"));
        }
        // Whole seconds: that is all X.509 time encodes, and IssuedCert::not_after must match.
        let now = OffsetDateTime::now_utc();
        let now = now - time::Duration::nanoseconds(i64::from(now.nanosecond()));
        let not_before = now - CLOCK_SKEW;
        let not_after = now
            .checked_add(ttl)
            .ok_or(PkiError::InvalidTtl("too large to represent"))?;
        if not_after > self.not_after {
            return Err(PkiError::InvalidTtl(
                "the certificate would outlive its CA; use a shorter TTL or rotate the CA",
            ));
        }
        let serial = random_bytes::<16>()?;

        let mut tbs = Vec::with_capacity(1024);
        der::nested(&mut tbs, TAG_SEQUENCE, |t| {
            t.extend_from_slice(&[0xa0, 0x03, 0x02, 0x01, 0x02]); // [0] EXPLICIT version v3
            der::unsigned_integer(t, &serial);
            t.extend_from_slice(self.sig_alg_der);
            t.extend_from_slice(&self.issuer_name_der);
            der::nested(t, TAG_SEQUENCE, |v| {
                der::time(v, not_before);
                der::time(v, not_after);
            });
            der::nested(t, TAG_SEQUENCE, |name| {
                for (oid, value) in subject {
                    rdn(name, oid, value);
                }
            });
            t.extend_from_slice(spki);
            der::nested(t, 0xa3, |x| {
                der::nested(x, TAG_SEQUENCE, |exts| {
                    // BasicConstraints CA:FALSE, critical.
                    extension(exts, OID_BASIC_CONSTRAINTS, true, &[0x30, 0x00]);
                    // KeyUsage digitalSignature, critical.
                    extension(exts, OID_KEY_USAGE, true, &[0x03, 0x02, 0x07, 0x80]);
                    let mut eku = Vec::new();
                    der::nested(&mut eku, TAG_SEQUENCE, |s| {
                        for oid in ekus {
                            der::tlv(s, TAG_OID, oid);
                        }
                    });
                    extension(exts, OID_EXT_KEY_USAGE, false, &eku);
                    let mut skid = Vec::new();
                    der::tlv(&mut skid, TAG_OCTET_STRING, &sha256_raw(spki));
                    extension(exts, OID_SUBJECT_KEY_ID, false, &skid);
                    exts.extend_from_slice(&self.akid_ext_der);
                    let mut san = Vec::new();
                    der::tlv(&mut san, TAG_SEQUENCE, san_content);
                    extension(exts, OID_SUBJECT_ALT_NAME, false, &san);
                    if let Some((oid, value)) = extra {
                        extension(exts, oid, false, value);
                    }
                });
            });
        });
        let sig = self.key.sign(&tbs)?;
        let mut cert = Vec::with_capacity(tbs.len() + sig.len() + 32);
        der::nested(&mut cert, TAG_SEQUENCE, |c| {
            c.extend_from_slice(&tbs);
            c.extend_from_slice(self.sig_alg_der);
            let mut bits = Vec::with_capacity(sig.len() + 1);
            bits.push(0); // no unused bits
            bits.extend_from_slice(&sig);
            der::tlv(c, TAG_BIT_STRING, &bits);
        });
        Ok(IssuedCert {
            pem: pem_encode(&cert),
            der: cert,
            serial_hex: hex::encode(der::strip_leading_zeros(&serial)),
            not_after,
        })
    }
}

/// One RelativeDistinguishedName with a single UTF8String attribute.
fn rdn(out: &mut Vec<u8>, oid: &[u8], value: &str) {
    der::nested(out, TAG_SET, |set| {
        der::nested(set, TAG_SEQUENCE, |atv| {
            der::tlv(atv, TAG_OID, oid);
            der::tlv(atv, der::TAG_UTF8_STRING, value.as_bytes());
        });
    });
}

/// One X.509 Extension: SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }.
fn extension(out: &mut Vec<u8>, oid: &[u8], critical: bool, value_der: &[u8]) {
    der::nested(out, TAG_SEQUENCE, |e| {
        der::tlv(e, TAG_OID, oid);
        if critical {
            der::tlv(e, der::TAG_BOOLEAN, &[0xff]);
        }
        der::tlv(e, TAG_OCTET_STRING, value_der);
    });
}

pub(crate) fn sha256_raw(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn pem_encode(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The key algorithms Sigil certifies, as said in errors and the README.
pub const ACCEPTED_KEYS: &str =
    "Ed25519, ECDSA on P-256, P-384 or P-521, or RSA of 2048 to 16384 bits";

/// Reject SubjectPublicKeyInfo we would not want to certify: unparsable,
/// trailing bytes, an algorithm other than EC, Ed25519 or RSA, an unnamed
/// or non-NIST curve, or RSA under 2048 bits. The bytes are copied verbatim
/// into the cert.
pub fn check_spki(spki: &[u8]) -> Result<()> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (rest, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| PkiError::InvalidPublicKey(format!("not a DER SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidPublicKey(
            "trailing bytes after SubjectPublicKeyInfo".into(),
        ));
    }
    if let Some(why) = crate::spki_strict::layout_problem(spki) {
        return Err(PkiError::InvalidPublicKey(format!(
            "not a DER SubjectPublicKeyInfo: {why}"
        )));
    }
    let key = &parsed.subject_public_key.data;
    let alg = parsed.algorithm.algorithm.as_bytes();
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    // Named curves: secp256r1, secp384r1, secp521r1.
    const CURVES: [&[u8]; 3] = [
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        &[0x2b, 0x81, 0x04, 0x00, 0x22],
        &[0x2b, 0x81, 0x04, 0x00, 0x23],
    ];
    let refuse = |what: String| {
        Err(PkiError::InvalidPublicKey(format!(
            "{what}; accepted keys: {ACCEPTED_KEYS}"
        )))
    };
    if alg == ED25519 {
        // RFC 8410: no parameters, 32 key bytes.
        return if parsed.algorithm.parameters.is_none() && crate::spki_strict::ed25519_key_ok(key) {
            Ok(())
        } else {
            refuse("a malformed Ed25519 key".into())
        };
    }
    if alg == EC {
        let curve = parsed
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if CURVES.contains(&c.as_bytes()) => {
                if crate::spki_strict::ec_point_ok(c.as_bytes(), key) {
                    Ok(())
                } else {
                    refuse("an ECDSA key that is not a point on its curve".into())
                }
            }
            _ => refuse("an ECDSA key on an unnamed or unsupported curve".into()),
        };
    }
    if alg == RSA {
        return match parsed.parsed() {
            Ok(PublicKey::RSA(k)) => {
                let bits = rsa_modulus_bits(k.modulus);
                if (2048..=16384).contains(&bits) {
                    Ok(())
                } else {
                    refuse(format!("an RSA key of {bits} bits"))
                }
            }
            _ => refuse("an unreadable RSA key".into()),
        };
    }
    refuse("an unsupported key algorithm (DSA or other)".into())
}

/// Bits in a big-endian unsigned modulus (leading zero bytes ignored).
pub(crate) fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let m = der::strip_leading_zeros(modulus);
    match m.first() {
        Some(first) => m.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Names that go into the `sigil://` URI must be URI-unreserved characters only.
pub(crate) fn check_uri_safe(field: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            field,
            value: value.to_string(),
            reason: "must be 1-128 characters of A-Z a-z 0-9 - . _ ~",
        })
    }
}

pub(crate) fn check_dns_name(name: &str) -> Result<()> {
    let body = name.strip_prefix("*.").unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            field: "DNS name",
            value: name.to_string(),
            reason: "must be an ASCII hostname (labels of A-Z a-z 0-9 - _), optionally starting with '*.'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_safe_names() {
        assert!(check_uri_safe("bot name", "ci-bot_1.x~y").is_ok());
        for bad in ["", "a/b", "a b", "bot?x", "é"] {
            assert!(check_uri_safe("bot name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        for good in ["a.example.com", "*.example.com", "localhost", "my_host"] {
            assert!(check_dns_name(good).is_ok(), "{good}");
        }
        for bad in ["", "*.", "a..b", "a b", "x.*.com", "ex\u{e4}mple.com"] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }
}
