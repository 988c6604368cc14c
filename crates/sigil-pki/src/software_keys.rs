//! [`SoftwareKeyManager`]: CA keys held in process memory by aws-lc-rs, persisted as PKCS#8.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::imported_key::ImportedKey;
use crate::key_manager::{CaSigningKey, KeyContext, KeyManager};
use crate::keys::{KeyAlgorithm, StoredKey};
use crate::{PkiError, Result};

/// Key manager whose keys are software keys (base64 PKCS#8 DER in [`StoredKey::material`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftwareKeyManager;

const NAME: &str = "software";

impl KeyManager for SoftwareKeyManager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn generate(&self, _ctx: &KeyContext<'_>, alg: KeyAlgorithm) -> Result<StoredKey> {
        let pkcs8 = generate_pkcs8(alg)?;
        Ok(StoredKey {
            manager: NAME.to_string(),
            algorithm: alg,
            material: B64.encode(pkcs8.as_slice()),
        })
    }

    fn import(&self, _ctx: &KeyContext<'_>, key: &ImportedKey) -> Result<StoredKey> {
        let pkcs8 = key.pkcs8_der()?;
        Ok(StoredKey {
            manager: NAME.to_string(),
            algorithm: key.algorithm(),
            material: B64.encode(pkcs8.as_slice()),
        })
    }

    fn load(&self, _ctx: &KeyContext<'_>, key: &StoredKey) -> Result<Arc<dyn CaSigningKey>> {
        if key.manager != NAME {
            return Err(PkiError::WrongKeyManager {
                stored: key.manager.clone(),
                manager: NAME,
            });
        }
        let der = Zeroizing::new(B64.decode(key.material.trim()).map_err(|_| {
            PkiError::InvalidStoredKey {
                algorithm: key.algorithm.as_str(),
                reason: "material is not valid base64",
            }
        })?);
        signing_key_from_pkcs8(key.algorithm, &der)
    }
}

/// A new private key of `alg` as PKCS#8 DER, wiped from memory when dropped.
pub(crate) fn generate_pkcs8(alg: KeyAlgorithm) -> Result<Zeroizing<Vec<u8>>> {
    let gen_err = || PkiError::KeyGeneration {
        algorithm: alg.as_str(),
    };
    let doc = match alg {
        KeyAlgorithm::EcdsaP256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .map_err(|_| gen_err())?
        }
        KeyAlgorithm::Ed25519 => {
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| gen_err())?
        }
    };
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

/// An in-process signing key from PKCS#8 DER (shared with the encrypted manager, whose
/// keys are the same software keys once unsealed).
pub(crate) fn signing_key_from_pkcs8(
    alg: KeyAlgorithm,
    der: &[u8],
) -> Result<Arc<dyn CaSigningKey>> {
    let rejected = |_| PkiError::InvalidStoredKey {
        algorithm: alg.as_str(),
        reason: "PKCS#8 DER rejected by aws-lc-rs (wrong algorithm or corrupt)",
    };
    Ok(match alg {
        KeyAlgorithm::EcdsaP256 => {
            let kp =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(rejected)?;
            Arc::new(SoftwareEcdsaKey::new(kp)?)
        }
        KeyAlgorithm::Ed25519 => {
            let kp = Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?;
            Arc::new(SoftwareEd25519Key::new(kp)?)
        }
    })
}

/// Public-key encodings computed once at load, because issuance asks for them repeatedly.
struct PublicParts {
    spki_der: Vec<u8>,
    raw: Vec<u8>,
}

struct SoftwareEcdsaKey {
    kp: EcdsaKeyPair,
    public: PublicParts,
    rng: SystemRandom,
}

impl SoftwareEcdsaKey {
    fn new(kp: EcdsaKeyPair) -> Result<Self> {
        let spki_der = kp
            .public_key()
            .as_der()
            .map_err(|_| PkiError::InvalidStoredKey {
                algorithm: KeyAlgorithm::EcdsaP256.as_str(),
                reason: "public key could not be encoded",
            })?
            .as_ref()
            .to_vec();
        let raw = kp.public_key().as_ref().to_vec();
        Ok(Self {
            kp,
            public: PublicParts { spki_der, raw },
            rng: SystemRandom::new(),
        })
    }
}

impl CaSigningKey for SoftwareEcdsaKey {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256
    }
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.public.spki_der.clone()
    }
    fn public_key_raw(&self) -> Vec<u8> {
        self.public.raw.clone()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.kp
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::Signing {
                algorithm: KeyAlgorithm::EcdsaP256.as_str(),
            })
    }
}

struct SoftwareEd25519Key {
    kp: Ed25519KeyPair,
    public: PublicParts,
}

impl SoftwareEd25519Key {
    fn new(kp: Ed25519KeyPair) -> Result<Self> {
        let spki_der = kp
            .public_key()
            .as_der()
            .map_err(|_| PkiError::InvalidStoredKey {
                algorithm: KeyAlgorithm::Ed25519.as_str(),
                reason: "public key could not be encoded",
            })?
            .as_ref()
            .to_vec();
        let raw = kp.public_key().as_ref().to_vec();
        Ok(Self {
            kp,
            public: PublicParts { spki_der, raw },
        })
    }
}

impl CaSigningKey for SoftwareEd25519Key {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::Ed25519
    }
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.public.spki_der.clone()
    }
    fn public_key_raw(&self) -> Vec<u8> {
        self.public.raw.clone()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.kp
            .try_sign(msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::Signing {
                algorithm: KeyAlgorithm::Ed25519.as_str(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};

    const CTX: KeyContext<'static> = KeyContext {
        cluster: "prod",
        purpose: "client",
    };

    #[test]
    fn generate_load_sign_verify_both_algorithms() {
        let km = SoftwareKeyManager;
        for (alg, verify_alg) in [
            (
                KeyAlgorithm::EcdsaP256,
                &ECDSA_P256_SHA256_ASN1 as &dyn aws_lc_rs::signature::VerificationAlgorithm,
            ),
            (KeyAlgorithm::Ed25519, &ED25519),
        ] {
            let stored = km.generate(&CTX, alg).unwrap();
            assert_eq!(stored.manager, "software");
            let key = km.load(&CTX, &stored).unwrap();
            assert_eq!(key.algorithm(), alg);
            let sig = key.sign(b"hello").unwrap();
            let pk = UnparsedPublicKey::new(verify_alg, key.public_key_raw());
            pk.verify(b"hello", &sig).unwrap();
            assert!(pk.verify(b"hellO", &sig).is_err());
        }
        let ed = km
            .load(&CTX, &km.generate(&CTX, KeyAlgorithm::Ed25519).unwrap())
            .unwrap();
        assert_eq!(ed.public_key_raw().len(), 32);
        assert_eq!(ed.sign(b"x").unwrap().len(), 64);
    }

    #[test]
    fn load_rejects_foreign_manager_and_wrong_algorithm() {
        let km = SoftwareKeyManager;
        let mut stored = km.generate(&CTX, KeyAlgorithm::EcdsaP256).unwrap();
        stored.algorithm = KeyAlgorithm::Ed25519;
        let err = km.load(&CTX, &stored).err().unwrap().to_string();
        assert!(err.contains("PKCS#8"), "{err}");
        assert!(!err.contains(&stored.material));
        stored.manager = "pkcs11".into();
        assert!(matches!(
            km.load(&CTX, &stored),
            Err(PkiError::WrongKeyManager { .. })
        ));
        let bad = StoredKey {
            manager: "software".into(),
            algorithm: KeyAlgorithm::EcdsaP256,
            material: "!!!".into(),
        };
        assert!(km.load(&CTX, &bad).is_err());
    }
}
