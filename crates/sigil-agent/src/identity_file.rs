//! The identity file: one file holding a bot's client certificate, key and
//! the CAs, which `sigil --identity FILE` uses to reach the admin API remotely.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityFile {
    /// Format version, currently 1.
    pub version: u32,
    pub cluster: String,
    pub bot: String,
    /// The auth service the identity came from (HOST:PORT).
    pub auth_server: String,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
    /// The host CA (trust the auth service) and client CA.
    pub ca_certs_pem: String,
    #[serde(default)]
    pub ssh_cert: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: time::OffsetDateTime,
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("cluster", &self.cluster)
            .field("bot", &self.bot)
            .field("auth_server", &self.auth_server)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl IdentityFile {
    pub fn load(path: &Path) -> anyhow::Result<IdentityFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the identity file {}", path.display()))?;
        let id: IdentityFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a Sigil identity file (written by an agent's `identity` output)",
                path.display()
            )
        })?;
        if id.version != 1 {
            anyhow::bail!(
                "{}: identity file version {} is not supported",
                path.display(),
                id.version
            );
        }
        Ok(id)
    }
}
