//! `sigil ca export --type TYPE`: a CA's public key in the form its consumers
//! read. The clap structures live here rather than in `cli.rs` to keep that
//! file small; `cli::Command::Ca` refers to them.

use clap::{Args, Subcommand, ValueEnum};
use sigil_pki::CaPurpose;
use sigil_proto::v1::{ExportCaRequest, ExportCaResponse};

use sigil_proto::v1::{
    CaRotationStatus, CaRotationsRequest, ImportCaRequest, RequestCaRequest, RotateCaRequest,
};
use sigil_types::HumanDuration;

use super::connect::connect;
use crate::cli::Format;
use crate::cli::{FormatArg, GlobalArgs};
use crate::error::CliError;
use crate::output;

/// `sigil ca ...`
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print a CA's public key: ssh-user/ssh-host as an OpenSSH key line (for
    /// TrustedUserCAKeys / @cert-authority), the X.509 CAs as a PEM
    /// certificate, jwt as a JWKS. While a rotation is in progress: both CAs
    /// (the new one first), which relying parties must trust until standby.
    Export(CaExportArgs),
    /// Rotate a CA without downtime. Without --phase: an automatic rotation
    /// that moves through init, update_clients, update_servers and standby, a
    /// third of --grace-period each. With --phase: one manual step.
    Rotate(CaRotateArgs),
    /// Every CA: its fingerprint and the rotation in progress, if any.
    Status(FormatArg),
    /// Make a key for an intermediate CA (in the auth service's key manager, so
    /// on its HSM if it has one) and print a CSR for your organisation's CA to
    /// sign; then `sigil ca import --cert` without --key. host, client,
    /// db-client, spiffe and kubernetes only.
    Request(CaRequestArgs),
    /// Start a rotation (phase init) to an intermediate CA under your
    /// organisation's root: the certificate chain with its key, or without
    /// --key the chain signed for the last `sigil ca request`. Then move the
    /// rotation on as with `sigil ca rotate --phase`.
    Import(CaImportArgs),
}

/// `sigil ca request`
#[derive(Args, Debug, Clone)]
pub struct CaRequestArgs {
    /// The CA: host, client, db-client, spiffe, kubernetes.
    #[arg(long = "type", value_name = "TYPE")]
    pub ca_type: String,
    /// Write the CSR to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// `sigil ca import`
#[derive(Args, Debug, Clone)]
pub struct CaImportArgs {
    /// The CA: host, client, db-client, spiffe, kubernetes.
    #[arg(long = "type", value_name = "TYPE")]
    pub ca_type: String,
    /// PEM: the CA's certificate first, then the certificates above it (the
    /// root may be left out).
    #[arg(long, value_name = "FILE")]
    pub cert: std::path::PathBuf,
    /// PEM of the CA's ECDSA P-256 private key (PKCS#8 or SEC1). Without it,
    /// the certificate must carry the key of the last `sigil ca request`.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil ca rotate`
#[derive(Args, Debug, Clone)]
pub struct CaRotateArgs {
    /// The CA: host, client, ssh-user, ssh-host, db-client, spiffe, jwt, kubernetes.
    #[arg(long = "type", value_name = "TYPE")]
    pub ca_type: String,
    /// The manual step to make: init (start; the new CA is trusted),
    /// update_clients (the new CA signs), update_servers (the auth service
    /// serves with it), standby (finish), or rollback.
    #[arg(long, value_name = "PHASE", value_parser = ["init", "update_clients", "update_servers", "standby", "rollback"])]
    pub phase: Option<String>,
    /// How long an automatic rotation takes in all (default 30h). Agents have
    /// its last two thirds to renew with the new CA before the old one goes.
    #[arg(long, value_name = "DURATION", conflicts_with = "phase")]
    pub grace_period: Option<HumanDuration>,
    /// standby although some bot instances have not renewed since the new CA
    /// started signing (they will have to join again).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil ca export`
#[derive(Args, Debug, Clone)]
pub struct CaExportArgs {
    /// The CA: host, client, ssh-user, ssh-host, db-client, spiffe, jwt, kubernetes.
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
        CaCommand::Rotate(args) => {
            let purpose = parse_type(&args.ca_type)?;
            let mut client = connect(global).await?;
            let s = client
                .rotate_ca(RotateCaRequest {
                    purpose: purpose.as_str().to_string(),
                    phase: args.phase.clone().unwrap_or_default(),
                    grace_period_seconds: args.grace_period.map_or(0, |d| d.0.as_secs().max(1)),
                    force: args.force,
                })
                .await?
                .into_inner();
            print_rotation(&s, args.format.format)
        }
        CaCommand::Request(args) => {
            let purpose = parse_type(&args.ca_type)?;
            let mut client = connect(global).await?;
            let csr = client
                .request_ca(RequestCaRequest {
                    purpose: purpose.as_str().to_string(),
                })
                .await?
                .into_inner()
                .csr_pem;
            match &args.out {
                Some(path) => {
                    std::fs::write(path, &csr).map_err(|e| {
                        CliError::usage(format!("writing the CSR to {}: {e}", path.display()))
                    })?;
                    output::out(&format!(
                        "CSR for the {purpose} CA written to {}; have your CA sign it (CA:TRUE), then run\n  sigil ca import --type {purpose} --cert SIGNED_CHAIN.pem",
                        path.display()
                    ))?;
                }
                None => output::out(csr.trim_end())?,
            }
            Ok(())
        }
        CaCommand::Import(args) => {
            let purpose = parse_type(&args.ca_type)?;
            let read = |p: &std::path::Path, what: &str| {
                std::fs::read_to_string(p).map_err(|e| {
                    CliError::usage(format!("reading the {what} file {}: {e}", p.display()))
                })
            };
            let cert_chain_pem = read(&args.cert, "--cert")?;
            // Moved into the request, not copied; the process exits right after.
            let key_pem = match &args.key {
                Some(k) => read(k, "--key")?,
                None => String::new(),
            };
            let mut client = connect(global).await?;
            let s = client
                .import_ca(ImportCaRequest {
                    purpose: purpose.as_str().to_string(),
                    cert_chain_pem,
                    key_pem,
                })
                .await?
                .into_inner();
            print_rotation(&s, args.format.format)
        }
        CaCommand::Status(format) => {
            let mut client = connect(global).await?;
            let cas = client
                .ca_rotations(CaRotationsRequest {})
                .await?
                .into_inner()
                .cas;
            match format.format {
                Format::Json => output::out(&output::json(&serde_json::Value::Array(
                    cas.iter().map(rotation_json).collect(),
                ))?)?,
                Format::Text => output::out(&status_table(&cas))?,
            }
            Ok(())
        }
    }
}

/// One CA's rotation after a step, as text or JSON.
fn print_rotation(s: &CaRotationStatus, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::out(&output::json(&rotation_json(s))?)?,
        Format::Text => output::out(&rotation_text(s))?,
    }
    Ok(())
}

/// What one CA's rotation looks like after a step, and the step that comes next.
pub fn rotation_text(s: &CaRotationStatus) -> String {
    let p = &s.purpose;
    if s.phase == "standby" {
        return format!(
            "the {p} CA is in standby: {} signs and is the only one trusted",
            s.established_fingerprint
        );
    }
    let mut out = format!(
        "the {p} CA's rotation {} is in phase {} ({})\n  established CA: {}\n  new CA:         {}\n  signing now:    {}",
        s.rotation_id,
        s.phase,
        s.mode,
        s.established_fingerprint,
        s.new_fingerprint,
        s.signing_fingerprint
    );
    if s.mode == "auto" && !s.next_phase.is_empty() {
        out.push_str(&format!(
            "\n  next: {} at {}",
            s.next_phase,
            unix_time(s.next_phase_unix)
        ));
    } else {
        let next = match s.phase.as_str() {
            "init" => "update_clients",
            "update_clients" => "update_servers",
            _ => "standby",
        };
        out.push_str(&format!(
            "\n  next: sigil ca rotate --type {p} --phase {next}   (or --phase rollback)"
        ));
    }
    out
}

/// TYPE, PHASE, MODE, SIGNING, NEW, NEXT.
pub fn status_table(cas: &[CaRotationStatus]) -> String {
    let rows = cas
        .iter()
        .map(|s| {
            vec![
                s.purpose.clone(),
                s.phase.clone(),
                if s.mode.is_empty() {
                    "-".into()
                } else {
                    s.mode.clone()
                },
                s.signing_fingerprint.clone(),
                if s.new_fingerprint.is_empty() {
                    "-".into()
                } else {
                    s.new_fingerprint.clone()
                },
                if s.next_phase.is_empty() {
                    "-".into()
                } else {
                    format!("{} at {}", s.next_phase, unix_time(s.next_phase_unix))
                },
            ]
        })
        .collect();
    output::table(&["TYPE", "PHASE", "MODE", "SIGNING", "NEW", "NEXT"], rows)
}

fn unix_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn rotation_json(s: &CaRotationStatus) -> serde_json::Value {
    serde_json::json!({
        "type": s.purpose,
        "phase": s.phase,
        "mode": s.mode,
        "rotation_id": s.rotation_id,
        "established_fingerprint": s.established_fingerprint,
        "new_fingerprint": s.new_fingerprint,
        "signing_fingerprint": s.signing_fingerprint,
        "started_unix": s.started_unix,
        "phase_changed_unix": s.phase_changed_unix,
        "next_phase": s.next_phase,
        "next_phase_unix": s.next_phase_unix,
    })
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
        // One line per CA: two while a rotation is in progress.
        CaExportFormat::KnownHosts => value
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("@cert-authority * {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
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
