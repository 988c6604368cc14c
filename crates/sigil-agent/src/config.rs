//! The agent's configuration: a YAML file (`sigil agent start --config`) or
//! the flags of the common case. Errors name the file, line and field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sigil_types::{HumanDuration, WorkloadIdentitySelector};

use crate::client::ServerAddr;

pub mod app_tunnel;
mod auth_server;
mod database;
pub mod destination;
mod kubernetes;
mod onboarding;
mod ssh_host;
pub use onboarding::*;

/// The parsed, validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// One or more servers of the cluster, tried in order (never empty).
    pub auth_servers: Vec<ServerAddr>,
    pub ca_pins: Vec<String>,
    pub onboarding: Onboarding,
    pub storage: PathBuf,
    pub credential_ttl: Duration,
    pub renewal_interval: Duration,
    pub diag_addr: Option<String>,
    pub outputs: Vec<OutputConfig>,
    pub services: Vec<ServiceConfig>,
}

/// A long-running service of the agent (`services:`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(rename = "type")]
    pub kind: String,
    /// `unix:///path/to/socket`; an `application-tunnel`: a loopback `HOST:PORT`.
    pub listen: String,
    /// Which granted workload identities to serve (default: all the roles grant).
    #[serde(default)]
    pub selector: Option<WorkloadIdentitySelector>,
    /// Workload attestors to run (default: all of unix, systemd, docker, podman).
    #[serde(default)]
    pub attestors: Option<Vec<String>>,
    /// `application-tunnel`: the app's `public_addr`.
    #[serde(default)]
    pub app: Option<String>,
    /// `application-tunnel`: `HOST:PORT` of `sigil proxy`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// `application-tunnel`: PEM CA of the proxy's server certificate.
    #[serde(default)]
    pub proxy_ca_file: Option<PathBuf>,
}

impl ServiceConfig {
    /// The socket path of `listen`.
    pub fn socket_path(&self) -> anyhow::Result<PathBuf> {
        let p = self
            .listen
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .with_context(|| {
                format!(
                    "listen: {:?} must be unix:///absolute/path/to/socket",
                    self.listen
                )
            })?;
        Ok(PathBuf::from(p))
    }
}

/// The service types this agent can run.
pub const SERVICE_TYPES: [&str; 2] = ["workload-api", app_tunnel::KIND];
/// Workload attestors a `workload-api` service can run.
pub const ATTESTORS: [&str; 4] = ["unix", "systemd", "docker", "podman"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    /// Who the written files belong to (a user name or uid; the agent must run
    /// as root to give files to another user).
    #[serde(default)]
    pub owner: Option<String>,
    /// Their group (a name or gid).
    #[serde(default)]
    pub group: Option<String>,
    /// Mode of the secret files (keys): 0600 (default), 0640, 0400 or 0440.
    #[serde(default)]
    pub mode: Option<destination::ModeField>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub destination: Destination,
    /// Workload identity outputs: which identities (by name or labels).
    #[serde(default)]
    pub selector: Option<WorkloadIdentitySelector>,
    /// `workload-identity-jwt`: the audiences of the JWT-SVID.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `ssh-host`: the host certificate's names and addresses.
    #[serde(default)]
    pub principals: Vec<String>,
    /// `ssh-host`: this host's labels, matched by roles' `node_labels`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `ssh-host`: run after each rewrite (argv, no shell), e.g. to reload sshd.
    #[serde(default)]
    pub reload_command: Vec<String>,
    /// `kubernetes`: the `kubernetes_cluster` to write a kubeconfig for.
    #[serde(default)]
    pub cluster: Option<String>,
    /// `kubernetes`: the Kubernetes user (default: the only one the roles allow).
    #[serde(default)]
    pub user: Option<String>,
    /// `database`, `database-server`: the `database` resource's name.
    #[serde(default)]
    pub service: Option<String>,
    /// `database`: the database user (the certificate's CN).
    #[serde(default)]
    pub username: Option<String>,
    /// `database`: the database name (pg_service.conf's dbname).
    #[serde(default)]
    pub database: Option<String>,
    /// `database-server`: the server certificate's names and addresses.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    version: String,
    auth_server: auth_server::AuthServerField,
    #[serde(default)]
    ca_pins: Vec<String>,
    onboarding: Onboarding,
    storage: Destination,
    #[serde(default)]
    credential_ttl: Option<HumanDuration>,
    #[serde(default)]
    renewal_interval: Option<HumanDuration>,
    #[serde(default)]
    diag_addr: Option<String>,
    #[serde(default)]
    outputs: Vec<OutputConfig>,
    #[serde(default)]
    services: Vec<ServiceConfig>,
}

/// The flags of `sigil agent start` without a config file.
#[derive(Clone, Debug, Default)]
pub struct AgentFlags {
    /// `HOST:PORT`, or several separated by commas.
    pub auth_server: String,
    pub ca_pins: Vec<String>,
    /// `--join-method` (default `token`); other methods need a config file
    /// for their evidence only when its defaults do not fit.
    pub join_method: Option<String>,
    pub token: Option<String>,
    pub token_path: Option<PathBuf>,
    pub storage: PathBuf,
    /// "identity:DIR"
    pub outputs: Vec<String>,
    pub credential_ttl: Option<String>,
    pub renewal_interval: Option<String>,
    pub diag_addr: Option<String>,
}

/// The output types this agent can write.
pub const OUTPUT_TYPES: [&str; 7] = [
    "identity",
    "workload-identity-x509",
    "workload-identity-jwt",
    "ssh-host",
    "kubernetes",
    "database",
    "database-server",
];

impl AgentConfig {
    /// Read and validate a YAML config file.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        use std::io::Read;
        const MAX: usize = sigil_types::limits::MAX_DOCUMENT_BYTES;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX as u64 + 1).read_to_string(&mut text))
            .with_context(|| format!("reading the agent config {}", path.display()))?;
        if text.len() > MAX {
            bail!(
                "{}: larger than the limit of {MAX} bytes for a config file",
                path.display()
            );
        }
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse config text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<AgentConfig> {
        // Size, depth and no aliases, before the YAML parser sees it.
        sigil_types::limits::check_text(text, sigil_types::limits::Limits::default()).map_err(
            |e| match e.line() {
                Some(l) => anyhow::anyhow!("{source}:{l}: {e}"),
                None => anyhow::anyhow!("{source}: {e}"),
            },
        )?;
        let fc: FileConfig = serde_norway::from_str(text).map_err(|e| {
            let msg = e.to_string();
            match e.location() {
                Some(l) => anyhow::anyhow!(
                    "{source}:{}:{}: {}",
                    l.line(),
                    l.column(),
                    strip_location(&msg)
                ),
                None => anyhow::anyhow!("{source}: {msg}"),
            }
        })?;
        let at = |field: &str| {
            line_of(text, field)
                .map(|l| format!("{source}:{l}"))
                .unwrap_or_else(|| source.to_string())
        };
        if fc.version != "v1" {
            bail!(
                "{}: version: {:?} is not supported; use `version: v1`",
                at("version"),
                fc.version
            );
        }
        if fc.storage.kind != "directory" {
            bail!(
                "{}: storage.type: {:?} is not supported; use `directory`",
                at("storage"),
                fc.storage.kind
            );
        }
        destination::check_storage(&fc.storage)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at("storage")))?;
        let auth_servers = crate::client::parse_list("auth_server", &fc.auth_server.0)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at("auth_server")))?;
        let cfg = AgentConfig {
            auth_servers,
            ca_pins: fc.ca_pins,
            onboarding: fc.onboarding,
            storage: fc.storage.path,
            credential_ttl: fc
                .credential_ttl
                .map(|d| d.0)
                .unwrap_or(sigil_types::DEFAULT_CREDENTIAL_TTL),
            renewal_interval: fc
                .renewal_interval
                .map(|d| d.0)
                .unwrap_or(sigil_types::DEFAULT_RENEWAL_INTERVAL),
            diag_addr: fc.diag_addr,
            outputs: fc.outputs,
            services: fc.services,
        };
        cfg.validate().map_err(|e| {
            // Name the line of the section the failing field is in.
            let msg = e.to_string();
            let section = msg.split(['[', '.', ':']).next().unwrap_or_default();
            anyhow::anyhow!("{}: {msg}", at(section))
        })?;
        Ok(cfg)
    }

    /// Build a config from command-line flags.
    pub fn from_flags(f: AgentFlags) -> anyhow::Result<AgentConfig> {
        let dur = |flag: &str, v: &Option<String>, default: Duration| -> anyhow::Result<Duration> {
            match v {
                None => Ok(default),
                Some(s) => sigil_types::parse_duration(s)
                    .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}")),
            }
        };
        let outputs = f
            .outputs
            .iter()
            .map(|o| {
                let (kind, path) = o.split_once(':').with_context(|| {
                    format!("--output {o:?} must be TYPE:DIR, e.g. identity:/opt/machine-id")
                })?;
                Ok(OutputConfig {
                    kind: kind.to_string(),
                    destination: Destination {
                        kind: "directory".into(),
                        path: PathBuf::from(path),
                        owner: None,
                        group: None,
                        mode: None,
                    },
                    selector: None,
                    audiences: Vec::new(),
                    principals: Vec::new(),
                    labels: Default::default(),
                    reload_command: Vec::new(),
                    cluster: None,
                    user: None,
                    service: None,
                    username: None,
                    database: None,
                    names: Vec::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if f.auth_server.trim().is_empty() {
            bail!(
                "--auth-server: required (HOST:PORT of the auth service, or several separated by commas)"
            );
        }
        let cfg = AgentConfig {
            auth_servers: crate::client::parse_servers("--auth-server", &f.auth_server)?,
            ca_pins: f.ca_pins,
            onboarding: Onboarding::with_token(f.join_method, f.token, f.token_path),
            storage: f.storage,
            credential_ttl: dur(
                "credential-ttl",
                &f.credential_ttl,
                sigil_types::DEFAULT_CREDENTIAL_TTL,
            )?,
            renewal_interval: dur(
                "renewal-interval",
                &f.renewal_interval,
                sigil_types::DEFAULT_RENEWAL_INTERVAL,
            )?,
            diag_addr: f.diag_addr,
            outputs,
            services: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.auth_servers.is_empty() {
            bail!("auth_server: required (HOST:PORT of the auth service)");
        }
        if self.ca_pins.is_empty() {
            bail!(
                "ca_pins: at least one pin is required (sha256:<hex>, printed by `sigil bots add` and `sigil status`)"
            );
        }
        for p in &self.ca_pins {
            let hex = p.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("ca_pins: {p:?} is not of the form sha256:<64 hex digits>");
            }
        }
        self.onboarding.validate()?;
        if self.storage.as_os_str().is_empty() {
            bail!("storage.path: required");
        }
        if self.renewal_interval < Duration::from_secs(1) {
            bail!("renewal_interval: must be at least 1s");
        }
        if self.credential_ttl < Duration::from_secs(60) {
            bail!("credential_ttl: must be at least 1m");
        }
        if self.renewal_interval >= self.credential_ttl {
            bail!(
                "renewal_interval ({}) must be shorter than credential_ttl ({}) or credentials would lapse",
                sigil_types::format_duration(self.renewal_interval),
                sigil_types::format_duration(self.credential_ttl)
            );
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if !OUTPUT_TYPES.contains(&o.kind.as_str()) {
                bail!(
                    "outputs[{i}].type: {:?} is not a known output type ({})",
                    o.kind,
                    OUTPUT_TYPES.join(", ")
                );
            }
            if o.destination.kind != "directory" {
                bail!(
                    "outputs[{i}].destination.type: {:?} is not supported; use `directory`",
                    o.destination.kind
                );
            }
            destination::settings(&format!("outputs[{i}].destination"), &o.destination)?;
            if o.kind == "ssh-host" {
                destination::check_not_given_away(
                    &format!("outputs[{i}].destination"),
                    &o.kind,
                    &o.destination,
                )?;
            }
            if o.reload_command.first().is_some_and(String::is_empty) {
                bail!("outputs[{i}].reload_command: the program (first element) is empty");
            }
            let workload = o.kind.starts_with("workload-identity-");
            match (&o.selector, workload) {
                (None, true) => bail!(
                    "outputs[{i}].selector: required for {}, e.g. {{name: payments}} or {{labels: {{env: prod}}}}",
                    o.kind
                ),
                (Some(_), false) => {
                    bail!("outputs[{i}].selector: only workload identity outputs take a selector")
                }
                (Some(s), true) => s
                    .validate()
                    .map_err(|e| anyhow::anyhow!("outputs[{i}].selector: {e}"))?,
                (None, false) => {}
            }
            match (o.kind.as_str(), o.audiences.is_empty()) {
                ("workload-identity-jwt", true) => {
                    bail!("outputs[{i}].audiences: give at least one audience for the JWT-SVID")
                }
                ("workload-identity-jwt", false) => {}
                (_, false) => {
                    bail!("outputs[{i}].audiences: only workload-identity-jwt takes audiences")
                }
                _ => {}
            }
            if o.audiences.iter().any(|a| a.trim().is_empty()) {
                bail!("outputs[{i}].audiences: audiences may not be empty strings");
            }
            ssh_host::validate(i, o)?;
            kubernetes::validate(i, o)?;
            database::validate(i, o)?;
        }
        for (i, s) in self.services.iter().enumerate() {
            if !SERVICE_TYPES.contains(&s.kind.as_str()) {
                bail!(
                    "services[{i}].type: {:?} is not a known service type ({})",
                    s.kind,
                    SERVICE_TYPES.join(", ")
                );
            }
            if s.kind == app_tunnel::KIND {
                app_tunnel::validate(i, s)?;
                continue;
            }
            if s.app.is_some() || s.proxy.is_some() || s.proxy_ca_file.is_some() {
                bail!(
                    "services[{i}]: app, proxy and proxy_ca_file are for application-tunnel services"
                );
            }
            s.socket_path()
                .map_err(|e| anyhow::anyhow!("services[{i}].{e}"))?;
            if let Some(sel) = &s.selector {
                sel.validate()
                    .map_err(|e| anyhow::anyhow!("services[{i}].selector: {e}"))?;
            }
            for a in s.attestors.iter().flatten() {
                if !ATTESTORS.contains(&a.as_str()) {
                    bail!(
                        "services[{i}].attestors: {a:?} is not a known attestor ({})",
                        ATTESTORS.join(", ")
                    );
                }
            }
        }
        Ok(())
    }
}

/// A config with the given `outputs:` entries (YAML lines), as the agent would read
/// it from a file: for the per-output checks' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::AgentConfig;

    const BASE: &str = "version: v1\nauth_server: 127.0.0.1:3025\nca_pins: [sha256:0000000000000000000000000000000000000000000000000000000000000000]\nonboarding: {join_method: token, token: abc}\nstorage: {type: directory, path: /tmp/s}\noutputs:\n";

    pub fn parse(outputs: &str) -> anyhow::Result<AgentConfig> {
        AgentConfig::parse(&format!("{BASE}{outputs}"), "agent.yaml")
    }
}

/// serde_norway appends " at line L column C"; we print the location first.
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// The 1-based line where a top-level key appears, for validation errors.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn base() -> String {
        format!(
            "version: v1\nauth_server: 127.0.0.1:3025\nca_pins: [{PIN}]\nonboarding: {{join_method: token, token: abc}}\nstorage: {{type: directory, path: /tmp/s}}\noutputs:\n  - type: identity\n    destination: {{type: directory, path: /tmp/o}}\n"
        )
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = AgentConfig::parse(&base(), "agent.yaml").expect("valid");
        assert_eq!(c.auth_servers.len(), 1);
        assert_eq!(c.auth_servers[0].to_string(), "127.0.0.1:3025");
        assert_eq!(c.credential_ttl, Duration::from_secs(3600));
        assert_eq!(c.renewal_interval, Duration::from_secs(1200));
        assert_eq!(c.outputs.len(), 1);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = base().replace("storage:", "storgae:");
        let e = AgentConfig::parse(&text, "agent.yaml")
            .expect_err("typo")
            .to_string();
        assert!(e.starts_with("agent.yaml:5:"), "{e}");
        assert!(e.contains("storgae"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let text = format!("{}credential_ttl: 5parsecs\n", base());
        let e = AgentConfig::parse(&text, "a.yaml")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("a.yaml:9:"), "{e}");
        assert!(e.contains("credential_ttl"), "{e}");
    }

    /// The exact shape of the workload identity documentation.
    const WORKLOAD: &str = "outputs:
  - type: workload-identity-x509
    selector: {name: payments}
    destination: {type: directory, path: /run/payments}
  - type: workload-identity-jwt
    selector: {labels: {env: [prod, staging]}}
    audiences: [vault]
    destination: {type: directory, path: /run/jwt}
services:
  - type: workload-api
    listen: unix:///run/sigil/workload.sock
    selector: {labels: {env: prod}}
";

    fn with_workload(extra: &str) -> String {
        let head = base();
        let head = &head[..head.find("outputs:").expect("outputs")];
        format!("{head}{extra}")
    }

    #[test]
    fn parses_workload_outputs_and_services() {
        let c = AgentConfig::parse(&with_workload(WORKLOAD), "agent.yaml").expect("valid");
        assert_eq!(c.outputs.len(), 2);
        assert_eq!(c.outputs[1].audiences, vec!["vault".to_string()]);
        assert_eq!(c.services.len(), 1);
        assert_eq!(
            c.services[0].socket_path().expect("path"),
            PathBuf::from("/run/sigil/workload.sock")
        );
    }

    #[test]
    fn workload_config_errors_name_line_and_field() {
        for (bad, want) in [
            (
                WORKLOAD.replace("listen: unix:///run", "listen: tcp://run"),
                "services[0].listen",
            ),
            (
                WORKLOAD.replace("type: workload-api", "type: workload-apx"),
                "services[0].type",
            ),
            (
                WORKLOAD.replace("    audiences: [vault]\n", ""),
                "outputs[1].audiences",
            ),
            (
                WORKLOAD.replace("    selector: {name: payments}\n", ""),
                "outputs[0].selector",
            ),
            (
                WORKLOAD.replace(
                    "selector: {labels: {env: prod}}",
                    "selector: {labels: {env: prod}}\n    attestors: [unix, k8s]",
                ),
                "services[0].attestors",
            ),
        ] {
            let e = AgentConfig::parse(&with_workload(&bad), "agent.yaml")
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with("agent.yaml:"), "names the file: {e}");
            let line: usize = e
                .split(':')
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            assert!(line > 0, "names a line: {e}");
        }
    }

    #[test]
    fn renewal_must_be_shorter_than_ttl() {
        let text = format!("{}credential_ttl: 10m\nrenewal_interval: 20m\n", base());
        assert!(AgentConfig::parse(&text, "a").is_err());
    }

    #[test]
    fn bad_pin_rejected() {
        let text = base().replace(PIN, "sha256:abc");
        let e = AgentConfig::parse(&text, "a")
            .expect_err("bad pin")
            .to_string();
        assert!(e.contains("ca_pins"), "{e}");
    }

    #[test]
    fn flags_build_outputs() {
        let c = AgentConfig::from_flags(AgentFlags {
            auth_server: "127.0.0.1:1".into(),
            ca_pins: vec![PIN.into()],
            token: Some("t".into()),
            storage: "/tmp/x".into(),
            outputs: vec!["identity:/tmp/y".into()],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(c.outputs[0].destination.path, PathBuf::from("/tmp/y"));
        assert!(
            AgentConfig::from_flags(AgentFlags {
                outputs: vec!["nocolon".into()],
                ..Default::default()
            })
            .is_err()
        );
    }
}
