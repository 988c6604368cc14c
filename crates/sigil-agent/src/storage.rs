//! The agent's own renewable credential, kept in the storage directory.
//!
//! `credential.json` (0600) holds the current certificate, its key and the CAs.
//! `next_key.pem` (0600) is the key for the next renewal, written *before*
//! the renewal is requested: if the agent dies after the server issued but
//! before the result was saved, the retry uses the same key and the server
//! recognises it as a retry, not a stolen copy.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sigil_pki::TlsKeyPair;

use crate::fsutil;

const CREDENTIAL: &str = "credential.json";
const NEXT_KEY: &str = "next_key.pem";

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

    pub fn load(&self) -> anyhow::Result<Option<StoredCredential>> {
        let p = self.dir.join(CREDENTIAL);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| {
                format!("{} is corrupt: remove the storage directory's contents and rejoin with a new token", p.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self, c: &StoredCredential) -> anyhow::Result<()> {
        fsutil::write_atomic(
            &self.dir.join(CREDENTIAL),
            &serde_json::to_vec_pretty(c)?,
            fsutil::SECRET,
        )
    }

    /// The pending next key, creating and persisting one if there is none.
    pub fn next_key(&self) -> anyhow::Result<TlsKeyPair> {
        let p = self.dir.join(NEXT_KEY);
        match std::fs::read_to_string(&p) {
            Ok(pem) => Ok(TlsKeyPair::from_pkcs8_pem(&pem)
                .with_context(|| format!("{} is corrupt", p.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = TlsKeyPair::generate()?;
                fsutil::write_atomic(&p, k.to_pkcs8_pem().as_bytes(), fsutil::SECRET)?;
                Ok(k)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Forget the pending key once a credential issued to it is saved.
    pub fn clear_next_key(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.dir.join(NEXT_KEY)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
