//! Key pairs an agent generates for itself: an ECDSA P-256 TLS key and an Ed25519 SSH key.
//! All randomness and key generation comes from aws-lc-rs.

use std::fmt;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, Curve25519SeedBin};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::keys::sha256_hex;
use crate::{PkiError, Result};

const PKCS8_LABEL: &str = "PRIVATE KEY";

/// An ECDSA P-256 key pair for TLS client/server certificates.
pub struct TlsKeyPair {
    pkcs8: Zeroizing<Vec<u8>>,
    kp: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl fmt::Debug for TlsKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsKeyPair")
            .field("spki_sha256", &self.spki_sha256_hex())
            .finish_non_exhaustive()
    }
}

impl TlsKeyPair {
    /// Generate a fresh P-256 key.
    pub fn generate() -> Result<Self> {
        // Generate in place and export, rather than export and re-parse: a
        // re-parse re-validates the point (a scalar multiplication) for a key
        // we just made. Agents generate one per renewal.
        let gen_err = |_| PkiError::KeyGeneration {
            algorithm: "ECDSA P-256",
        };
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(gen_err)?;
        let doc = kp.to_pkcs8v1().map_err(gen_err)?;
        let spki = kp.public_key().as_der().map_err(gen_err)?.as_ref().to_vec();
        Ok(Self {
            pkcs8: Zeroizing::new(doc.as_ref().to_vec()),
            kp,
            spki,
        })
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(|_| {
            PkiError::InvalidStoredKey {
                algorithm: "ECDSA P-256",
                reason: "not an unencrypted PKCS#8 P-256 private key",
            }
        })?;
        let spki = kp
            .public_key()
            .as_der()
            .map_err(|_| PkiError::InvalidStoredKey {
                algorithm: "ECDSA P-256",
                reason: "public key could not be encoded",
            })?
            .as_ref()
            .to_vec();
        Ok(Self {
            pkcs8: Zeroizing::new(der.to_vec()),
            kp,
            spki,
        })
    }

    /// Parse a `-----BEGIN PRIVATE KEY-----` (unencrypted PKCS#8) P-256 key.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self> {
        let block = pem::parse(pem_text).map_err(|e| PkiError::InvalidPem(e.to_string()))?;
        if block.tag() != PKCS8_LABEL {
            return Err(PkiError::InvalidPem(format!(
                "expected a '{PKCS8_LABEL}' block, found '{}'",
                block.tag()
            )));
        }
        let der = Zeroizing::new(block.into_contents());
        Self::from_pkcs8_der(&der)
    }

    /// PEM `-----BEGIN PRIVATE KEY-----` (unencrypted PKCS#8, LF line endings).
    pub fn to_pkcs8_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new(PKCS8_LABEL, self.pkcs8.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Unencrypted PKCS#8 DER (what the SPIFFE Workload API hands out).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// DER SubjectPublicKeyInfo, the input to `X509Ca::issue_*`.
    pub fn spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// Lowercase hex SHA-256 of [`TlsKeyPair::spki_der`] (compare with `CertInfo::spki_sha256_hex`).
    pub fn spki_sha256_hex(&self) -> String {
        sha256_hex(&self.spki)
    }

    /// The aws-lc-rs key pair, for building a rustls signing key or signing directly.
    pub fn key_pair(&self) -> &EcdsaKeyPair {
        &self.kp
    }
}

/// An Ed25519 SSH key pair.
pub struct SshKeyPair {
    key: PrivateKey,
    public_openssh: String,
}

impl fmt::Debug for SshKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshKeyPair")
            .field("public", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

fn ssh_err(context: &'static str) -> impl FnOnce(ssh_key::Error) -> PkiError {
    move |e| PkiError::Ssh {
        context,
        reason: e.to_string(),
    }
}

impl SshKeyPair {
    /// Generate a fresh Ed25519 key (aws-lc-rs) with `comment`.
    pub fn generate(comment: &str) -> Result<Self> {
        let gen_err = || PkiError::KeyGeneration {
            algorithm: "Ed25519",
        };
        let kp = Ed25519KeyPair::generate().map_err(|_| gen_err())?;
        let seed = kp.seed().map_err(|_| gen_err())?;
        let seed: Curve25519SeedBin<'_> = seed.as_be_bytes().map_err(|_| gen_err())?;
        let mut both = Zeroizing::new([0u8; Ed25519Keypair::BYTE_SIZE]);
        let (sk, pk) = both.split_at_mut(32);
        if seed.as_ref().len() != 32 || kp.public_key().as_ref().len() != 32 {
            return Err(gen_err());
        }
        sk.copy_from_slice(seed.as_ref());
        pk.copy_from_slice(kp.public_key().as_ref());
        // from_bytes re-derives the public key and checks it matches aws-lc-rs's.
        let pair = Ed25519Keypair::from_bytes(&both).map_err(ssh_err("key import"))?;
        let key =
            PrivateKey::new(KeypairData::Ed25519(pair), comment).map_err(ssh_err("key import"))?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<Self> {
        let public_openssh = key
            .public_key()
            .to_openssh()
            .map_err(ssh_err("public key encoding"))?;
        Ok(Self {
            key,
            public_openssh,
        })
    }

    /// Parse an unencrypted `-----BEGIN OPENSSH PRIVATE KEY-----` Ed25519 key.
    pub fn from_openssh(text: &str) -> Result<Self> {
        let key = PrivateKey::from_openssh(text).map_err(ssh_err("private key parse"))?;
        if key.is_encrypted() {
            return Err(PkiError::InvalidStoredKey {
                algorithm: "Ed25519",
                reason: "the OpenSSH key is passphrase-encrypted; store it unencrypted",
            });
        }
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(PkiError::InvalidStoredKey {
                algorithm: "Ed25519",
                reason: "the OpenSSH key is not an Ed25519 key",
            });
        }
        Self::from_key(key)
    }

    /// Unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`); write it mode 0600.
    pub fn to_openssh_private(&self) -> Result<String> {
        let text = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(ssh_err("private key encoding"))?;
        Ok(text.as_str().to_owned())
    }

    /// `ssh-ed25519 AAAA… <comment>`.
    pub fn public_openssh(&self) -> String {
        self.public_openssh.clone()
    }

    /// The ssh-key private key (for signing SSH handshakes or SSHSIG).
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_pem_round_trip_keeps_key() {
        let k = TlsKeyPair::generate().unwrap();
        let pem = k.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = TlsKeyPair::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.spki_der(), k.spki_der());
        assert_eq!(back.pkcs8_der(), k.pkcs8_der());
        assert_eq!(k.spki_sha256_hex().len(), 64);
        assert_ne!(TlsKeyPair::generate().unwrap().spki_der(), k.spki_der());
    }

    #[test]
    fn tls_rejects_wrong_label_and_garbage() {
        let k = TlsKeyPair::generate().unwrap();
        let wrong = pem::encode(&pem::Pem::new("EC PRIVATE KEY", k.pkcs8_der().to_vec()));
        assert!(TlsKeyPair::from_pkcs8_pem(&wrong).is_err());
        let junk = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert!(TlsKeyPair::from_pkcs8_pem(&junk).is_err());
    }

    #[test]
    fn ssh_round_trip() {
        let k = SshKeyPair::generate("bot@test").unwrap();
        assert!(k.public_openssh().starts_with("ssh-ed25519 AAAA"));
        assert!(k.public_openssh().ends_with(" bot@test"));
        let text = k.to_openssh_private().unwrap();
        let back = SshKeyPair::from_openssh(&text).unwrap();
        assert_eq!(back.public_openssh(), k.public_openssh());
    }

    #[test]
    fn debug_does_not_print_private_material() {
        let t = TlsKeyPair::generate().unwrap();
        let pem = t.to_pkcs8_pem();
        let body: String = pem.lines().nth(1).unwrap().to_string();
        let d = format!("{t:?}");
        assert!(!d.contains(&body[..20]), "{d}");
        let s = SshKeyPair::generate("c").unwrap();
        let priv_text = s.to_openssh_private().unwrap();
        let line = priv_text.lines().nth(2).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains(&line[..20]), "{d}");
        assert!(d.contains("ssh-ed25519"));
    }
}
