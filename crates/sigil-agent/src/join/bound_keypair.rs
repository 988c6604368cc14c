//! Join method `bound_keypair`: prove possession of the Ed25519 key bound to
//! the token. The key lives in the storage directory as an unencrypted
//! OpenSSH private key (`bound_keypair.key`, 0600; `ssh-keygen -t ed25519 -N
//! "" -f <storage>/bound_keypair.key` makes a compatible one), generated on
//! first use; the server's signed join state of the last join is kept next to
//! it (`bound_keypair.state`) and shown at the next join, so the server can
//! tell a copied key pair from the original.
//!
//! Formats (server side: sigil-auth `join/bound_keypair.rs`): evidence
//! `{"public_key","join_state","registration_secret"?}`; the answer to a
//! challenge is `{"signature": b64url}` where the Ed25519 signature covers
//! `CHALLENGE_PREFIX || challenge`; to a rotation challenge
//! (`"rotate": true`) `{"new_public_key","signature"}` signed by a new key.
//!
//! Crash safety: a rotation's new key is persisted (`bound_keypair.next.key`)
//! before the answer is sent and kept until a join says whether it was bound:
//! if the answer was lost, the retry's challenge names the new key (`"key"`)
//! and the agent signs with it (server: `join/bound_keypair_retry.rs`). The
//! new key replaces the old one once the join is answered, before the join
//! state is saved; a crash between the two is a retry the server recognises.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sigil_proto::v1::{Credentials, JoinInit};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

use super::{JoinProver, ProverContext};
use crate::config::Onboarding;
use crate::fsutil::{DirKind, SECRET, SafeDir, read_file, write_atomic};

/// What the agent signs starts with this (domain separation).
pub const CHALLENGE_PREFIX: &[u8] = b"sigil bound_keypair challenge v1\n";
const KEY_FILE: &str = "bound_keypair.key";
const NEXT_KEY_FILE: &str = "bound_keypair.next.key";
const STATE_FILE: &str = "bound_keypair.state";

pub struct BoundKeypairProver {
    token: String,
    registration_secret: Option<String>,
    /// Whether this join's last proof was signed with the next key (a
    /// rotation, or a retry after one): `joined` then makes it the key.
    signed_with_next: std::sync::atomic::AtomicBool,
}

impl BoundKeypairProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        let token = o.token()?.filter(|t| !t.is_empty()).context(
            "join method bound_keypair: set onboarding.token (or --token) to the name of the bound_keypair token",
        )?;
        let registration_secret = o
            .bound_keypair
            .clone()
            .unwrap_or_default()
            .registration_secret()?
            .filter(|s| !s.is_empty());
        Ok(BoundKeypairProver {
            token,
            registration_secret,
            signed_with_next: Default::default(),
        })
    }
}

/// The agent's Ed25519 key: OpenSSH text and the signing key.
struct AgentKey {
    openssh_public: String,
    signer: Ed25519KeyPair,
}

impl AgentKey {
    fn generate() -> anyhow::Result<(AgentKey, zeroize::Zeroizing<String>)> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(seed.as_mut()).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let kp = Ed25519Keypair::from_seed(&seed);
        let private = PrivateKey::new(KeypairData::Ed25519(kp), "sigil-agent bound_keypair")
            .context("building the bound_keypair key")?;
        let text = private
            .to_openssh(LineEnding::LF)
            .context("encoding the bound_keypair key")?;
        Ok((AgentKey::from_private(&private)?, text))
    }

    fn from_private(private: &PrivateKey) -> anyhow::Result<AgentKey> {
        let KeypairData::Ed25519(kp) = private.key_data() else {
            bail!("only ssh-ed25519 keys are supported");
        };
        let signer = Ed25519KeyPair::from_seed_unchecked(&kp.private.to_bytes())
            .map_err(|_| anyhow::anyhow!("the Ed25519 key is invalid"))?;
        let openssh_public = private
            .public_key()
            .to_openssh()
            .context("encoding the public key")?;
        Ok(AgentKey {
            openssh_public,
            signer,
        })
    }

    fn load(path: &Path) -> anyhow::Result<AgentKey> {
        let bytes = read_file(path)?
            .with_context(|| format!("reading {}: it does not exist", path.display()))?;
        let text = zeroize::Zeroizing::new(
            String::from_utf8(bytes).with_context(|| format!("{} is not text", path.display()))?,
        );
        let private = PrivateKey::from_openssh(text.as_bytes()).with_context(|| {
            format!(
                "{}: not an OpenSSH private key (make one with ssh-keygen -t ed25519 -N \"\")",
                path.display()
            )
        })?;
        if private.is_encrypted() {
            bail!(
                "{}: the key has a passphrase; the agent needs an unencrypted key (-N \"\")",
                path.display()
            );
        }
        AgentKey::from_private(&private).with_context(|| path.display().to_string())
    }

    /// Load the key, generating and persisting it on first use.
    fn load_or_generate(path: &Path) -> anyhow::Result<AgentKey> {
        let dir = path.parent().context("a key path without a directory")?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("a key path without a name")?;
        let dir = SafeDir::create(dir, "storage", DirKind::Private)?;
        if dir.contains(name)? {
            return AgentKey::load(path);
        }
        let (key, text) = AgentKey::generate()?;
        dir.write(name, text.as_bytes(), SECRET)?;
        tracing::info!(path = %path.display(), "generated the bound_keypair key");
        Ok(key)
    }

    /// Sign a challenge; the answer's `signature` field.
    fn sign(&self, challenge: &[u8]) -> String {
        let mut msg = CHALLENGE_PREFIX.to_vec();
        msg.extend_from_slice(challenge);
        B64URL.encode(self.signer.sign(&msg).as_ref())
    }
}

fn file(ctx: &ProverContext, name: &str) -> PathBuf {
    ctx.storage.join(name)
}

/// The storage directory, checked (and created 0700 if missing).
fn storage(ctx: &ProverContext) -> anyhow::Result<SafeDir> {
    SafeDir::create(&ctx.storage, "storage", DirKind::Private)
}

/// The join state of the last join, if any.
fn stored_join_state(ctx: &ProverContext) -> anyhow::Result<String> {
    let path = file(ctx, STATE_FILE);
    match read_file(&path)? {
        Some(s) => Ok(String::from_utf8(s)
            .with_context(|| format!("{} is not text", path.display()))?
            .trim()
            .to_string()),
        None => Ok(String::new()),
    }
}

/// Answer a challenge payload with `current`; for a rotation challenge with a
/// new key first persisted at `next_path`; for a challenge naming a key
/// (`"key"`: a retry after a lost rotation answer) with the key of that name,
/// `current` or the one at `next_path`. The answer, and whether the next key
/// signed it.
fn answer_challenge(
    current: &AgentKey,
    next_path: &Path,
    challenge: &[u8],
) -> anyhow::Result<(Vec<u8>, bool)> {
    let v: serde_json::Value =
        serde_json::from_slice(challenge).context("bound_keypair: undecodable challenge")?;
    let named = v.get("key").and_then(|k| k.as_str());
    let (answer, with_next) = if v.get("rotate").and_then(|r| r.as_bool()) == Some(true) {
        let (next, text) = AgentKey::generate()?;
        // Persisted before answering: once the server binds it, the old key
        // is useless, so it must survive a crash here.
        write_atomic(next_path, text.as_bytes(), SECRET)?;
        fault_point!(JoinAfterRotationKey);
        tracing::info!("bound_keypair: rotating the key as the token requires");
        let a = serde_json::json!({"new_public_key": next.openssh_public, "signature": next.sign(challenge)});
        (a, true)
    } else if let Some(named) = named.filter(|n| !same_public(n, &current.openssh_public)) {
        let next = match read_file(next_path)? {
            Some(_) => AgentKey::load(next_path)?,
            None => bail!("bound_keypair: the server asks for a key this agent does not hold"),
        };
        if !same_public(named, &next.openssh_public) {
            bail!("bound_keypair: the server asks for a key this agent does not hold");
        }
        tracing::info!("bound_keypair: the last join rotated the key; proving the new one");
        (serde_json::json!({"signature": next.sign(challenge)}), true)
    } else {
        (
            serde_json::json!({"signature": current.sign(challenge)}),
            false,
        )
    };
    Ok((serde_json::to_vec(&answer)?, with_next))
}

/// Whether two OpenSSH public key lines name the same key (comments aside).
fn same_public(a: &str, b: &str) -> bool {
    let body = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    body(a) == body(b)
}

#[async_trait::async_trait]
impl JoinProver for BoundKeypairProver {
    async fn init(&self, ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        let key = AgentKey::load_or_generate(&file(ctx, KEY_FILE))?;
        // A next key left by an unfinished join is kept: if that join was
        // committed, the server binds it now and asks for it (`answer`).
        let join_state = stored_join_state(ctx)?;
        let mut evidence = serde_json::json!({
            "public_key": key.openssh_public, "join_state": join_state,
        });
        // The secret only registers the first key; later joins never send it.
        if join_state.is_empty()
            && let Some(s) = &self.registration_secret
        {
            evidence["registration_secret"] = s.clone().into();
        }
        init.token = self.token.clone();
        init.evidence = serde_json::to_vec(&evidence)?;
        Ok(())
    }

    async fn answer(&self, ctx: &ProverContext, challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
        let current = AgentKey::load(&file(ctx, KEY_FILE))?;
        let (answer, with_next) = answer_challenge(&current, &file(ctx, NEXT_KEY_FILE), challenge)?;
        self.signed_with_next
            .store(with_next, std::sync::atomic::Ordering::SeqCst);
        Ok(answer)
    }

    fn joined(&self, ctx: &ProverContext, creds: &Credentials) -> anyhow::Result<()> {
        let dir = storage(ctx)?;
        // The next key is bound only if this join's proof was signed with it;
        // otherwise it is a leftover the server never bound.
        if self
            .signed_with_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            dir.rename(NEXT_KEY_FILE, KEY_FILE)?;
            fault_point!(JoinAfterBoundKey);
        } else if dir.contains(NEXT_KEY_FILE)? {
            dir.remove(NEXT_KEY_FILE)?;
        }
        if !creds.join_state.is_empty() {
            dir.write(STATE_FILE, creds.join_state.as_bytes(), SECRET)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ED25519, KeyPair as _, UnparsedPublicKey};

    fn verify(key: &AgentKey, challenge: &[u8], answer: &serde_json::Value) -> bool {
        let sig = B64URL
            .decode(answer["signature"].as_str().unwrap())
            .unwrap();
        let mut msg = CHALLENGE_PREFIX.to_vec();
        msg.extend_from_slice(challenge);
        UnparsedPublicKey::new(&ED25519, key.signer.public_key().as_ref())
            .verify(&msg, &sig)
            .is_ok()
    }

    #[test]
    fn key_round_trips_through_openssh_and_signs_challenges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let key = AgentKey::load_or_generate(&path).unwrap();
        let again = AgentKey::load_or_generate(&path).unwrap();
        assert_eq!(key.openssh_public, again.openssh_public);
        assert!(key.openssh_public.starts_with("ssh-ed25519 "));
        let c1 = br#"{"nonce":"a"}"#;
        let (a, with_next) = answer_challenge(&again, &dir.path().join(NEXT_KEY_FILE), c1).unwrap();
        assert!(!with_next);
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert!(verify(&key, c1, &a));
        assert!(
            !verify(&key, br#"{"nonce":"b"}"#, &a),
            "replay for another nonce"
        );
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    }

    #[test]
    fn rotation_answer_is_signed_by_a_new_persisted_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = AgentKey::load_or_generate(&dir.path().join(KEY_FILE)).unwrap();
        let next_path = dir.path().join(NEXT_KEY_FILE);
        let c = br#"{"rotate":true,"nonce":"x"}"#;
        let (a, with_next) = answer_challenge(&key, &next_path, c).unwrap();
        assert!(with_next);
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let next = AgentKey::load(&next_path).unwrap();
        assert_eq!(a["new_public_key"], next.openssh_public);
        assert_ne!(next.openssh_public, key.openssh_public);
        assert!(verify(&next, c, &a));
        assert!(!verify(&key, c, &a));

        // The answer was lost: the retry's challenge names the new key.
        let named = serde_json::json!({"nonce": "y", "key": next.openssh_public}).to_string();
        let (a, with_next) = answer_challenge(&key, &next_path, named.as_bytes()).unwrap();
        assert!(with_next);
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert!(verify(&next, named.as_bytes(), &a));
        // Naming the current key signs with it; a key the agent lacks is refused.
        let cur = serde_json::json!({"nonce": "z", "key": key.openssh_public}).to_string();
        let (a, with_next) = answer_challenge(&key, &next_path, cur.as_bytes()).unwrap();
        assert!(!with_next);
        assert!(verify(
            &key,
            cur.as_bytes(),
            &serde_json::from_slice(&a).unwrap()
        ));
        let (other, _) = AgentKey::generate().unwrap();
        let odd = serde_json::json!({"nonce": "w", "key": other.openssh_public}).to_string();
        assert!(answer_challenge(&key, &next_path, odd.as_bytes()).is_err());
    }
}
