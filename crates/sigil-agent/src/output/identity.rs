//! Output `identity`: the bot's credentials for ordinary tools.
//!
//! Writes `tls.crt` (client certificate), `tls.key` (PKCS#8, 0600), `ca.crt`,
//! `ssh.key` (0600), `ssh.key.pub`, `ssh.key-cert.pub` (OpenSSH user
//! certificate for the roles' logins; the three `ssh.*` files only when the
//! roles grant a login), `known_hosts` (`@cert-authority` for
//! the ssh-host CA), `ssh_config` (for `ssh -F` and Ansible: this key and
//! certificate, only hosts certified by the cluster's ssh-host CA) and
//! `identity` (the file `sigil --identity` takes).
//! The credentials are non-renewable: a stolen output cannot extend itself.

use anyhow::Context;
use async_trait::async_trait;
use sigil_pki::{SshKeyPair, TlsKeyPair};
use sigil_proto::v1::IssueIdentityRequest;

use super::{Output, OutputContext};
use crate::destination::Destination;
use crate::identity_file::IdentityFile;

pub struct IdentityOutput {
    dest: Box<dyn Destination>,
    dir: std::path::PathBuf,
    reload_command: Vec<String>,
}

impl IdentityOutput {
    pub fn new(
        dest: Box<dyn Destination>,
        dir: std::path::PathBuf,
        reload_command: Vec<String>,
    ) -> Self {
        IdentityOutput {
            dest,
            dir,
            reload_command,
        }
    }
}

/// `ssh -F DIR/ssh_config user@host`: this bot's key and certificate, and
/// only hosts whose certificate the cluster's ssh-host CA signed for the
/// name connected to (no plain host keys, no trust on first use).
pub fn ssh_config(dir: &std::path::Path) -> anyhow::Result<String> {
    let d = crate::ssh_host::openssh_config_path(
        dir,
        "ssh_config cannot name a directory",
        "choose another output directory",
    )?;
    Ok(format!(
        "# Written by the Sigil agent (identity output); rewritten on every renewal.\n\
         # Use: ssh -F {d}/ssh_config USER@HOST   (Ansible: ansible_ssh_common_args: -F {d}/ssh_config)\n\
         Host *\n\
         \x20   IdentityFile {d}/ssh.key\n\
         \x20   CertificateFile {d}/ssh.key-cert.pub\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile {d}/known_hosts\n\
         \x20   GlobalKnownHostsFile /dev/null\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com\n\
         \x20   CheckHostIP no\n\
         \x20   UpdateHostKeys no\n\
         \x20   PasswordAuthentication no\n\
         \x20   KbdInteractiveAuthentication no\n"
    ))
}

#[async_trait]
impl Output for IdentityOutput {
    fn describe(&self) -> String {
        format!("identity → {}", self.dest.describe())
    }

    fn destination(&self) -> &dyn Destination {
        self.dest.as_ref()
    }

    fn reload_command(&self) -> &[String] {
        &self.reload_command
    }

    async fn generate(&self, mut ctx: OutputContext<'_>) -> anyhow::Result<()> {
        let tls_key = TlsKeyPair::generate()?;
        let ssh_key = SshKeyPair::generate(&format!("sigil-bot-{}", ctx.credential.bot))?;
        let resp = ctx
            .client
            .issue_identity(IssueIdentityRequest {
                tls_public_key_spki: tls_key.spki_der(),
                ssh_public_key: ssh_key.public_openssh(),
                ttl_seconds: ctx.ttl.as_secs(),
            })
            .await
            .map_err(crate::status_error)
            .context("requesting the identity output's certificates")?
            .into_inner();
        let key_pem = tls_key.to_pkcs8_pem();
        let expires = time::OffsetDateTime::from_unix_timestamp(resp.expires_unix)?;
        let idf = IdentityFile {
            version: 1,
            cluster: resp.cluster_name.clone(),
            bot: ctx.credential.bot.clone(),
            auth_server: ctx
                .auth_servers
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            auth_servers: ctx.auth_servers.iter().map(ToString::to_string).collect(),
            tls_cert_pem: resp.tls_cert_pem.clone(),
            tls_key_pem: key_pem.clone(),
            ca_certs_pem: resp.ca_certs_pem.clone(),
            ssh_cert: resp.ssh_cert.clone(),
            expires,
        };
        let d = self.dest.as_ref();
        // Keys before certificates: a reader that sees a new certificate
        // always finds its key already in place.
        d.write("tls.key", key_pem.as_bytes(), true)?;
        d.write("tls.crt", resp.tls_cert_pem.as_bytes(), false)?;
        d.write("ca.crt", resp.ca_certs_pem.as_bytes(), false)?;
        // A bot whose roles grant no logins (admin rules only) gets no SSH
        // certificate: an OpenSSH certificate without principals would be
        // valid for every user.
        if !resp.ssh_cert.is_empty() {
            d.write("ssh.key", ssh_key.to_openssh_private()?.as_bytes(), true)?;
            d.write(
                "ssh.key.pub",
                format!("{}\n", ssh_key.public_openssh()).as_bytes(),
                false,
            )?;
            d.write(
                "ssh.key-cert.pub",
                format!("{}\n", resp.ssh_cert.trim_end()).as_bytes(),
                false,
            )?;
        }
        d.write("known_hosts", resp.known_hosts.as_bytes(), false)?;
        if !resp.ssh_cert.is_empty() {
            d.write("ssh_config", ssh_config(&self.dir)?.as_bytes(), false)?;
        }
        d.write("identity", &serde_json::to_vec_pretty(&idf)?, true)?;
        Ok(())
    }
}
