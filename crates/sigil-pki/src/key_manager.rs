//! The extension point for where CA private keys live: in the database ([`crate::SoftwareKeyManager`]),
//! sealed under a key-encryption key ([`crate::EncryptedKeyManager`]) or on a PKCS#11 token.

use std::sync::Arc;

use crate::Result;
use crate::imported_key::ImportedKey;
use crate::keys::{CaPurpose, KeyAlgorithm, StoredKey};

/// A loaded CA private key that can sign. Implementations may keep the key outside the
/// process (HSM, KMS); callers only ever see public material and signatures.
pub trait CaSigningKey: Send + Sync {
    /// Algorithm of the key.
    fn algorithm(&self) -> KeyAlgorithm;
    /// DER SubjectPublicKeyInfo of the public key.
    fn public_key_spki_der(&self) -> Vec<u8>;
    /// Raw public key: uncompressed EC point, or the 32-byte Ed25519 key.
    fn public_key_raw(&self) -> Vec<u8>;
    /// Sign `msg`. ECDSA returns an ASN.1 DER signature (SHA-256); Ed25519 returns 64 bytes.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>>;
}

/// Which key a [`StoredKey`] is: managers bind the key to it (AEAD associated data, token
/// labels), so a stored key moved to another CA's record or another cluster is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyContext<'a> {
    /// Cluster name the key belongs to.
    pub cluster: &'a str,
    /// What the key signs: a [`CaPurpose`] name, or another fixed name (`"audit"`).
    pub purpose: &'a str,
}

impl<'a> KeyContext<'a> {
    /// Context of the `purpose` CA of `cluster`.
    pub fn ca(cluster: &'a str, purpose: CaPurpose) -> Self {
        Self {
            cluster,
            purpose: purpose.as_str(),
        }
    }
}

/// Creates and loads CA keys.
pub trait KeyManager: Send + Sync {
    /// Name recorded in [`StoredKey::manager`].
    fn name(&self) -> &'static str;
    /// Generate a new key for `ctx` and return its persistable record.
    fn generate(&self, ctx: &KeyContext<'_>, alg: KeyAlgorithm) -> Result<StoredKey>;
    /// Take in a key made elsewhere (an organisation's intermediate CA key) for `ctx`, and
    /// keep it the way this manager keeps generated keys: the software manager as PKCS#8,
    /// the encrypted manager sealed under its KEK (bound to `ctx` like a generated key),
    /// the PKCS#11 manager as a sensitive, non-extractable token object. The returned
    /// record loads with [`KeyManager::load`] exactly like a generated one.
    ///
    /// The caller still holds the key in memory (and the file it came from): the HSM
    /// promise "never left the token" does not hold for an imported key; the CSR flow
    /// ([`crate::new_x509_ca_request`]) keeps it.
    fn import(&self, ctx: &KeyContext<'_>, key: &ImportedKey) -> Result<StoredKey>;
    /// Load a key previously returned by [`KeyManager::generate`] or [`KeyManager::import`]
    /// for the same `ctx`.
    fn load(&self, ctx: &KeyContext<'_>, key: &StoredKey) -> Result<Arc<dyn CaSigningKey>>;
    /// Destroy a key no record uses any more (a CA rotated out or rolled back), so it
    /// cannot sign for a relying party that still trusts its CA. `Ok(false)`: nothing
    /// to destroy — the software and encrypted managers keep a key only in the record,
    /// which the store has already replaced; a key already gone.
    fn retire(&self, _ctx: &KeyContext<'_>, _key: &StoredKey) -> Result<bool> {
        Ok(false)
    }
}
