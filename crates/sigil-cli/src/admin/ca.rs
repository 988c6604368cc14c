//! `sigil ca export --type TYPE`: a CA's public key in the form its consumers
//! read. The clap structures live here rather than in `cli.rs` to keep that
//! file small; `cli::Command::Ca` refers to them.

use clap::{Args, Subcommand, ValueEnum};
use sigil_pki::CaPurpose;
use sigil_proto::v1::{ExportCaRequest, ExportCaResponse};

use super::connect::connect;
use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// `sigil ca ...`
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print a CA's public key: ssh-user/ssh-host as an OpenSSH key line (for
    /// TrustedUserCAKeys / @cert-authority), the X.509 CAs as a PEM
    /// certificate, jwt as a JWKS.
    Export(CaExportArgs),
}

/// `sigil ca export`
#[derive(Args, Debug, Clone)]
pub struct CaExportArgs {
    /// The CA: host, client, ssh-user, ssh-host, db-client, spiffe, jwt.
    #[arg(long = "type", value_name = "TYPE")]
    pub ca_type: String,
    /// `key` (default): the form above. `known_hosts` (ssh-host only): the
    /// `@cert-authority * KEY` line for a client's known_hosts file.
    #[arg(long, value_enum, default_value_t = CaExportFormat::Key, value_name = "FORMAT")]
    pub format: CaExportFormat,
}

/// Output form of `sigil ca export`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaExportFormat {
    /// What the CA's consumers read (OpenSSH line, PEM or JWKS).
    Key,
    /// `@cert-authority * KEY` (ssh-host only).
    #[value(name = "known_hosts", alias = "known-hosts")]
    KnownHosts,
}

/// Runs a `sigil ca` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Export(args) => {
            let purpose = parse_type(&args.ca_type)?;
            if args.format == CaExportFormat::KnownHosts && purpose != CaPurpose::SshHost {
                return Err(CliError::usage(format!(
                    "--format known_hosts is for --type ssh-host (the CA clients trust for host certificates), not {purpose}"
                ))
                .into());
            }
            let mut client = connect(global).await?;
            let resp = client
                .export_ca(ExportCaRequest {
                    purpose: purpose.as_str().to_string(),
                })
                .await?
                .into_inner();
            output::out(&render(purpose, args.format, &resp)?)?;
            Ok(())
        }
    }
}

/// The CA purpose named by `--type`; a usage error (exit 2) lists the valid ones.
pub fn parse_type(value: &str) -> Result<CaPurpose, CliError> {
    CaPurpose::ALL
        .into_iter()
        .find(|p| p.as_str() == value)
        .ok_or_else(|| {
            let names: Vec<&str> = CaPurpose::ALL.iter().map(CaPurpose::as_str).collect();
            CliError::usage(format!(
                "--type {value:?} is not a CA; use one of {}",
                names.join(", ")
            ))
        })
}

/// The text to print, without a trailing newline (`output::out` adds one).
pub fn render(
    purpose: CaPurpose,
    format: CaExportFormat,
    resp: &ExportCaResponse,
) -> anyhow::Result<String> {
    let (value, what) = match purpose {
        CaPurpose::SshUser | CaPurpose::SshHost => (&resp.ssh_public_key, "an OpenSSH key"),
        CaPurpose::Jwt => (&resp.jwks_json, "a JWKS"),
        _ => (&resp.cert_pem, "a PEM certificate"),
    };
    // Fail closed: printing nothing would leave a consumer trusting nothing
    // (or an admin pasting an empty line) without a word.
    if value.trim().is_empty() {
        anyhow::bail!(
            "the auth service sent no public key for the {purpose} CA (expected {what}); is it older than this sigil?"
        );
    }
    let value = value.trim_end();
    Ok(match format {
        CaExportFormat::Key => value.to_string(),
        CaExportFormat::KnownHosts => format!("@cert-authority * {value}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_the_ca_purposes_and_unknown_ones_list_them() {
        assert_eq!(parse_type("ssh-user").unwrap(), CaPurpose::SshUser);
        assert_eq!(parse_type("db-client").unwrap(), CaPurpose::DbClient);
        let e = parse_type("ssh").unwrap_err();
        assert_eq!(crate::error::exit_code(&e.into()), 2);
        let e = parse_type("x509").unwrap_err().to_string();
        for p in CaPurpose::ALL {
            assert!(e.contains(p.as_str()), "{e}");
        }
    }

    #[test]
    fn renders_the_field_of_the_ca_kind() {
        let resp = ExportCaResponse {
            purpose: "ssh-host".into(),
            ssh_public_key: "ssh-ed25519 AAAAC3 sigil-example.test-ssh-host\n".into(),
            ..Default::default()
        };
        assert_eq!(
            render(CaPurpose::SshHost, CaExportFormat::Key, &resp).unwrap(),
            "ssh-ed25519 AAAAC3 sigil-example.test-ssh-host"
        );
        assert_eq!(
            render(CaPurpose::SshHost, CaExportFormat::KnownHosts, &resp).unwrap(),
            "@cert-authority * ssh-ed25519 AAAAC3 sigil-example.test-ssh-host"
        );
        // A response without the field this kind needs is an error, not an empty line.
        assert!(render(CaPurpose::Host, CaExportFormat::Key, &resp).is_err());
        let resp = ExportCaResponse {
            cert_pem: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".into(),
            ..Default::default()
        };
        assert!(
            render(CaPurpose::Spiffe, CaExportFormat::Key, &resp)
                .unwrap()
                .ends_with("-----END CERTIFICATE-----")
        );
    }
}
