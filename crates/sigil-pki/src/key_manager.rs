//! The extension point for where CA private keys live (software now; HSM/KMS later).

use std::sync::Arc;

use crate::Result;
use crate::keys::{KeyAlgorithm, StoredKey};

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

/// Creates and loads CA keys.
pub trait KeyManager: Send + Sync {
    /// Name recorded in [`StoredKey::manager`].
    fn name(&self) -> &'static str;
    /// Generate a new key and return its persistable record.
    fn generate(&self, alg: KeyAlgorithm) -> Result<StoredKey>;
    /// Load a key previously returned by [`KeyManager::generate`].
    fn load(&self, key: &StoredKey) -> Result<Arc<dyn CaSigningKey>>;
}
