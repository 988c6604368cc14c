//! CA purposes, key algorithms and the serialisable records a CA is persisted as.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a CA signs. One key per purpose keeps the blast radius of a compromise small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaPurpose {
    /// TLS server certificates of the auth service and hosts.
    Host,
    /// Bot identities for the control plane and app access.
    Client,
    /// OpenSSH user certificates.
    SshUser,
    /// OpenSSH host certificates.
    SshHost,
    /// PostgreSQL (and other database) client certificates.
    DbClient,
    /// SPIFFE X.509-SVIDs.
    Spiffe,
    /// JWT-SVIDs.
    Jwt,
    /// Kubernetes client certificates (CN = user, O = groups), for the API
    /// server's `--client-ca-file`.
    Kubernetes,
}

impl CaPurpose {
    /// Every purpose, in a stable order.
    pub const ALL: [CaPurpose; 8] = [
        CaPurpose::Host,
        CaPurpose::Client,
        CaPurpose::SshUser,
        CaPurpose::SshHost,
        CaPurpose::DbClient,
        CaPurpose::Spiffe,
        CaPurpose::Jwt,
        CaPurpose::Kubernetes,
    ];

    /// The kebab-case name used in storage, URLs and certificate subjects.
    pub fn as_str(&self) -> &'static str {
        match self {
            CaPurpose::Host => "host",
            CaPurpose::Client => "client",
            CaPurpose::SshUser => "ssh-user",
            CaPurpose::SshHost => "ssh-host",
            CaPurpose::DbClient => "db-client",
            CaPurpose::Spiffe => "spiffe",
            CaPurpose::Jwt => "jwt",
            CaPurpose::Kubernetes => "kubernetes",
        }
    }

    /// True for the OpenSSH CAs (`ssh-user`, `ssh-host`).
    pub fn is_ssh(&self) -> bool {
        matches!(self, CaPurpose::SshUser | CaPurpose::SshHost)
    }
}

impl fmt::Display for CaPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signature algorithm of a CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAlgorithm {
    /// ECDSA over P-256 with SHA-256 (X.509 default).
    EcdsaP256,
    /// Ed25519 (OpenSSH CAs).
    Ed25519,
}

impl KeyAlgorithm {
    /// Human-readable name for messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::Ed25519 => "Ed25519",
        }
    }
}

/// A CA private key as persisted by a [`crate::KeyManager`].
///
/// For the software manager `material` is the base64 PKCS#8 DER; an HSM manager would store
/// a handle instead. `Debug` never prints `material`.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// Name of the key manager that can load this key (`"software"`).
    pub manager: String,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Manager-specific material (secret for the software manager).
    pub material: String,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("manager", &self.manager)
            .field("algorithm", &self.algorithm)
            .field("material", &"[redacted]")
            .finish()
    }
}

/// A CA as persisted in the store: its key record plus the public half tools need.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCa {
    /// What the CA signs.
    pub purpose: CaPurpose,
    /// Cluster name the CA belongs to.
    pub cluster: String,
    /// The private key record.
    pub key: StoredKey,
    /// PEM of the CA's own certificate (X.509 CAs): self-signed for a generated CA, issued
    /// by an organisation's CA for an imported one.
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// PEM of the certificates above `cert_pem` for an intermediate CA (see
    /// [`crate::import_x509_ca`]): its issuer first, then each issuer's issuer, up to and
    /// optionally including the self-signed root. `None` for a self-signed CA; records
    /// written before intermediates existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    /// authorized_keys-style public key line (SSH CAs).
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// When the CA was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created: time::OffsetDateTime,
}

impl fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCa")
            .field("purpose", &self.purpose)
            .field("cluster", &self.cluster)
            .field("key", &self.key)
            .field("has_cert_pem", &self.cert_pem.is_some())
            .field("has_chain_pem", &self.chain_pem.is_some())
            .field("ssh_public_key", &self.ssh_public_key)
            .field("created", &self.created)
            .finish()
    }
}

/// Lowercase hex of the SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Fill a fresh buffer with cryptographically random bytes from aws-lc-rs.
pub(crate) fn random_bytes<const N: usize>() -> crate::Result<[u8; N]> {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| crate::PkiError::KeyGeneration {
        algorithm: "random",
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_names_match_serde() {
        for p in CaPurpose::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            let back: CaPurpose = serde_json::from_str(&json).unwrap();
            assert_eq!(back, p);
        }
        assert!(CaPurpose::SshUser.is_ssh() && CaPurpose::SshHost.is_ssh());
        assert!(!CaPurpose::Client.is_ssh() && !CaPurpose::Jwt.is_ssh());
    }

    #[test]
    fn algorithm_serde_is_snake_case() {
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::EcdsaP256).unwrap(),
            "\"ecdsa_p256\""
        );
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::Ed25519).unwrap(),
            "\"ed25519\""
        );
    }

    #[test]
    fn stored_key_debug_redacts_material() {
        let k = StoredKey {
            manager: "software".into(),
            algorithm: KeyAlgorithm::Ed25519,
            material: "TOPSECRETMATERIAL".into(),
        };
        let s = format!("{k:?}");
        assert!(!s.contains("TOPSECRET"), "{s}");
        assert!(s.contains("software"));
    }

    #[test]
    fn sha256_hex_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
