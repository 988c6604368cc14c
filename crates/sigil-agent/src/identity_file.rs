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
    /// The first auth server (HOST:PORT), as files before `auth_servers`
    /// had it: older `sigil` versions read only this.
    pub auth_server: String,
    /// Every auth server of the agent, in its order; absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_servers: Vec<String>,
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
            .field("auth_servers", &self.servers())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl IdentityFile {
    /// The auth servers to try, in order (an older file names one).
    pub fn servers(&self) -> Vec<String> {
        if self.auth_servers.is_empty() {
            vec![self.auth_server.clone()]
        } else {
            self.auth_servers.clone()
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"version":1,"cluster":"c","bot":"b","auth_server":"a:1",
        "tls_cert_pem":"","tls_key_pem":"","ca_certs_pem":"","expires":"2030-01-01T00:00:00Z"}"#;

    #[test]
    fn a_file_without_the_list_names_its_one_server() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("identity");
        std::fs::write(&p, OLD).expect("write");
        let id = IdentityFile::load(&p).expect("old format");
        assert_eq!(id.servers(), ["a:1"]);
    }

    #[test]
    fn the_list_round_trips_beside_the_first_server() {
        let mut id: IdentityFile = serde_json::from_str(OLD).expect("old");
        id.auth_servers = vec!["a:1".into(), "b:2".into()];
        let json = serde_json::to_value(&id).expect("json");
        assert_eq!(json["auth_server"], "a:1", "older readers still find one");
        assert_eq!(json["auth_servers"][1], "b:2");
        let back: IdentityFile = serde_json::from_value(json).expect("back");
        assert_eq!(back.servers(), ["a:1", "b:2"]);
    }
}
