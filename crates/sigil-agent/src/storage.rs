//! The agent's own renewable credential, kept in the storage directory.
//!
//! `credential.json` (0600) holds the current certificate, its key and the CAs.
//! `next_key.pem` (0600) is the key for the next renewal or re-proof, written
//! *before* it is requested: if the agent dies (or the server does) after the
//! server issued but before the result was saved, the retry uses the same key
//! and the server recognises it as a retry, not a stolen copy. A first join
//! writes its key to `next_key.pem` before sending too (the answer may be lost,
//! or the agent killed, after the server committed: a restarted agent retries
//! with it), and removes it again if that very join is refused (a refused join
//! leaves nothing behind); it uses a `next_key.pem` already there. A pending key
//! that is the current credential's own (the agent died after saving the
//! credential, before removing it) is replaced, not reused.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sigil_pki::TlsKeyPair;

use crate::fsutil::{self, DirKind, SafeDir};

const CREDENTIAL: &str = "credential.json";
const NEXT_KEY: &str = "next_key.pem";
const WHAT: &str = "storage";

#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCredential {
    pub cluster: String,
    pub bot: String,
    pub instance_id: String,
    pub generation: u64,
    pub roles: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_certs_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: time::OffsetDateTime,
    /// False for delegated join methods: renew by re-proving (older
    /// credential files predate delegated methods and are renewable).
    #[serde(default = "renewable_default")]
    pub renewable: bool,
}

fn renewable_default() -> bool {
    true
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("bot", &self.bot)
            .field("instance_id", &self.instance_id)
            .field("generation", &self.generation)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    pub fn new(dir: &Path) -> Self {
        Storage {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory if it exists (checked; see `sigil_fs`).
    fn existing(&self) -> anyhow::Result<Option<SafeDir>> {
        SafeDir::open(&self.dir, WHAT)
    }

    /// The directory, created 0700 on the first write (the key of the
    /// first join, before it is sent).
    pub fn dir(&self) -> anyhow::Result<SafeDir> {
        SafeDir::create(&self.dir, WHAT, DirKind::Private)
    }

    /// Another file of the agent's storage, if both exist (e.g. the audit witness).
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .existing()?
            .map(|d| d.read(name))
            .transpose()?
            .flatten())
    }

    /// Write another file of the agent's storage (the directory is created
    /// 0700 if this is the first write).
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        self.dir()?.write(name, data, mode)
    }

    pub fn load(&self) -> anyhow::Result<Option<StoredCredential>> {
        let Some(text) = self.existing()?.map(|d| d.read(CREDENTIAL)).transpose()? else {
            return Ok(None);
        };
        let Some(text) = text else { return Ok(None) };
        let p = self.dir.join(CREDENTIAL);
        Ok(Some(serde_json::from_slice(&text).with_context(|| {
            format!("{} is corrupt: remove the storage directory's contents and rejoin with a new token", p.display())
        })?))
    }

    pub fn save(&self, c: &StoredCredential) -> anyhow::Result<()> {
        self.dir()?
            .write(CREDENTIAL, &serde_json::to_vec_pretty(c)?, fsutil::SECRET)
    }

    /// The pending next key, creating and persisting one if there is none.
    pub fn next_key(&self) -> anyhow::Result<TlsKeyPair> {
        let d = self.dir()?;
        match d.read(NEXT_KEY)? {
            Some(pem) => {
                let p = self.dir.join(NEXT_KEY);
                let pem = String::from_utf8(pem)
                    .with_context(|| format!("{} is corrupt", p.display()))?;
                Ok(TlsKeyPair::from_pkcs8_pem(&pem)
                    .with_context(|| format!("{} is corrupt", p.display()))?)
            }
            None => {
                let k = TlsKeyPair::generate()?;
                d.write(NEXT_KEY, k.to_pkcs8_pem().as_bytes(), fsutil::SECRET)?;
                Ok(k)
            }
        }
    }

    /// The pending next key for renewing (or re-proving) `current`: a
    /// persisted one unless it is `current`'s own key (left by a crash after
    /// the credential was saved), else a new one, persisted.
    pub fn next_key_after(&self, current: &StoredCredential) -> anyhow::Result<TlsKeyPair> {
        let k = self.next_key()?;
        let own = TlsKeyPair::from_pkcs8_pem(&current.key_pem)
            .map(|c| c.spki_der() == k.spki_der())
            .unwrap_or(false);
        if !own {
            return Ok(k);
        }
        let k = TlsKeyPair::generate()?;
        self.dir()?
            .write(NEXT_KEY, k.to_pkcs8_pem().as_bytes(), fsutil::SECRET)?;
        Ok(k)
    }

    /// The outermost of the storage directory and its ancestors that does not
    /// exist yet (`None` when the directory exists): what a first write creates.
    pub fn first_missing_ancestor(&self) -> Option<std::path::PathBuf> {
        let mut top = None;
        for p in self.dir.ancestors() {
            if p.as_os_str().is_empty() || p.symlink_metadata().is_ok() {
                break;
            }
            top = Some(p.to_path_buf());
        }
        top
    }

    /// A refused first join: remove the key it persisted, and the directories
    /// that join created (the storage directory up to `created_top`, as found
    /// by [`Storage::first_missing_ancestor`] before it) where they are empty now.
    pub fn forget_refused_key(&self, created_top: Option<&Path>) -> anyhow::Result<()> {
        self.clear_next_key()?;
        let Some(top) = created_top else {
            return Ok(());
        };
        for p in self.dir.ancestors() {
            // Fails (and is meant to) if anything else is in it.
            if std::fs::remove_dir(p).is_err() || p == top {
                break;
            }
        }
        Ok(())
    }

    /// The pending next key if one was persisted, creating nothing (a first join
    /// that is refused leaves no storage directory behind).
    pub fn pending_key(&self) -> anyhow::Result<Option<TlsKeyPair>> {
        let Some(d) = self.existing()? else {
            return Ok(None);
        };
        let Some(pem) = d.read(NEXT_KEY)? else {
            return Ok(None);
        };
        let p = self.dir.join(NEXT_KEY);
        let pem = String::from_utf8(pem).with_context(|| format!("{} is corrupt", p.display()))?;
        Ok(Some(
            TlsKeyPair::from_pkcs8_pem(&pem)
                .with_context(|| format!("{} is corrupt", p.display()))?,
        ))
    }

    /// Persist a first join's key as the pending key (if none is), before the
    /// join is sent: the server may commit it and the answer be lost, and a
    /// restarted agent must retry with the same key.
    pub fn keep_pending_key(&self, k: &TlsKeyPair) -> anyhow::Result<()> {
        let d = self.dir()?;
        if d.read(NEXT_KEY)?.is_none() {
            d.write(NEXT_KEY, k.to_pkcs8_pem().as_bytes(), fsutil::SECRET)?;
        }
        Ok(())
    }

    /// Forget the pending key once a credential issued to it is saved.
    pub fn clear_next_key(&self) -> anyhow::Result<()> {
        match self.existing()? {
            Some(d) => d.remove(NEXT_KEY),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn storage_is_created_on_the_first_write_only_and_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let s = Storage::new(&t.path().join("a/storage"));
        // Reading or clearing a storage that does not exist creates nothing.
        assert!(s.load().unwrap().is_none());
        s.clear_next_key().unwrap();
        assert!(!t.path().join("a").exists());
        let k = s.next_key().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&t.path().join("a/storage")), 0o700);
        assert_eq!(mode(&t.path().join("a/storage").join(NEXT_KEY)), 0o600);
        assert_eq!(s.next_key().unwrap().spki_der(), k.spki_der());

        // A storage path that is a symlink is refused, and nothing is written where it points.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, t.path().join("link")).unwrap();
        let s = Storage::new(&t.path().join("link"));
        let e = format!("{:#}", s.next_key().unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn a_pending_key_that_is_the_current_one_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let s = Storage::new(&t.path().join("storage"));
        let pending = s.next_key().unwrap();
        let cred = |k: &TlsKeyPair| StoredCredential {
            cluster: "c".into(),
            bot: "b".into(),
            instance_id: "i".into(),
            generation: 2,
            roles: vec![],
            cert_pem: String::new(),
            key_pem: k.to_pkcs8_pem(),
            ca_certs_pem: String::new(),
            expires: time::OffsetDateTime::UNIX_EPOCH,
            renewable: true,
        };
        // A pending key for another credential is the one to retry with.
        let other = TlsKeyPair::generate().unwrap();
        let k = s.next_key_after(&cred(&other)).unwrap();
        assert_eq!(k.spki_der(), pending.spki_der());
        // The credential was saved with it, the pending file not removed: a new key.
        let k = s.next_key_after(&cred(&pending)).unwrap();
        assert_ne!(k.spki_der(), pending.spki_der());
        assert_eq!(s.pending_key().unwrap().unwrap().spki_der(), k.spki_der());
    }

    #[test]
    fn a_refused_first_join_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let s = Storage::new(&t.path().join("var/lib/storage"));
        let top = s.first_missing_ancestor();
        assert_eq!(top.as_deref(), Some(t.path().join("var").as_path()));
        s.keep_pending_key(&TlsKeyPair::generate().unwrap())
            .unwrap();
        s.forget_refused_key(top.as_deref()).unwrap();
        assert!(!t.path().join("var").exists());
        assert!(t.path().exists(), "what existed before stays");
    }
}
