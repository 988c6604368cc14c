//! Output `ssh-host`: makes this host's stock sshd accept Sigil identities.
//!
//! Writes, atomically, into its directory: the host key
//! (`ssh_host_ed25519_key`, 0600, kept across renewals) and its host
//! certificate from the `ssh-host` CA, `user_ca.pub` (`TrustedUserCAKeys`),
//! `revoked_keys.krl` (`RevokedKeys`), `access.json` (who may log in here as
//! whom, read by the principals command `sigil ssh principals`) and
//! `sshd_config`, the snippet an admin `Include`s. sshd reads the host
//! certificate only at start: `reload_command` (e.g. `systemctl reload ssh`)
//! runs after each renewal. The KRL and `access.json` follow every change
//! (see [`follow`]), and sessions whose certificate a lock revoked are ended.

pub mod access;
mod follow;
pub mod sessions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::client::AuthChannel as Channel;
use anyhow::Context;
use async_trait::async_trait;
use sigil_pki::SshKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::{IssueSshHostCertRequest, SshHostState, WatchSshHostRequest};

use crate::config::OutputConfig;
use crate::destination::{self, Destination};
use crate::output::{Output, OutputContext};
use access::{ACCESS_FILE, HostAccess};

pub use follow::follow;

pub const HOST_KEY: &str = "ssh_host_ed25519_key";
pub const HOST_CERT: &str = "ssh_host_ed25519_key-cert.pub";
pub const USER_CA: &str = "user_ca.pub";
pub const KRL: &str = "revoked_keys.krl";
pub const SSHD_CONFIG: &str = "sshd_config";

pub struct SshHostOutput {
    dest: Box<dyn Destination>,
    dir: PathBuf,
    principals: Vec<String>,
    labels: BTreeMap<String, String>,
    reload_command: Vec<String>,
}

impl SshHostOutput {
    pub fn from_config(o: &OutputConfig) -> anyhow::Result<SshHostOutput> {
        Ok(SshHostOutput {
            dest: destination::from_config(&o.destination)?,
            dir: o.destination.path.clone(),
            // ssh compares the name it connected to in lower case.
            principals: o
                .principals
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            labels: o.labels.clone(),
            reload_command: o.reload_command.clone(),
        })
    }

    /// The host key: the one already written, else a new one.
    fn host_key(&self) -> anyhow::Result<(SshKeyPair, bool)> {
        if let Some(b) = self.dest.read(HOST_KEY)? {
            let text = String::from_utf8(b).context("the host key is not text")?;
            let key = SshKeyPair::from_openssh(&text).with_context(|| {
                format!(
                    "{}: not an OpenSSH Ed25519 private key; remove it to have a new one made",
                    self.dir.join(HOST_KEY).display()
                )
            })?;
            return Ok((key, false));
        }
        Ok((SshKeyPair::generate("sigil-host")?, true))
    }
}

#[async_trait]
impl Output for SshHostOutput {
    fn describe(&self) -> String {
        format!("ssh-host → {}", self.dest.describe())
    }

    fn destination(&self) -> &dyn Destination {
        self.dest.as_ref()
    }

    fn reload_command(&self) -> &[String] {
        &self.reload_command
    }

    async fn generate(&self, mut ctx: OutputContext<'_>) -> anyhow::Result<()> {
        let (key, new_key) = self.host_key()?;
        let cert = ctx
            .client
            .issue_ssh_host_cert(IssueSshHostCertRequest {
                ssh_public_key: key.public_openssh(),
                principals: self.principals.clone(),
                ttl_seconds: ctx.ttl.as_secs(),
            })
            .await
            .map_err(crate::status_error)
            .context("requesting the host certificate")?
            .into_inner();
        let state = first_state(&mut ctx.client, &self.labels).await?;
        let d = self.dest.as_ref();
        // Everything sshd_config names exists before it is (re)written.
        if new_key {
            d.write(HOST_KEY, key.to_openssh_private()?.as_bytes(), true)?;
            d.write(
                &format!("{HOST_KEY}.pub"),
                format!("{}\n", key.public_openssh()).as_bytes(),
                false,
            )?;
        }
        d.write(
            HOST_CERT,
            format!("{}\n", cert.ssh_cert.trim_end()).as_bytes(),
            false,
        )?;
        d.write(
            USER_CA,
            format!("{}\n", cert.ssh_user_ca.trim_end()).as_bytes(),
            false,
        )?;
        write_state(d, &state)?;
        d.write(SSHD_CONFIG, sshd_snippet(&self.dir)?.as_bytes(), false)?;
        Ok(())
    }
}

/// sshd's principals command: `Some(user)` (to print) if the certificate's
/// bot may log in as `user` here, from `access.json` alone; the login is
/// recorded for a lock's cut-off. `None` refuses (sshd then finds no
/// matching principal); the reason goes to stderr, which sshd logs.
pub fn principals(
    dir: &Path,
    user: &str,
    key_id: &str,
    serial: u64,
) -> anyhow::Result<Option<String>> {
    let attempt = access::Attempt {
        user,
        key_id,
        serial,
    };
    let sd = crate::fsutil::SafeDir::open(dir, "ssh-host directory")?
        .with_context(|| format!("{}: no such directory", dir.display()))?;
    let raw = sd.read(ACCESS_FILE)?.with_context(|| {
        format!(
            "{}: missing; is the host agent running?",
            dir.join(ACCESS_FILE).display()
        )
    })?;
    let access: HostAccess = serde_json::from_slice(&raw)
        .with_context(|| format!("{}: unreadable", dir.join(ACCESS_FILE).display()))?;
    match access.allows(&attempt) {
        Ok(()) => {
            sessions::register(dir, &attempt)?;
            Ok(Some(user.to_string()))
        }
        Err(reason) => {
            eprintln!("sigil: login as {user:?} with certificate {key_id:?} refused: {reason}");
            Ok(None)
        }
    }
}

/// The first state of the host's watch (the stream is then dropped).
async fn first_state(
    client: &mut AuthServiceClient<Channel>,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<SshHostState> {
    let mut stream = client
        .watch_ssh_host(watch_request(labels))
        .await
        .map_err(crate::status_error)
        .context("fetching the host's SSH access state")?
        .into_inner();
    stream
        .message()
        .await
        .map_err(crate::status_error)
        .context("fetching the host's SSH access state")?
        .context("the auth service ended the SSH access stream")
}

fn watch_request(labels: &BTreeMap<String, String>) -> WatchSshHostRequest {
    WatchSshHostRequest {
        labels: labels.clone().into_iter().collect(),
    }
}

/// Write the KRL and `access.json`. The KRL first: sshd reads it on every
/// login, and it only ever grows with a lock.
fn write_state(d: &dyn Destination, s: &SshHostState) -> anyhow::Result<HostAccess> {
    let access = HostAccess::from_state(s);
    d.write(KRL, &s.krl, false)?;
    d.write(ACCESS_FILE, &serde_json::to_vec_pretty(&access)?, true)?;
    Ok(access)
}

/// The sshd configuration for this directory.
pub fn sshd_snippet(dir: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the sigil binary")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir_s = openssh_config_path(dir, "sshd_config cannot name a path", "move it")?;
    let exe_s = openssh_config_path(&exe, "sshd_config cannot name a path", "move it")?;
    let user = effective_user();
    Ok(format!(
        "# Written by the Sigil agent (ssh-host output) and rewritten on every renewal.\n\
         # Add this as the FIRST line of /etc/ssh/sshd_config (sshd keeps the first\n\
         # value it reads for most keywords), then reload sshd:\n\
         #   Include {dir_s}/{SSHD_CONFIG}\n\
         HostKey {dir_s}/{HOST_KEY}\n\
         HostCertificate {dir_s}/{HOST_CERT}\n\
         TrustedUserCAKeys {dir_s}/{USER_CA}\n\
         RevokedKeys {dir_s}/{KRL}\n\
         # Decides each login offline from {ACCESS_FILE} (the host's labels against the\n\
         # roles' node_labels and logins) and records the session for a lock's cut-off.\n\
         AuthorizedPrincipalsCommand {exe_s} ssh principals --dir {dir_s} -- %u %i %s\n\
         AuthorizedPrincipalsCommandUser {user}\n\
         ExposeAuthInfo yes\n"
    ))
}

/// `p` as written into an OpenSSH configuration file, which splits on
/// whitespace and expands `%` tokens: such paths are refused, naming `what`
/// cannot hold them and the `fix`.
pub(crate) fn openssh_config_path(p: &Path, what: &str, fix: &str) -> anyhow::Result<String> {
    let s = p.display().to_string();
    if s.chars().any(|c| c.is_whitespace() || c == '"' || c == '%') {
        anyhow::bail!("{s:?}: {what} with spaces, quotes or `%`; {fix}");
    }
    Ok(s)
}

/// The name of the user this process runs as (who may read `access.json`).
fn effective_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied out at once, and the agent calls this from one place.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return "root".to_string();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}
