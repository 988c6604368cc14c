//! `sigil auth start` and `sigil agent start`: argument checks, then the library
//! crates do the work.

use crate::admin::parse_flag_duration;
use crate::cli::{AgentStartArgs, AuthStartArgs, GlobalArgs};
use crate::error::CliError;

/// `sigil auth start`: runs until SIGINT/SIGTERM.
pub async fn auth_start(global: &GlobalArgs, args: &AuthStartArgs) -> anyhow::Result<()> {
    let cfg = auth_config(global, args)?;
    sigil_auth::run(cfg).await
}

/// The auth service configuration from the flags.
pub fn auth_config(
    global: &GlobalArgs,
    args: &AuthStartArgs,
) -> Result<sigil_auth::AuthConfig, CliError> {
    let data_dir = global.data_dir.clone().ok_or_else(|| {
        CliError::usage("sigil auth start needs --data-dir DIR (where the auth service keeps its keys and database)")
    })?;
    Ok(sigil_auth::AuthConfig {
        data_dir,
        listen: args.listen,
        public_listen: args.public_listen,
        cluster_name: args.cluster_name.clone(),
        server_names: args.server_names.clone(),
        public_url: args.public_url.clone(),
        outbound_ca_file: args.outbound_ca_file.clone(),
        sts_endpoints: args.sts_endpoints.clone(),
        audit_key_file: args.audit_key.clone(),
        store_url: store_url(args.store.as_deref(), "SIGIL_STORE")?,
        new_audit_key: args.new_audit_key,
        ca_keys: args.ca_keys.source(|k| std::env::var(k).ok())?,
        instance_retention: parse_flag_duration("instance-retention", &args.instance_retention)?,
        spiffe_bundle_endpoint_listen: args.spiffe_bundle_endpoint_listen,
        web_client_certificates: args.web_client_certificates,
    })
}

/// `--store`: absent or `sqlite` means SQLite in the data dir; otherwise a PostgreSQL URL,
/// with no password unless it came from the environment variable `env`.
fn store_url(store: Option<&str>, env: &str) -> Result<Option<String>, CliError> {
    let Some(url) = store
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "sqlite")
    else {
        return Ok(None);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(CliError::usage(format!(
            "--store {}: expected `sqlite` (the default) or a postgres:// URL",
            sigil_store::redacted_url(url)
        )));
    }
    let from_env = std::env::var(env).is_ok_and(|e| e.trim() == url);
    if sigil_store::url_has_password(url) && !from_env {
        return Err(CliError::usage(format!(
            "--store {} carries a password on the command line, where any user's `ps` shows \
             it: drop it from the URL and set PGPASSWORD or a passfile (~/.pgpass), or pass \
             the whole URL in {env}",
            sigil_store::redacted_url(url)
        )));
    }
    Ok(Some(url.to_string()))
}

/// `sigil auth migrate --from sqlite:PATH --to postgres://…`.
pub async fn auth_migrate(args: &crate::cli::AuthMigrateArgs) -> anyhow::Result<()> {
    let path = args.from.strip_prefix("sqlite:").ok_or_else(|| {
        CliError::usage(format!(
            "--from {:?}: expected sqlite:PATH (the sigil.db of a stopped auth server)",
            args.from
        ))
    })?;
    let to = store_url(Some(&args.to), "SIGIL_MIGRATE_TO")?.ok_or_else(|| {
        CliError::usage("--to: expected a postgres:// URL (the target of the migration)")
    })?;
    let report = sigil_auth::migrate(std::path::Path::new(path), &to).await?;
    println!("{report}");
    Ok(())
}

/// `sigil agent start`: from --config FILE or from flags.
pub async fn agent_start(global: &GlobalArgs, args: &AgentStartArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => {
            if global.auth_server.is_some() {
                tracing::warn!(
                    "--auth-server/SIGIL_AUTH_SERVER is ignored with --config: the config file's auth_server is used"
                );
            }
            if args.diag_addr.is_some() {
                tracing::warn!(
                    "--diag-addr is ignored with --config: set diag_addr in the config file"
                );
            }
            // The loader's errors already name file, line and field; bad config is bad input.
            sigil_agent::AgentConfig::load(path).map_err(|e| CliError::usage(format!("{e:#}")))?
        }
        None => sigil_agent::AgentConfig::from_flags(agent_flags(global, args)?)
            .map_err(|e| CliError::usage(format!("{e:#}")))?,
    };
    sigil_agent::run(cfg, args.oneshot).await
}

/// The agent's flags, checked for what is always required so the error names the flag.
pub fn agent_flags(
    global: &GlobalArgs,
    args: &AgentStartArgs,
) -> Result<sigil_agent::AgentFlags, CliError> {
    let auth_server = global.auth_server.clone().ok_or_else(|| {
        CliError::usage("sigil agent start needs --config FILE, or --auth-server HOST:PORT with --ca-pin, --storage and --output")
    })?;
    if args.ca_pins.is_empty() {
        return Err(CliError::usage(
            "sigil agent start needs --ca-pin sha256:HEX (printed by `sigil bots add` and `sigil status`)",
        ));
    }
    let storage = args.storage.clone().ok_or_else(|| {
        CliError::usage("sigil agent start needs --storage DIR (where the agent keeps its own key)")
    })?;
    for (flag, value) in [
        ("credential-ttl", &args.credential_ttl),
        ("renewal-interval", &args.renewal_interval),
    ] {
        if let Some(v) = value {
            parse_flag_duration(flag, v)?;
        }
    }
    Ok(sigil_agent::AgentFlags {
        auth_server,
        ca_pins: args.ca_pins.clone(),
        join_method: args.join_method.clone(),
        token: args.token.clone(),
        token_path: args.token_path.clone(),
        storage,
        outputs: args.outputs.clone(),
        credential_ttl: args.credential_ttl.clone(),
        renewal_interval: args.renewal_interval.clone(),
        diag_addr: args.diag_addr.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn base() -> (GlobalArgs, AgentStartArgs) {
        let g = GlobalArgs {
            auth_server: Some("127.0.0.1:3025".into()),
            ..Default::default()
        };
        let a = AgentStartArgs {
            ca_pins: vec!["sha256:00".into()],
            token: Some("t".into()),
            storage: Some(PathBuf::from("/s")),
            outputs: vec!["identity:/o".into()],
            credential_ttl: Some("1h".into()),
            ..Default::default()
        };
        (g, a)
    }

    #[test]
    fn agent_flags_map_through() {
        let (g, a) = base();
        let f = agent_flags(&g, &a).unwrap();
        assert_eq!(f.auth_server, "127.0.0.1:3025");
        assert_eq!(f.ca_pins, ["sha256:00"]);
        assert_eq!(f.outputs, ["identity:/o"]);
        assert_eq!(f.credential_ttl.as_deref(), Some("1h"));
    }

    #[test]
    fn agent_flags_name_what_is_missing() {
        let (_, a) = base();
        let err = agent_flags(&GlobalArgs::default(), &a).unwrap_err();
        assert!(err.message.contains("--auth-server"), "{}", err.message);
        let (g, mut a) = base();
        a.ca_pins.clear();
        assert!(
            agent_flags(&g, &a)
                .unwrap_err()
                .message
                .contains("--ca-pin")
        );
        let (g, mut a) = base();
        a.storage = None;
        assert!(
            agent_flags(&g, &a)
                .unwrap_err()
                .message
                .contains("--storage")
        );
        let (g, mut a) = base();
        a.renewal_interval = Some("20x".into());
        assert!(
            agent_flags(&g, &a)
                .unwrap_err()
                .message
                .contains("--renewal-interval")
        );
    }

    #[test]
    fn auth_needs_data_dir() {
        let args = AuthStartArgs {
            listen: "127.0.0.1:1".parse().unwrap(),
            public_listen: "127.0.0.1:2".parse().unwrap(),
            cluster_name: Some("example.test".into()),
            server_names: vec!["auth.example.test".into()],
            public_url: Some("https://auth.example.test".into()),
            outbound_ca_file: None,
            sts_endpoints: vec![],
            audit_key: None,
            store: None,
            new_audit_key: false,
            ca_keys: Default::default(),
            instance_retention: "7d".into(),
            spiffe_bundle_endpoint_listen: None,
            web_client_certificates: true,
        };
        assert!(
            auth_config(&GlobalArgs::default(), &args)
                .unwrap_err()
                .message
                .contains("--data-dir")
        );
        let g = GlobalArgs {
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        let cfg = auth_config(&g, &args).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/d"));
        assert_eq!(cfg.server_names, ["auth.example.test"]);
        assert_eq!(cfg.cluster_name.as_deref(), Some("example.test"));
        assert_eq!(cfg.store_url, None, "SQLite by default");
        assert_eq!(cfg.instance_retention.as_secs(), 7 * 86_400);
        assert!(
            cfg.web_client_certificates,
            "the flag reaches the auth service"
        );
        let bad = AuthStartArgs {
            instance_retention: "a week".into(),
            ..args
        };
        let err = auth_config(&g, &bad).unwrap_err().message;
        assert!(err.contains("--instance-retention"), "{err}");
    }

    #[test]
    fn store_urls() {
        assert_eq!(store_url(None, "X_UNSET").unwrap(), None);
        assert_eq!(store_url(Some("sqlite"), "X_UNSET").unwrap(), None);
        assert_eq!(
            store_url(Some("postgres://u@h/d?sslmode=verify-full"), "X_UNSET").unwrap(),
            Some("postgres://u@h/d?sslmode=verify-full".into())
        );
        let e = store_url(Some("mysql://h/d"), "X_UNSET")
            .unwrap_err()
            .message;
        assert!(e.contains("postgres://"), "{e}");
        let e = store_url(Some("postgres://u:hunter2@h/d"), "X_UNSET")
            .unwrap_err()
            .message;
        assert!(e.contains("PGPASSWORD") && !e.contains("hunter2"), "{e}");
    }
}
