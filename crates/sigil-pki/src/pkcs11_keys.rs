//! [`Pkcs11KeyManager`]: CA keys generated and used on a PKCS#11 token (an HSM, or
//! SoftHSM). Private keys are created sensitive and non-extractable, so they never leave
//! the token; the [`StoredKey`] records only the token label, the key label and CKA_ID.
//!
//! ECDSA P-256 (X.509 CAs) signs with CKM_ECDSA over a SHA-256 digest computed here (every
//! token has CKM_ECDSA; not all have CKM_ECDSA_SHA256), and the token's raw r||s is turned
//! into the DER that [`CaSigningKey::sign`] returns. Ed25519 (the SSH CAs) needs
//! CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA: a token without them is refused with a clear
//! error when an SSH CA is created, rather than silently keeping the SSH CAs elsewhere —
//! the promise is that no CA key is in the database.
//!
//! An imported key ([`KeyManager::import`], an organisation's intermediate CA) is created
//! on the token with C_CreateObject, sensitive and non-extractable like a generated one,
//! with its public key beside it under the same CKA_ID and label. It did exist outside
//! the token; the CSR flow keeps a key on the token from the start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

use crate::der::{self, TAG_SEQUENCE};
use crate::imported_key::ImportedKey;
use crate::key_manager::{CaSigningKey, KeyContext, KeyManager};
use crate::keys::{KeyAlgorithm, StoredKey, random_bytes};
use crate::{PkiError, Result};

const NAME: &str = "pkcs11";
const RECORD_VERSION: u32 = 1;
/// DER OID of prime256v1 (CKA_EC_PARAMS of a P-256 key).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID id-Ed25519 (1.3.101.112), the CKA_EC_PARAMS PKCS#11 3.0 gives for Ed25519.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// SubjectPublicKeyInfo prefixes; the raw public key follows.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What the database holds for a token key: where it is, never the key.
#[derive(Serialize, Deserialize)]
struct KeyRef {
    v: u32,
    token: String,
    label: String,
    id: String,
}

fn ck(context: &str) -> impl FnOnce(CkError) -> PkiError + '_ {
    move |e| PkiError::Pkcs11 {
        context: context.to_string(),
        reason: e.to_string(),
    }
}

/// One initialised library per module path: C_Initialize may be called once per process,
/// and an auth service restarted in-process (tests) must reuse it.
fn library(module: &Path) -> Result<Pkcs11> {
    static LIBS: OnceLock<Mutex<Vec<(PathBuf, Pkcs11)>>> = OnceLock::new();
    let mut libs = lock(LIBS.get_or_init(Default::default));
    if let Some((_, lib)) = libs.iter().find(|(p, _)| p == module) {
        return Ok(lib.clone());
    }
    let context = format!("loading the module {}", module.display());
    let lib = Pkcs11::new(module).map_err(ck(&context))?;
    match lib.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ck(&context)(e)),
    }
    libs.push((module.to_path_buf(), lib.clone()));
    Ok(lib)
}

/// A poisoned lock only means another signer panicked; the session itself is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Token {
    lib: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    eddsa: bool,
}

impl Token {
    /// A read-write session, logged in as the user (login is per token and application,
    /// so only the first session really logs in).
    fn session(&self) -> Result<Session> {
        let s = self
            .lib
            .open_rw_session(self.slot)
            .map_err(ck("opening a session on the token"))?;
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => Err(PkiError::Pkcs11 {
                context: format!("logging in to token {:?} with the user PIN", self.label),
                reason: e.to_string(),
            }),
        }
    }
}

/// Key manager whose keys live on one PKCS#11 token.
pub struct Pkcs11KeyManager {
    token: Arc<Token>,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyManager")
            .field("token", &self.token.label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyManager {
    /// Loads `module`, finds the initialised token labelled `token_label` and logs in.
    pub fn open(module: &Path, token_label: &str, pin: &str) -> Result<Self> {
        let lib = library(module)?;
        let slots = lib
            .get_slots_with_initialized_token()
            .map_err(ck("listing the module's tokens"))?;
        let mut seen = Vec::new();
        let mut found = None;
        for slot in slots {
            let info = lib
                .get_token_info(slot)
                .map_err(ck("reading token information"))?;
            let label = info.label().trim().to_string();
            if label == token_label {
                found = Some(slot);
                break;
            }
            seen.push(label);
        }
        let slot = found.ok_or_else(|| PkiError::Pkcs11 {
            context: format!("finding token {token_label:?}"),
            reason: format!(
                "no initialised token has that label (tokens found: {seen:?}); check --hsm-token-label"
            ),
        })?;
        let mechs = lib
            .get_mechanism_list(slot)
            .map_err(ck("listing the token's mechanisms"))?;
        if !mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN)
            || !mechs.contains(&MechanismType::ECDSA)
        {
            return Err(PkiError::Pkcs11 {
                context: format!("checking token {token_label:?}"),
                reason: "it offers no ECDSA (CKM_EC_KEY_PAIR_GEN and CKM_ECDSA), which the X.509 CAs need".into(),
            });
        }
        let eddsa = mechs.contains(&MechanismType::ECC_EDWARDS_KEY_PAIR_GEN)
            && mechs.contains(&MechanismType::EDDSA);
        let token = Arc::new(Token {
            lib,
            slot,
            label: token_label.to_string(),
            pin: AuthPin::new(pin.into()),
            eddsa,
        });
        let session = Mutex::new(token.session()?);
        Ok(Self { token, session })
    }

    /// Whether the token can hold Ed25519 keys (needed by the SSH CAs).
    pub fn supports_ed25519(&self) -> bool {
        self.token.eddsa
    }
}

impl Pkcs11KeyManager {
    /// The record the database keeps for the key with CKA_ID `id`.
    fn stored_key(&self, ctx: &KeyContext<'_>, alg: KeyAlgorithm, id: &[u8]) -> Result<StoredKey> {
        let record = KeyRef {
            v: RECORD_VERSION,
            token: self.token.label.clone(),
            label: key_label(ctx),
            id: hex::encode(id),
        };
        Ok(StoredKey {
            manager: NAME.to_string(),
            algorithm: alg,
            material: serde_json::to_string(&record).map_err(|_| PkiError::KeyGeneration {
                algorithm: "PKCS#11 key record encoding",
            })?,
        })
    }
}

/// CKA_LABEL of the key for `ctx`, checked at load: the token, which a database writer
/// cannot change, says which CA a key belongs to.
fn key_label(ctx: &KeyContext<'_>) -> String {
    format!("sigil {} {}", ctx.cluster, ctx.purpose)
}

fn find_one(session: &Session, class: ObjectClass, id: &[u8]) -> Result<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .map_err(ck("searching the token"))?;
    Ok(found.into_iter().next())
}

/// CKA_LABEL of a token object ("" when it has none).
fn label_of(session: &Session, handle: ObjectHandle) -> Result<String> {
    Ok(session
        .get_attributes(handle, &[AttributeType::Label])
        .map_err(ck("reading the key's label"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
            _ => None,
        })
        .unwrap_or_default())
}

impl KeyManager for Pkcs11KeyManager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn generate(&self, ctx: &KeyContext<'_>, alg: KeyAlgorithm) -> Result<StoredKey> {
        let (mechanism, key_type, params) = match alg {
            KeyAlgorithm::EcdsaP256 => (Mechanism::EccKeyPairGen, KeyType::EC, P256_PARAMS),
            KeyAlgorithm::Ed25519 if self.token.eddsa => (
                Mechanism::EccEdwardsKeyPairGen,
                KeyType::EC_EDWARDS,
                ED25519_PARAMS,
            ),
            KeyAlgorithm::Ed25519 => {
                return Err(PkiError::Pkcs11 {
                    context: format!("creating the {} key", ctx.purpose),
                    reason: format!(
                        "token {:?} offers no Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA), which the SSH CAs need; use a token that has it, or --ca-kek-file instead of an HSM",
                        self.token.label
                    ),
                });
            }
        };
        let id = random_bytes::<16>()?.to_vec();
        let label = key_label(ctx).into_bytes();
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::KeyType(key_type),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::KeyType(key_type),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        lock(&self.session)
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| PkiError::Pkcs11 {
                context: format!(
                    "generating the {} {} key on token {:?}",
                    ctx.purpose,
                    alg.as_str(),
                    self.token.label
                ),
                reason: e.to_string(),
            })?;
        self.stored_key(ctx, alg, &id)
    }

    fn import(&self, ctx: &KeyContext<'_>, key: &ImportedKey) -> Result<StoredKey> {
        let id = random_bytes::<16>()?.to_vec();
        let label = key_label(ctx).into_bytes();
        let mut point = Vec::with_capacity(67);
        der::tlv(&mut point, der::TAG_OCTET_STRING, key.public_point());
        let scalar = key.private_scalar()?;
        // Like a generated key: sensitive and non-extractable, so it cannot be read back
        // out. CKA_LOCAL and CKA_NEVER_EXTRACTABLE stay false, truthfully: it was made
        // outside the token. Some HSMs accept private keys only from generation or
        // C_UnwrapKey and refuse this with CKR_TEMPLATE_INCONSISTENT or similar; the CSR
        // flow (key generated on the token) works with those.
        let mut private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
            Attribute::Value(scalar.to_vec()),
        ];
        let public = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::EcPoint(point),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        let failed = |what: &str, e: CkError| PkiError::Pkcs11 {
            context: format!(
                "storing the imported {} {what} on token {:?}",
                ctx.purpose, self.token.label
            ),
            reason: e.to_string(),
        };
        let session = lock(&self.session);
        let created = session.create_object(&private);
        // The template's copy of the scalar is ours to wipe; the token keeps its own.
        for a in &mut private {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
        let handle = created.map_err(|e| failed("private key", e))?;
        if let Err(e) = session.create_object(&public) {
            // Without its public key the private key cannot be loaded: leave nothing.
            let _ = session.destroy_object(handle);
            return Err(failed("public key", e));
        }
        drop(session);
        self.stored_key(ctx, key.algorithm(), &id)
    }

    fn retire(&self, ctx: &KeyContext<'_>, key: &StoredKey) -> Result<bool> {
        if key.manager != NAME {
            return Ok(false);
        }
        let record: KeyRef =
            serde_json::from_str(&key.material).map_err(|_| PkiError::InvalidStoredKey {
                algorithm: key.algorithm.as_str(),
                reason: "PKCS#11 key record is not valid JSON",
            })?;
        if record.token != self.token.label {
            return Ok(false);
        }
        let id = hex::decode(&record.id).map_err(|_| PkiError::InvalidStoredKey {
            algorithm: key.algorithm.as_str(),
            reason: "PKCS#11 key id is not hex",
        })?;
        let session = self.token.session()?;
        let mut destroyed = false;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let Some(handle) = find_one(&session, class, &id)? else {
                continue;
            };
            // Only a key the token labels as this CA's: a record pointing at another
            // object (altered, or restored into the wrong place) destroys nothing.
            let label = label_of(&session, handle)?;
            if label != key_label(ctx) {
                return Err(PkiError::Pkcs11 {
                    context: format!("destroying the retired {} key", ctx.purpose),
                    reason: format!(
                        "the token's object with CKA_ID {} is labelled {label:?}, not {:?}; left alone",
                        record.id,
                        key_label(ctx)
                    ),
                });
            }
            session
                .destroy_object(handle)
                .map_err(ck("destroying the retired key"))?;
            destroyed = true;
        }
        Ok(destroyed)
    }

    fn load(&self, ctx: &KeyContext<'_>, key: &StoredKey) -> Result<Arc<dyn CaSigningKey>> {
        if key.manager != NAME {
            return Err(PkiError::WrongKeyManager {
                stored: key.manager.clone(),
                manager: NAME,
            });
        }
        let invalid = |reason| PkiError::InvalidStoredKey {
            algorithm: key.algorithm.as_str(),
            reason,
        };
        let record: KeyRef = serde_json::from_str(&key.material)
            .map_err(|_| invalid("PKCS#11 key record is not valid JSON"))?;
        if record.v != RECORD_VERSION {
            return Err(invalid(
                "PKCS#11 key record has an unknown version (written by a newer Sigil?)",
            ));
        }
        if record.token != self.token.label {
            return Err(PkiError::Pkcs11 {
                context: format!("loading the {} key", ctx.purpose),
                reason: format!(
                    "it is on token {:?}, but this auth service uses token {:?}: pass --hsm-token-label {:?}",
                    record.token, self.token.label, record.token
                ),
            });
        }
        let id = hex::decode(&record.id).map_err(|_| invalid("PKCS#11 key id is not hex"))?;
        let session = self.token.session()?;
        let missing = || PkiError::Pkcs11 {
            context: format!("loading the {} key", ctx.purpose),
            reason: format!(
                "token {:?} has no key with CKA_ID {} (label {:?}): was the token re-initialised, or is it another token with the same label?",
                self.token.label, record.id, record.label
            ),
        };
        let handle = find_one(&session, ObjectClass::PRIVATE_KEY, &id)?.ok_or_else(missing)?;
        let on_token = label_of(&session, handle)?;
        if on_token != key_label(ctx) {
            return Err(PkiError::Pkcs11 {
                context: format!("loading the {} key", ctx.purpose),
                reason: format!(
                    "the token's key with CKA_ID {} is labelled {on_token:?}, not {:?}: the record was altered or restored into the wrong place; restore it from backup",
                    record.id,
                    key_label(ctx)
                ),
            });
        }
        let pub_handle = find_one(&session, ObjectClass::PUBLIC_KEY, &id)?.ok_or_else(missing)?;
        let point = session
            .get_attributes(pub_handle, &[AttributeType::EcPoint])
            .map_err(ck("reading the public key"))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| invalid("the token returned no CKA_EC_POINT for the public key"))?;
        let (raw_len, prefix) = match key.algorithm {
            KeyAlgorithm::EcdsaP256 => (65, P256_SPKI_PREFIX),
            KeyAlgorithm::Ed25519 => (32, ED25519_SPKI_PREFIX),
        };
        let raw = unwrap_ec_point(&point, raw_len)
            .ok_or_else(|| invalid("the token's CKA_EC_POINT has an unexpected length"))?;
        let spki = [prefix, raw.as_slice()].concat();
        Ok(Arc::new(Pkcs11Key {
            token: self.token.clone(),
            session: Mutex::new(session),
            handle: Mutex::new(handle),
            id,
            algorithm: key.algorithm,
            raw,
            spki,
        }))
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point; some tokens give the bare point.
fn unwrap_ec_point(point: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    if point.len() == raw_len {
        return Some(point.to_vec());
    }
    match der::read_tlv(point) {
        Some((der::TAG_OCTET_STRING, content, rest))
            if rest.is_empty() && content.len() == raw_len =>
        {
            Some(content.to_vec())
        }
        _ => None,
    }
}

/// PKCS#11 ECDSA signatures are r||s (32 bytes each for P-256); X.509 wants
/// `SEQUENCE { INTEGER r, INTEGER s }`.
pub(crate) fn ecdsa_raw_to_der(sig: &[u8]) -> Option<Vec<u8>> {
    if sig.len() != 64 {
        return None;
    }
    let (r, s) = sig.split_at(32);
    let mut out = Vec::with_capacity(72);
    der::nested(&mut out, TAG_SEQUENCE, |seq| {
        der::unsigned_integer(seq, r);
        der::unsigned_integer(seq, s);
    });
    Some(out)
}

struct Pkcs11Key {
    token: Arc<Token>,
    session: Mutex<Session>,
    handle: Mutex<ObjectHandle>,
    id: Vec<u8>,
    algorithm: KeyAlgorithm,
    raw: Vec<u8>,
    spki: Vec<u8>,
}

impl Pkcs11Key {
    fn sign_once(&self, session: &Session, handle: ObjectHandle, msg: &[u8]) -> Result<Vec<u8>> {
        let failed = ck("signing with the CA key on the token");
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
                let raw = session
                    .sign(&Mechanism::Ecdsa, handle, digest.as_ref())
                    .map_err(failed)?;
                ecdsa_raw_to_der(&raw).ok_or(PkiError::Signing {
                    algorithm: KeyAlgorithm::EcdsaP256.as_str(),
                })
            }
            KeyAlgorithm::Ed25519 => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    handle,
                    msg,
                )
                .map_err(failed),
        }
    }
}

impl CaSigningKey for Pkcs11Key {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }
    fn public_key_raw(&self) -> Vec<u8> {
        self.raw.clone()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let mut session = lock(&self.session);
        let mut handle = lock(&self.handle);
        match self.sign_once(&session, *handle, msg) {
            Ok(sig) => Ok(sig),
            // Most often a session lost to a token or daemon restart: open a new one, find
            // the key again and retry once; if that fails too, report the first error.
            Err(first) => {
                let Ok(fresh) = self.token.session() else {
                    return Err(first);
                };
                let Ok(Some(h)) = find_one(&fresh, ObjectClass::PRIVATE_KEY, &self.id) else {
                    return Err(first);
                };
                *session = fresh;
                *handle = h;
                self.sign_once(&session, h, msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signature_becomes_minimal_der() {
        let mut sig = [0u8; 64];
        sig[0] = 0x80; // r needs a leading zero byte
        sig[31] = 1;
        sig[32..].copy_from_slice(&[0u8; 32]);
        sig[63] = 0x7f; // s shrinks to one byte
        let der = ecdsa_raw_to_der(&sig).unwrap();
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(der[4], 0x00);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x7f]);
        assert!(ecdsa_raw_to_der(&sig[..63]).is_none());
    }

    #[test]
    fn ec_point_with_or_without_octet_string() {
        let point = [4u8; 65];
        assert_eq!(unwrap_ec_point(&point, 65).unwrap(), point);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65).unwrap(), point);
        assert!(unwrap_ec_point(&wrapped[..40], 65).is_none());
        let ed = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&ed);
        assert_eq!(unwrap_ec_point(&wrapped, 32).unwrap(), ed);
    }
}
