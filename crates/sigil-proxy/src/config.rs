//! `proxy.yaml`: where the proxy listens, its server certificate, its own
//! agent (it joins like any bot) and its limits.
//!
//! ```yaml
//! listen: 0.0.0.0:3443
//! tls_cert_file: /etc/sigil/proxy/tls.crt   # for the apps' public_addr names
//! tls_key_file: /etc/sigil/proxy/tls.key
//! agent_config: /etc/sigil/proxy/agent.yaml # a normal agent config
//! timeouts: {upstream_connect: 5s, upstream_response: 30s, client_header: 10s}
//! max_header_bytes: 16384
//! max_body_bytes: 10485760                  # 413 beyond
//! audit: {allowed: sample, sample_every: 100}   # all | sample | aggregate; denials always
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sigil_types::HumanDuration;

/// The proxy's configuration.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address to listen on (HTTPS).
    pub listen: SocketAddr,
    /// PEM certificate chain presented to clients.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// The proxy's own agent configuration file.
    pub agent_config: PathBuf,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest request head (request line and headers) accepted: 431 beyond.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body forwarded: 413 beyond (by Content-Length, or
    /// where a chunked body passes it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Audit of allowed requests (denials are always recorded).
    #[serde(default)]
    pub audit: AuditConfig,
}

/// Timeouts, each with a default.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to the upstream (502 beyond).
    pub upstream_connect: HumanDuration,
    /// Waiting for the upstream's response head (504 beyond).
    pub upstream_response: HumanDuration,
    /// A client sending its request head.
    pub client_header: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream_connect: HumanDuration(Duration::from_secs(5)),
            upstream_response: HumanDuration(Duration::from_secs(30)),
            client_header: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// How allowed requests are audited.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AllowedAudit {
    /// Every request.
    All,
    /// One request in `sample_every`.
    #[default]
    Sample,
    /// One event per (app, caller, status) per flush, with a count.
    Aggregate,
}

/// `audit:`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `all`, `sample` or `aggregate`.
    pub allowed: AllowedAudit,
    /// With `sample`: record one allowed request in this many.
    pub sample_every: u64,
    /// How often events are sent to the auth service.
    pub flush_every: HumanDuration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            allowed: AllowedAudit::Sample,
            sample_every: 100,
            flush_every: HumanDuration(Duration::from_secs(1)),
        }
    }
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}

impl ProxyConfig {
    /// Read and check `path`; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the proxy config {}", path.display()))?;
        let mut cfg: ProxyConfig = serde_norway::from_str(&text)
            .with_context(|| format!("{}: not a valid proxy config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.tls_cert_file,
            &mut cfg.tls_key_file,
            &mut cfg.agent_config,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.check()
            .with_context(|| format!("{}: invalid proxy config", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            bail!("max_header_bytes: must be from 8192 to 1048576");
        }
        if self.max_body_bytes == 0 {
            bail!("max_body_bytes: must be at least 1");
        }
        if self.audit.sample_every == 0 {
            bail!("audit.sample_every: must be at least 1");
        }
        for (name, d) in [
            ("timeouts.upstream_connect", self.timeouts.upstream_connect),
            (
                "timeouts.upstream_response",
                self.timeouts.upstream_response,
            ),
            ("timeouts.client_header", self.timeouts.client_header),
            ("audit.flush_every", self.audit.flush_every),
        ] {
            if d.0.is_zero() {
                bail!("{name}: must be more than 0s");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let base = "listen: 127.0.0.1:1\ntls_cert_file: c\ntls_key_file: k\nagent_config: a\n";
        let ok: ProxyConfig = serde_norway::from_str(base).unwrap();
        ok.check().unwrap();
        assert_eq!(ok.timeouts.upstream_response.0, Duration::from_secs(30));
        assert_eq!(ok.max_body_bytes, 10 * 1024 * 1024);
        let mut zero = ok.clone();
        zero.max_body_bytes = 0;
        assert!(
            zero.check()
                .unwrap_err()
                .to_string()
                .contains("max_body_bytes")
        );
        let e = serde_norway::from_str::<ProxyConfig>(&format!("{base}bogus: 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let mut bad = ok.clone();
        bad.max_header_bytes = 10;
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("max_header_bytes")
        );
        let t: ProxyConfig =
            serde_norway::from_str(&format!("{base}timeouts: {{upstream_response: 2s}}\n"))
                .unwrap();
        assert_eq!(t.timeouts.upstream_response.0, Duration::from_secs(2));
        assert_eq!(t.timeouts.upstream_connect.0, Duration::from_secs(5));
    }
}
