//! [`ImportedKey`]: a CA private key made outside Sigil (an organisation's intermediate CA),
//! read from PEM or DER and handed to [`crate::KeyManager::import`].
//!
//! Only ECDSA P-256 is accepted, because that is what the X.509 CAs sign with (and what a
//! token must hold for [`crate::Pkcs11KeyManager`]). Before aws-lc-rs sees the key, its
//! algorithm is read from the DER header, so a refusal names what the key is ("RSA",
//! "ECDSA P-384") rather than "rejected". Errors never carry key material: PEM and
//! aws-lc-rs errors (which may quote input bytes) are replaced by fixed messages.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::der::{self, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE};
use crate::keys::{KeyAlgorithm, sha256_hex};
use crate::{PkiError, Result};

/// What [`ImportedKey`] accepts, as said in errors.
pub const ACCEPTED_IMPORT_KEYS: &str = "ECDSA P-256";

// OID contents (no tag/length).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];

/// A CA private key to import. Holds the parsed key only; `Debug` shows its public-key
/// pin, never the key.
pub struct ImportedKey {
    kp: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportedKey")
            .field("algorithm", &KeyAlgorithm::EcdsaP256)
            .field("spki_sha256", &sha256_hex(&self.spki))
            .finish_non_exhaustive()
    }
}

impl ImportedKey {
    /// A key from PEM: `-----BEGIN PRIVATE KEY-----` (unencrypted PKCS#8, what
    /// `openssl genpkey` writes) or `-----BEGIN EC PRIVATE KEY-----` (SEC1 / RFC 5915, what
    /// `openssl ecparam -genkey` writes; an `EC PARAMETERS` block before it is skipped).
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        // The pem crate's errors can quote the offending byte: say nothing of the input.
        let blocks = pem::parse_many(pem_text)
            .map_err(|_| PkiError::InvalidImportKey("the key file is not valid PEM"))?;
        let mut found = None;
        for block in blocks {
            let tag = block.tag().to_string();
            let contents = Zeroizing::new(block.into_contents());
            match tag.as_str() {
                "EC PARAMETERS" => continue,
                "PRIVATE KEY" | "EC PRIVATE KEY" if found.is_none() => {
                    found = Some((tag, contents))
                }
                "PRIVATE KEY" | "EC PRIVATE KEY" => {
                    return Err(PkiError::InvalidImportKey(
                        "the key file holds more than one private key: give the CA's key alone",
                    ));
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(PkiError::InvalidImportKey(
                        "the key is encrypted (ENCRYPTED PRIVATE KEY): decrypt it into a file only you can read, e.g. `(umask 077; openssl pkey -in KEY -out KEY.plain)`, import that and delete it",
                    ));
                }
                "RSA PRIVATE KEY" => {
                    return Err(unsupported("RSA".into()));
                }
                "CERTIFICATE" => {
                    return Err(PkiError::InvalidImportKey(
                        "the key file holds a CERTIFICATE: give the certificate chain and the private key as separate files",
                    ));
                }
                _ => {
                    return Err(PkiError::InvalidImportKey(
                        "the key file holds a PEM block other than PRIVATE KEY or EC PRIVATE KEY",
                    ));
                }
            }
        }
        match found {
            Some((tag, der)) if tag == "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            Some((_, der)) => Self::from_sec1_der(&der),
            None => Err(PkiError::InvalidImportKey(
                "the key file holds no '-----BEGIN PRIVATE KEY-----' block",
            )),
        }
    }

    /// A key from unencrypted PKCS#8 DER (`PrivateKeyInfo`, RFC 5208/5958).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        check_supported(pkcs8_algorithm(der)?)?;
        Self::from_checked_der(der)
    }

    /// A key from SEC1 `ECPrivateKey` DER (RFC 5915), which must name its curve.
    fn from_sec1_der(der: &[u8]) -> Result<Self> {
        check_supported(sec1_algorithm(der)?)?;
        Self::from_checked_der(der)
    }

    fn from_checked_der(der: &[u8]) -> Result<Self> {
        // aws-lc-rs checks the scalar and, when the encoding carries one, that the public
        // key belongs to it.
        let kp = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|_| {
                PkiError::InvalidImportKey(
                    "aws-lc-rs rejected the ECDSA P-256 key (corrupt, or its public key does not match its private key)",
                )
            })?;
        let spki = kp
            .public_key()
            .as_der()
            .map_err(|_| PkiError::InvalidImportKey("its public key could not be encoded"))?
            .as_ref()
            .to_vec();
        Ok(Self { kp, spki })
    }

    /// Algorithm of the key (always [`KeyAlgorithm::EcdsaP256`]).
    pub fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256
    }

    /// DER SubjectPublicKeyInfo of the key's public half.
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Uncompressed public point (65 bytes), e.g. for a token's CKA_EC_POINT.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    pub(crate) fn public_point(&self) -> &[u8] {
        self.kp.public_key().as_ref()
    }

    /// The key as normalised PKCS#8 v1 DER (attributes and encoding quirks dropped),
    /// wiped when dropped.
    pub(crate) fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let doc = self
            .kp
            .to_pkcs8v1()
            .map_err(|_| PkiError::InvalidImportKey("it could not be encoded as PKCS#8"))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The private scalar, big-endian, 32 bytes (CKA_VALUE of a PKCS#11 EC private key),
    /// wiped when dropped.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    pub(crate) fn private_scalar(&self) -> Result<Zeroizing<Vec<u8>>> {
        use aws_lc_rs::encoding::AsBigEndian as _;
        let bin = self
            .kp
            .private_key()
            .as_be_bytes()
            .map_err(|_| PkiError::InvalidImportKey("its private scalar could not be read"))?;
        Ok(Zeroizing::new(bin.as_ref().to_vec()))
    }
}

fn unsupported(found: String) -> PkiError {
    PkiError::UnsupportedKeyAlgorithm {
        found,
        accepted: ACCEPTED_IMPORT_KEYS,
    }
}

/// What a key is, as read from its AlgorithmIdentifier / curve.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    P256,
    Other(String),
}

fn check_supported(found: Found) -> Result<()> {
    match found {
        Found::P256 => Ok(()),
        Found::Other(name) => Err(unsupported(name)),
    }
}

fn curve_name(oid: &[u8]) -> Found {
    match oid {
        OID_P256 => Found::P256,
        OID_P384 => Found::Other("ECDSA P-384".into()),
        OID_P521 => Found::Other("ECDSA P-521".into()),
        OID_SECP256K1 => Found::Other("ECDSA secp256k1".into()),
        other => Found::Other(format!(
            "ECDSA on an unsupported curve (OID {})",
            der::oid_to_string(other).unwrap_or_else(|| "unreadable".into())
        )),
    }
}

const MALFORMED_PKCS8: &str = "it is not a PKCS#8 PrivateKeyInfo (DER)";

/// The algorithm of a PKCS#8 `PrivateKeyInfo`: SEQUENCE { version, AlgorithmIdentifier
/// SEQUENCE { OID, parameters }, privateKey OCTET STRING, ... }.
fn pkcs8_algorithm(input: &[u8]) -> Result<Found> {
    let bad = || PkiError::InvalidImportKey(MALFORMED_PKCS8);
    let (tag, body, rest) = der::read_tlv(input).ok_or_else(bad)?;
    if tag != TAG_SEQUENCE || !rest.is_empty() {
        return Err(bad());
    }
    let (tag, _version, body) = der::read_tlv(body).ok_or_else(bad)?;
    if tag != der::TAG_INTEGER {
        return Err(bad());
    }
    let (tag, alg_id, body) = der::read_tlv(body).ok_or_else(bad)?;
    if tag != TAG_SEQUENCE {
        return Err(bad());
    }
    if der::read_tlv(body).map(|(t, _, _)| t) != Some(TAG_OCTET_STRING) {
        return Err(bad());
    }
    let (tag, oid, params) = der::read_tlv(alg_id).ok_or_else(bad)?;
    if tag != TAG_OID {
        return Err(bad());
    }
    Ok(match oid {
        OID_EC_PUBLIC_KEY => match der::read_tlv(params) {
            Some((TAG_OID, curve, _)) => curve_name(curve),
            _ => Found::Other("ECDSA with explicit (unnamed) curve parameters".into()),
        },
        OID_RSA | OID_RSA_PSS => Found::Other("RSA".into()),
        OID_DSA => Found::Other("DSA".into()),
        OID_ED25519 => Found::Other("Ed25519".into()),
        OID_ED448 => Found::Other("Ed448".into()),
        OID_X25519 => Found::Other("X25519 (a key-agreement key)".into()),
        other => Found::Other(format!(
            "a key of algorithm OID {}",
            der::oid_to_string(other).unwrap_or_else(|| "unreadable".into())
        )),
    })
}

/// The curve of a SEC1 `ECPrivateKey`: SEQUENCE { version 1, privateKey OCTET STRING,
/// [0] parameters OID OPTIONAL, [1] publicKey OPTIONAL }.
fn sec1_algorithm(input: &[u8]) -> Result<Found> {
    let bad = || PkiError::InvalidImportKey("it is not a SEC1 ECPrivateKey (DER)");
    let (tag, body, rest) = der::read_tlv(input).ok_or_else(bad)?;
    if tag != TAG_SEQUENCE || !rest.is_empty() {
        return Err(bad());
    }
    let (_, _version, body) = der::read_tlv(body).ok_or_else(bad)?;
    let (tag, _scalar, mut body) = der::read_tlv(body).ok_or_else(bad)?;
    if tag != TAG_OCTET_STRING {
        return Err(bad());
    }
    while let Some((tag, content, rest)) = der::read_tlv(body) {
        if tag == 0xa0 {
            return match der::read_tlv(content) {
                Some((TAG_OID, curve, _)) => Ok(curve_name(curve)),
                _ => Ok(Found::Other(
                    "ECDSA with explicit (unnamed) curve parameters".into(),
                )),
            };
        }
        body = rest;
    }
    Err(PkiError::InvalidImportKey(
        "the EC PRIVATE KEY does not name its curve: convert it to PKCS#8 with `openssl pkey -in KEY`",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, Ed25519KeyPair};

    fn pem_of(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der.to_vec()))
    }

    #[test]
    fn p256_pkcs8_and_sec1_are_the_same_key() {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        let a = ImportedKey::from_pem(&pem_of("PRIVATE KEY", doc.as_ref())).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
        let sec1 = kp.private_key().as_der().unwrap();
        let text = format!(
            "{}{}",
            pem_of(
                "EC PARAMETERS",
                &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
            ),
            pem_of("EC PRIVATE KEY", sec1.as_ref())
        );
        let b = ImportedKey::from_pem(&text).unwrap();
        assert_eq!(a.public_key_spki_der(), b.public_key_spki_der());
        assert_eq!(a.private_scalar().unwrap().len(), 32);
        assert_eq!(a.public_point().len(), 65);
        let dbg = format!("{a:?}");
        assert!(
            dbg.contains("spki_sha256")
                && !dbg.contains(&hex::encode(&*a.private_scalar().unwrap()))
        );
    }

    #[test]
    fn other_algorithms_are_named() {
        let p384 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        let err = ImportedKey::from_pkcs8_der(p384.as_ref())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ECDSA P-384") && err.contains("ECDSA P-256"),
            "{err}"
        );
        let ed = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let err = ImportedKey::from_pkcs8_der(ed.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("Ed25519"), "{err}");
        let err = ImportedKey::from_pem(&pem_of("ENCRYPTED PRIVATE KEY", &[1, 2]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("encrypted"), "{err}");
        let err =
            ImportedKey::from_pem("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
                .to_string();
        assert!(!err.contains("!!!"), "{err}");
        assert!(ImportedKey::from_pkcs8_der(&[0x30, 0x00]).is_err());
    }
}
