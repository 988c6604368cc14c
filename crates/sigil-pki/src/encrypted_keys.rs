//! [`EncryptedKeyManager`]: CA keys are software keys (aws-lc-rs), stored only sealed with
//! AES-256-GCM under a key-encryption key (KEK) that never enters the database, so a copy
//! of the database alone holds no usable CA key.
//!
//! Each seal uses a fresh random 96-bit nonce (aws-lc-rs `RandomizedNonceKey`). The
//! associated data binds the ciphertext to the cluster, the CA purpose, the key's
//! algorithm, its key id and the KEK id: a sealed key copied into another CA's record (or
//! another cluster) fails to open. The envelope records the KEK id (a hash of the KEK,
//! not the KEK) so a wrong KEK is reported as such rather than as a decryption failure.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::imported_key::ImportedKey;
use crate::key_manager::{CaSigningKey, KeyContext, KeyManager};
use crate::keys::{KeyAlgorithm, StoredKey, random_bytes};
use crate::software_keys::{generate_pkcs8, signing_key_from_pkcs8};
use crate::{PkiError, Result};

const NAME: &str = "encrypted";
const KEK_LEN: usize = 32;
const ENVELOPE_VERSION: u32 = 1;
/// Domain separation for the associated data and the KEK id.
const AAD_LABEL: &[u8] = b"sigil-ca-key-v1";
const KEK_ID_LABEL: &[u8] = b"sigil-kek-id-v1";

/// A 32-byte key-encryption key. Wiped from memory on drop; `Debug` shows only its id.
pub struct Kek {
    key: Zeroizing<[u8; KEK_LEN]>,
    id: String,
}

impl Kek {
    /// A KEK from exactly 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek> {
        let key: [u8; KEK_LEN] = bytes.try_into().map_err(|_| {
            PkiError::InvalidKek("it must be exactly 32 bytes (256 bits) of random data")
        })?;
        let key = Zeroizing::new(key);
        let mut input = Zeroizing::new(Vec::with_capacity(KEK_ID_LABEL.len() + KEK_LEN));
        input.extend_from_slice(KEK_ID_LABEL);
        input.extend_from_slice(key.as_slice());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        // 64 bits is plenty to tell KEKs apart and reveals nothing usable about the KEK.
        let id = hex::encode(&digest.as_ref()[..8]);
        Ok(Kek { key, id })
    }

    /// A KEK written as text: 64 hex digits, or standard base64 of 32 bytes (44 characters).
    /// Surrounding whitespace (a trailing newline) is ignored.
    pub fn from_text(text: &str) -> Result<Kek> {
        let t = text.trim();
        let bytes = Zeroizing::new(if t.len() == 2 * KEK_LEN {
            hex::decode(t).map_err(|_| {
                PkiError::InvalidKek("64 characters but not hex: expected 64 hex digits")
            })?
        } else {
            B64.decode(t).map_err(|_| {
                PkiError::InvalidKek(
                    "neither 64 hex digits nor base64 of 32 bytes (make one with `openssl rand -hex 32`)",
                )
            })?
        });
        Self::from_bytes(&bytes)
    }

    /// A KEK file's contents: 32 raw bytes, or the text forms of [`Kek::from_text`].
    pub fn from_file_contents(data: &[u8]) -> Result<Kek> {
        if data.len() == KEK_LEN {
            return Self::from_bytes(data);
        }
        let text = std::str::from_utf8(data).map_err(|_| {
            PkiError::InvalidKek(
                "not 32 raw bytes, and not text (64 hex digits or base64 of 32 bytes)",
            )
        })?;
        Self::from_text(text)
    }

    /// Public identifier of this KEK (16 hex digits of a SHA-256 over it), recorded with
    /// every key it seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The persisted form of a sealed key (JSON in [`StoredKey::material`]). Cluster and
/// purpose are repeated in clear only to explain a mismatch; what is checked is the AEAD
/// tag over the context the caller expects.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    kek_id: String,
    key_id: String,
    cluster: String,
    purpose: String,
    nonce: String,
    ciphertext: String,
}

/// Key manager whose keys are stored sealed under a [`Kek`].
pub struct EncryptedKeyManager {
    kek_id: String,
    aead: RandomizedNonceKey,
}

impl fmt::Debug for EncryptedKeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedKeyManager")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

impl EncryptedKeyManager {
    /// A manager sealing and opening keys with `kek`.
    pub fn new(kek: &Kek) -> Result<Self> {
        let aead = RandomizedNonceKey::new(&AES_256_GCM, kek.key.as_slice())
            .map_err(|_| PkiError::InvalidKek("aws-lc-rs refused it as an AES-256 key"))?;
        Ok(Self {
            kek_id: kek.id.clone(),
            aead,
        })
    }

    /// The id of this manager's KEK.
    pub fn kek_id(&self) -> &str {
        &self.kek_id
    }

    /// The KEK id a stored key was sealed with, if it is a key of this manager.
    pub fn sealed_kek_id(key: &StoredKey) -> Option<String> {
        if key.manager != NAME {
            return None;
        }
        serde_json::from_str::<Envelope>(&key.material)
            .ok()
            .map(|e| e.kek_id)
    }

    fn seal(&self, ctx: &KeyContext<'_>, alg: KeyAlgorithm, plaintext: &[u8]) -> Result<String> {
        let key_id = hex::encode(random_bytes::<16>()?);
        let aad = associated_data(ctx, alg, &key_id, &self.kek_id);
        let mut buf = Zeroizing::new(plaintext.to_vec());
        let nonce = self
            .aead
            .seal_in_place_append_tag(Aad::from(&aad), &mut *buf)
            .map_err(|_| PkiError::KeyGeneration {
                algorithm: "AES-256-GCM seal",
            })?;
        let env = Envelope {
            v: ENVELOPE_VERSION,
            kek_id: self.kek_id.clone(),
            key_id,
            cluster: ctx.cluster.to_string(),
            purpose: ctx.purpose.to_string(),
            nonce: B64.encode(nonce.as_ref()),
            // Ciphertext and tag only: the plaintext was overwritten in place.
            ciphertext: B64.encode(buf.as_slice()),
        };
        serde_json::to_string(&env).map_err(|_| PkiError::KeyGeneration {
            algorithm: "sealed key encoding",
        })
    }

    fn open(&self, ctx: &KeyContext<'_>, key: &StoredKey) -> Result<Zeroizing<Vec<u8>>> {
        let invalid = |reason| PkiError::InvalidStoredKey {
            algorithm: key.algorithm.as_str(),
            reason,
        };
        let env: Envelope = serde_json::from_str(&key.material)
            .map_err(|_| invalid("sealed key record is not valid JSON"))?;
        if env.v != ENVELOPE_VERSION {
            return Err(invalid(
                "sealed key record has an unknown version (written by a newer Sigil?)",
            ));
        }
        if env.kek_id != self.kek_id {
            return Err(PkiError::WrongKek {
                sealed: env.kek_id,
                this: self.kek_id.clone(),
            });
        }
        if env.cluster != ctx.cluster || env.purpose != ctx.purpose {
            return Err(PkiError::SealedForOtherKey {
                sealed_cluster: env.cluster,
                sealed_purpose: env.purpose,
                cluster: ctx.cluster.to_string(),
                purpose: ctx.purpose.to_string(),
            });
        }
        let nonce_bytes: [u8; NONCE_LEN] = B64
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| invalid("sealed key nonce is not 12 base64 bytes"))?;
        let mut buf = Zeroizing::new(
            B64.decode(&env.ciphertext)
                .map_err(|_| invalid("sealed key ciphertext is not valid base64"))?,
        );
        let aad = associated_data(ctx, key.algorithm, &env.key_id, &self.kek_id);
        let len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| {
                invalid(
                    "sealed key failed authentication: the record was altered or copied from another key; restore it from backup",
                )
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Length-prefixed fields, so no two different contexts encode to the same bytes.
fn associated_data(ctx: &KeyContext<'_>, alg: KeyAlgorithm, key_id: &str, kek_id: &str) -> Vec<u8> {
    let alg_name: &[u8] = match alg {
        KeyAlgorithm::EcdsaP256 => b"ecdsa_p256",
        KeyAlgorithm::Ed25519 => b"ed25519",
    };
    let mut out = AAD_LABEL.to_vec();
    for field in [
        ctx.cluster.as_bytes(),
        ctx.purpose.as_bytes(),
        alg_name,
        key_id.as_bytes(),
        kek_id.as_bytes(),
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

impl KeyManager for EncryptedKeyManager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn generate(&self, ctx: &KeyContext<'_>, alg: KeyAlgorithm) -> Result<StoredKey> {
        let pkcs8 = generate_pkcs8(alg)?;
        Ok(StoredKey {
            manager: NAME.to_string(),
            algorithm: alg,
            material: self.seal(ctx, alg, &pkcs8)?,
        })
    }

    fn import(&self, ctx: &KeyContext<'_>, key: &ImportedKey) -> Result<StoredKey> {
        // Same envelope and associated data as a generated key: nothing tells them apart.
        let pkcs8 = key.pkcs8_der()?;
        Ok(StoredKey {
            manager: NAME.to_string(),
            algorithm: key.algorithm(),
            material: self.seal(ctx, key.algorithm(), &pkcs8)?,
        })
    }

    fn load(&self, ctx: &KeyContext<'_>, key: &StoredKey) -> Result<Arc<dyn CaSigningKey>> {
        if key.manager != NAME {
            return Err(PkiError::WrongKeyManager {
                stored: key.manager.clone(),
                manager: NAME,
            });
        }
        let pkcs8 = self.open(ctx, key)?;
        signing_key_from_pkcs8(key.algorithm, &pkcs8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaPurpose, SoftwareKeyManager};
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&[byte; 32]).unwrap()
    }

    fn ctx(purpose: CaPurpose) -> KeyContext<'static> {
        KeyContext::ca("prod", purpose)
    }

    #[test]
    fn seal_unseal_round_trip_signs_and_hides_the_key() {
        let km = EncryptedKeyManager::new(&kek(7)).unwrap();
        for (alg, purpose, verify) in [
            (
                KeyAlgorithm::EcdsaP256,
                CaPurpose::Host,
                &ECDSA_P256_SHA256_ASN1 as &dyn aws_lc_rs::signature::VerificationAlgorithm,
            ),
            (KeyAlgorithm::Ed25519, CaPurpose::SshUser, &ED25519),
        ] {
            let stored = km.generate(&ctx(purpose), alg).unwrap();
            assert_eq!(stored.manager, "encrypted");
            let env: Envelope = serde_json::from_str(&stored.material).unwrap();
            assert_eq!(env.kek_id, km.kek_id());
            let key = km.load(&ctx(purpose), &stored).unwrap();
            let sig = key.sign(b"msg").unwrap();
            let pk = UnparsedPublicKey::new(verify, key.public_key_raw());
            pk.verify(b"msg", &sig).unwrap();
            // The material is not a software key: the software manager cannot read it,
            // even when the manager name is forged.
            let mut forged = stored.clone();
            forged.manager = "software".into();
            assert!(SoftwareKeyManager.load(&ctx(purpose), &forged).is_err());
        }
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let km = EncryptedKeyManager::new(&kek(7)).unwrap();
        let a = km.generate(&ctx(CaPurpose::Host), KeyAlgorithm::EcdsaP256);
        let b = km.generate(&ctx(CaPurpose::Host), KeyAlgorithm::EcdsaP256);
        let (a, b): (Envelope, Envelope) = (
            serde_json::from_str(&a.unwrap().material).unwrap(),
            serde_json::from_str(&b.unwrap().material).unwrap(),
        );
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.key_id, b.key_id);
    }

    #[test]
    fn wrong_kek_names_both_ids() {
        let sealer = EncryptedKeyManager::new(&kek(1)).unwrap();
        let other = EncryptedKeyManager::new(&kek(2)).unwrap();
        assert_ne!(sealer.kek_id(), other.kek_id());
        let stored = sealer
            .generate(&ctx(CaPurpose::Client), KeyAlgorithm::EcdsaP256)
            .unwrap();
        assert_eq!(
            EncryptedKeyManager::sealed_kek_id(&stored).as_deref(),
            Some(sealer.kek_id())
        );
        let err = other
            .load(&ctx(CaPurpose::Client), &stored)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("sealed with KEK id {}", sealer.kek_id())),
            "{err}"
        );
        assert!(
            err.contains(&format!("this KEK is {}", other.kek_id())),
            "{err}"
        );
    }

    #[test]
    fn key_moved_to_another_purpose_or_cluster_is_refused() {
        let km = EncryptedKeyManager::new(&kek(3)).unwrap();
        let stored = km
            .generate(&ctx(CaPurpose::Spiffe), KeyAlgorithm::EcdsaP256)
            .unwrap();
        let err = km
            .load(&ctx(CaPurpose::Host), &stored)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("spiffe") && err.contains("host"), "{err}");
        let err = km
            .load(&KeyContext::ca("staging", CaPurpose::Spiffe), &stored)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("staging"), "{err}");

        // Rewriting the clear copy of the context does not help: the AAD is what counts.
        let mut env: Envelope = serde_json::from_str(&stored.material).unwrap();
        env.purpose = "host".into();
        let moved = StoredKey {
            material: serde_json::to_string(&env).unwrap(),
            ..stored.clone()
        };
        let err = km
            .load(&ctx(CaPurpose::Host), &moved)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("failed authentication"), "{err}");
        // Nor does relabelling the algorithm.
        let relabelled = StoredKey {
            algorithm: KeyAlgorithm::Ed25519,
            ..stored.clone()
        };
        assert!(km.load(&ctx(CaPurpose::Spiffe), &relabelled).is_err());
        assert!(km.load(&ctx(CaPurpose::Spiffe), &stored).is_ok());
    }

    #[test]
    fn tampered_ciphertext_nonce_or_key_id_is_refused() {
        let km = EncryptedKeyManager::new(&kek(4)).unwrap();
        let stored = km
            .generate(&ctx(CaPurpose::Jwt), KeyAlgorithm::EcdsaP256)
            .unwrap();
        let env: Envelope = serde_json::from_str(&stored.material).unwrap();
        let tamper = |f: &dyn Fn(&mut Envelope)| {
            let mut e: Envelope = serde_json::from_str(&stored.material).unwrap();
            f(&mut e);
            let k = StoredKey {
                material: serde_json::to_string(&e).unwrap(),
                ..stored.clone()
            };
            km.load(&ctx(CaPurpose::Jwt), &k).err().unwrap().to_string()
        };
        let mut ct = B64.decode(&env.ciphertext).unwrap();
        ct[10] ^= 1;
        let flipped = B64.encode(&ct);
        let err = tamper(&|e| e.ciphertext = flipped.clone());
        assert!(err.contains("failed authentication"), "{err}");
        let err = tamper(&|e| e.nonce = B64.encode([0u8; 12]));
        assert!(err.contains("failed authentication"), "{err}");
        let err = tamper(&|e| e.key_id = "00".repeat(16));
        assert!(err.contains("failed authentication"), "{err}");
        let err = tamper(&|e| e.v = 9);
        assert!(err.contains("unknown version"), "{err}");
        let err = tamper(&|e| e.nonce = "AAAA".into());
        assert!(err.contains("nonce"), "{err}");
        // A software key handed to this manager is refused by name.
        let soft = SoftwareKeyManager
            .generate(&ctx(CaPurpose::Jwt), KeyAlgorithm::EcdsaP256)
            .unwrap();
        assert!(matches!(
            km.load(&ctx(CaPurpose::Jwt), &soft),
            Err(PkiError::WrongKeyManager { .. })
        ));
    }

    #[test]
    fn kek_text_forms_and_bad_keks() {
        let raw = [0x5au8; 32];
        let id = Kek::from_bytes(&raw).unwrap().id().to_string();
        assert_eq!(id.len(), 16);
        let hex_text = format!("{}\n", hex::encode(raw));
        let b64_text = format!("  {}\n", B64.encode(raw));
        for k in [
            Kek::from_text(&hex_text).unwrap(),
            Kek::from_text(&b64_text).unwrap(),
            Kek::from_file_contents(hex_text.as_bytes()).unwrap(),
            Kek::from_file_contents(&raw).unwrap(),
        ] {
            assert_eq!(k.id(), id);
            assert!(!format!("{k:?}").contains(&hex::encode(raw)));
        }
        assert!(Kek::from_bytes(&[1u8; 16]).is_err());
        assert!(Kek::from_text(&"zz".repeat(32)).is_err());
        assert!(Kek::from_text("short").is_err());
        assert!(Kek::from_text(&B64.encode([1u8; 31])).is_err());
        assert!(Kek::from_file_contents(&[0xffu8; 40]).is_err());
        // The id does not reveal the KEK: it is not a prefix of it in any encoding.
        assert!(!hex::encode(raw).contains(&id));
    }
}
