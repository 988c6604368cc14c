//! `sigil workload-identity issue|test|revocations add|ls|rm`.

use super::connect::connect;
use super::flag_secs;
use super::resources::{ResourceKind, delete, list, print_list};
use crate::cli::{
    Format, GlobalArgs, RevocationsAddArgs, RevocationsCommand, WorkloadIdentityCommand,
    WorkloadIdentityIssueArgs, WorkloadIdentityTestArgs,
};
use crate::error::CliError;
use crate::files::{self, PUBLIC, SECRET};
use crate::output::{self, str_at, unix_time};
use serde_json::{Value, json};
use sigil_proto::v1::{
    AdminIssueWorkloadIdentityRequest, CreateResourceRequest, IssueWorkloadIdentitiesResponse,
    TestWorkloadIdentityRequest, TestWorkloadIdentityResponse,
};
use sigil_types::{Metadata, Resource, WorkloadIdentityX509RevocationSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Runs a `sigil workload-identity` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &WorkloadIdentityCommand) -> anyhow::Result<()> {
    match cmd {
        WorkloadIdentityCommand::Issue(args) => issue(global, args).await,
        WorkloadIdentityCommand::Test(args) => test(global, args).await,
        WorkloadIdentityCommand::Revocations(RevocationsCommand::Add(args)) => {
            revoke(global, args).await
        }
        WorkloadIdentityCommand::Revocations(RevocationsCommand::Ls(f)) => {
            let kind = ResourceKind::WorkloadIdentityX509Revocation;
            let mut client = connect(global).await?;
            let items = list(&mut client, kind, "").await?;
            print_list(kind, &items, f.format)
        }
        WorkloadIdentityCommand::Revocations(RevocationsCommand::Rm(s)) => {
            let serial = parse_serial(&s.serial)?;
            delete(
                global,
                ResourceKind::WorkloadIdentityX509Revocation,
                &serial,
            )
            .await
        }
    }
}

/// Normalises a serial typed by a person (`01:A2:FF`, `0x1a2ff`, `serial=01A2FF`)
/// into the revocation name (`01a2ff`).
pub fn parse_serial(input: &str) -> Result<String, CliError> {
    // `openssl x509 -serial` prints `serial=01A2FF`; accept it pasted whole.
    let trimmed = input.trim();
    let bare = trimmed
        .strip_prefix("serial=")
        .or_else(|| trimmed.strip_prefix("SERIAL="))
        .unwrap_or(trimmed);
    sigil_types::normalize_serial_hex(bare).ok_or_else(|| {
        CliError::usage(format!(
            "invalid serial {input:?}: give the certificate's serial number in hex, 1 to 20 \
             bytes and not zero, e.g. 01:A2:FF, 0x01a2ff or 1A2FF; \
             `openssl x509 -noout -serial -in svid.pem` prints it"
        ))
    })
}

/// Parses repeated `--attr KEY=VALUE` flags (the value may contain `=` and be empty).
pub fn parse_attrs(attrs: &[String]) -> Result<HashMap<String, String>, CliError> {
    let mut out = HashMap::with_capacity(attrs.len());
    for a in attrs {
        let (key, value) = a.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "invalid --attr {a:?}: use KEY=VALUE, e.g. --attr workload.unix.uid=1000"
            ))
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(CliError::usage(format!(
                "invalid --attr {a:?}: the attribute name before '=' is empty"
            )));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(CliError::usage(format!(
                "--attr {key} is given more than once: an attribute has one value"
            )));
        }
    }
    Ok(out)
}

/// The revocation resource for `revocations add`, validated locally so a bad
/// reason fails before anything is sent.
pub fn revocation_resource(
    serial: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Value, CliError> {
    let name = parse_serial(serial)?;
    let res = Resource::new(
        Metadata::named(name),
        WorkloadIdentityX509RevocationSpec {
            reason: reason.trim().to_string(),
            revoked_at: now.replace_nanosecond(0).unwrap_or(now),
        },
    );
    res.validate().map_err(|e| {
        CliError::usage(match e.field.as_str() {
            "spec.reason" => format!("invalid --reason: {}", e.message),
            _ => format!("invalid serial: {e}"),
        })
    })?;
    serde_json::to_value(&res)
        .map_err(|e| CliError::other(format!("cannot encode the revocation: {e}")))
}

/// `revoked serial <hex> (<reason>)`
pub fn revocation_text(v: &Value) -> String {
    format!(
        "revoked serial {} ({})",
        str_at(v, "/metadata/name"),
        str_at(v, "/spec/reason")
    )
}

async fn revoke(global: &GlobalArgs, args: &RevocationsAddArgs) -> anyhow::Result<()> {
    let res = revocation_resource(&args.serial, &args.reason, OffsetDateTime::now_utc())?;
    let mut client = connect(global).await?;
    let resp = client
        .create_resource(CreateResourceRequest {
            json: res.to_string(),
            upsert: false,
        })
        .await?
        .into_inner();
    // Show what the server stored.
    let stored = serde_json::from_str::<Value>(&resp.json).map_err(|e| {
        CliError::other(format!(
            "the revocation was stored, but the auth service's reply is not JSON: {e}"
        ))
    })?;
    match args.format.format {
        Format::Json => output::out(&output::json(&stored)?)?,
        Format::Text => output::out(&revocation_text(&stored))?,
    }
    Ok(())
}

/// File names `issue` writes into `--out`.
pub const SVID_CERT: &str = "svid.pem";
/// Private key (PKCS#8 PEM, mode 0600).
pub const SVID_KEY: &str = "svid.key";
/// The X.509 trust bundle.
pub const BUNDLE: &str = "bundle.pem";
/// The CRL of revoked X.509-SVIDs (only when something is revoked).
pub const CRL: &str = "svid-crl.pem";
/// The JWT-SVID (only with `--jwt-audience`, mode 0600).
pub const JWT_SVID: &str = "jwt_svid";

/// The request for `issue`, from the flags and the new key's SPKI.
pub fn issue_request(
    args: &WorkloadIdentityIssueArgs,
    spki_der: Vec<u8>,
) -> Result<AdminIssueWorkloadIdentityRequest, CliError> {
    let ttl = flag_secs("ttl", args.ttl.as_deref())?;
    if let Some(a) = args.jwt_audiences.iter().find(|a| a.trim().is_empty()) {
        return Err(CliError::usage(format!(
            "invalid --jwt-audience {a:?}: must not be empty"
        )));
    }
    Ok(AdminIssueWorkloadIdentityRequest {
        name: args.name.clone(),
        attributes: parse_attrs(&args.attrs)?,
        x509_public_key_spki: spki_der,
        jwt_audiences: args.jwt_audiences.clone(),
        x509_ttl_seconds: ttl,
        jwt_ttl_seconds: ttl,
    })
}

/// `name: reason` for each identity the server refused.
pub fn denial_lines(resp: &IssueWorkloadIdentitiesResponse) -> Vec<String> {
    resp.denials
        .iter()
        .map(|d| format!("{}: {}", d.name, d.reason))
        .collect()
}

/// One file to write: name inside `--out`, contents, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    /// File name.
    pub name: &'static str,
    /// Contents.
    pub data: Vec<u8>,
    /// Unix mode.
    pub mode: u32,
}

/// The files for an issued SVID, or exit 3 when nothing was issued. Pure, so
/// nothing is written unless everything needed is there.
pub fn issued_files(
    name: &str,
    resp: &IssueWorkloadIdentitiesResponse,
    key_pem: &str,
) -> Result<Vec<OutFile>, CliError> {
    let Some(svid) = resp.x509_svids.first() else {
        return Err(CliError::denied(format!(
            "workload identity {name:?} was not issued{}",
            if resp.denials.is_empty() {
                String::new()
            } else {
                " (reasons above)".to_string()
            }
        )));
    };
    let bundle = resp
        .bundle
        .as_ref()
        .filter(|b| !b.x509_authorities.is_empty())
        .ok_or_else(|| CliError::other("the auth service sent no X.509 trust bundle"))?;
    let mut out = vec![
        OutFile {
            name: SVID_KEY,
            data: key_pem.as_bytes().to_vec(),
            mode: SECRET,
        },
        OutFile {
            name: SVID_CERT,
            // The SVID, then an imported intermediate CA's chain.
            data: std::iter::once(&svid.cert_der)
                .chain(&svid.chain_der)
                .map(|d| files::pem("CERTIFICATE", d))
                .collect::<String>()
                .into_bytes(),
            mode: PUBLIC,
        },
        OutFile {
            name: BUNDLE,
            data: bundle
                .x509_authorities
                .iter()
                .map(|der| files::pem("CERTIFICATE", der))
                .collect::<String>()
                .into_bytes(),
            mode: PUBLIC,
        },
    ];
    let crls: Vec<&[u8]> = if bundle.crl_ders.is_empty() && !bundle.crl_der.is_empty() {
        vec![&bundle.crl_der]
    } else {
        bundle.crl_ders.iter().map(|c| c.as_slice()).collect()
    };
    if !crls.is_empty() {
        out.push(OutFile {
            name: CRL,
            data: crls
                .iter()
                .map(|c| files::pem("X509 CRL", c))
                .collect::<String>()
                .into_bytes(),
            mode: PUBLIC,
        });
    }
    if let Some(jwt) = resp.jwt_svids.first() {
        out.push(OutFile {
            name: JWT_SVID,
            data: format!("{}\n", jwt.token).into_bytes(),
            mode: SECRET,
        });
    }
    Ok(out)
}

/// Writes the files into `dir` (created 0700 if missing), each atomically, and
/// removes a `svid-crl.pem` or `jwt_svid` left from an earlier run that this one
/// did not produce, so the directory never mixes two issuances. Returns the paths.
pub fn write_files(dir: &Path, out: &[OutFile]) -> anyhow::Result<Vec<PathBuf>> {
    let d = files::ensure_private_dir(dir)?;
    let mut written = Vec::with_capacity(out.len());
    for f in out {
        d.write(f.name, &f.data, f.mode)?;
        written.push(dir.join(f.name));
    }
    for optional in [CRL, JWT_SVID] {
        if !out.iter().any(|f| f.name == optional) {
            d.remove(optional)?;
        }
    }
    Ok(written)
}

/// `{"spiffe_id","serial","expires","files":[...],"jwt_svids":[{"spiffe_id","expires"}]}`
pub fn issue_json(resp: &IssueWorkloadIdentitiesResponse, written: &[PathBuf]) -> Value {
    let svid = resp.x509_svids.first().cloned().unwrap_or_default();
    json!({
        "spiffe_id": svid.spiffe_id,
        "serial": svid.serial_hex,
        "expires": unix_time(svid.expires_unix),
        "files": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "jwt_svids": resp.jwt_svids.iter().map(|j| json!({
            "spiffe_id": j.spiffe_id,
            "expires": unix_time(j.expires_unix),
        })).collect::<Vec<_>>(),
    })
}

/// `issued <spiffe_id> (serial <hex>, expires <time>) into <DIR>` and a line per JWT-SVID.
pub fn issue_text(
    resp: &IssueWorkloadIdentitiesResponse,
    dir: &Path,
    audiences: &[String],
) -> String {
    let svid = resp.x509_svids.first().cloned().unwrap_or_default();
    let mut lines = vec![format!(
        "issued {} (serial {}, expires {}) into {}",
        svid.spiffe_id,
        svid.serial_hex,
        unix_time(svid.expires_unix),
        dir.display()
    )];
    for (i, j) in resp.jwt_svids.iter().enumerate() {
        let file = if i == 0 {
            format!(" into {}", dir.join(JWT_SVID).display())
        } else {
            String::new()
        };
        lines.push(format!(
            "issued JWT-SVID {} for {} (expires {}){file}",
            j.spiffe_id,
            audiences.join(", "),
            unix_time(j.expires_unix)
        ));
    }
    lines.join("\n")
}

async fn issue(global: &GlobalArgs, args: &WorkloadIdentityIssueArgs) -> anyhow::Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        return Err(CliError::usage(format!(
            "--out {} exists and is not a directory",
            args.out.display()
        ))
        .into());
    }
    let key = sigil_pki::TlsKeyPair::generate()
        .map_err(|e| CliError::other(format!("cannot generate a key: {e}")))?;
    let req = issue_request(args, key.spki_der())?;
    let mut client = connect(global).await?;
    let resp = client.issue_workload_identity(req).await?.into_inner();
    for line in denial_lines(&resp) {
        eprintln!("{}", output::safe(&line));
    }
    let out = issued_files(&args.name, &resp, &key.to_pkcs8_pem())?;
    let written = write_files(&args.out, &out)?;
    match args.format.format {
        Format::Json => output::out(&output::json(&issue_json(&resp, &written))?)?,
        Format::Text => output::out(&issue_text(&resp, &args.out, &args.jwt_audiences))?,
    }
    Ok(())
}

/// The response fields as an object.
pub fn test_json(r: &TestWorkloadIdentityResponse) -> Value {
    json!({
        "allowed": r.allowed,
        "matched_rule": r.matched_rule,
        "explanation": r.explanation,
        "spiffe_id": r.spiffe_id,
        "template_error": r.template_error,
        "dns_sans": r.dns_sans,
    })
}

/// True if the rules allowed it (the server's explanation says so even when the
/// template then failed).
fn rules_allowed(explanation: &str) -> bool {
    explanation.starts_with("allowed")
}

/// The explanation without a leading `allowed`/`allowed:`, for `allowed: ...`.
fn allowed_detail(explanation: &str) -> &str {
    let rest = explanation.strip_prefix("allowed").unwrap_or(explanation);
    rest.trim_start_matches(':').trim_start()
}

/// `allowed: ...` + `SPIFFE ID: ...` (+ `DNS SANs: ...`), or `denied: ...`
/// (+ `template: ...`).
pub fn test_text(r: &TestWorkloadIdentityResponse) -> String {
    let mut lines = Vec::new();
    if r.allowed {
        lines.push(format!("allowed: {}", allowed_detail(&r.explanation)));
        lines.push(format!("SPIFFE ID: {}", r.spiffe_id));
        if !r.dns_sans.is_empty() {
            lines.push(format!("DNS SANs: {}", r.dns_sans.join(", ")));
        }
    } else if !r.template_error.is_empty() && rules_allowed(&r.explanation) {
        lines.push(format!(
            "denied: the rules allow it ({}) but the template fails",
            allowed_detail(&r.explanation)
        ));
    } else if !r.explanation.is_empty() {
        lines.push(format!("denied: {}", r.explanation));
    } else if r.template_error.is_empty() {
        lines.push("denied".to_string());
    }
    if !r.template_error.is_empty() {
        lines.push(format!("template: {}", r.template_error));
    }
    lines.join("\n")
}

/// Exit 0 when allowed, 3 when denied or the template fails.
pub fn test_outcome(name: &str, r: &TestWorkloadIdentityResponse) -> Result<(), CliError> {
    if !r.template_error.is_empty() {
        Err(CliError::denied(format!(
            "workload identity {name:?}: the template fails for these attributes"
        )))
    } else if !r.allowed {
        Err(CliError::denied(format!(
            "workload identity {name:?} would be denied for these attributes"
        )))
    } else {
        Ok(())
    }
}

async fn test(global: &GlobalArgs, args: &WorkloadIdentityTestArgs) -> anyhow::Result<()> {
    let req = TestWorkloadIdentityRequest {
        name: args.name.clone(),
        attributes: parse_attrs(&args.attrs)?,
    };
    let mut client = connect(global).await?;
    let resp = client.test_workload_identity(req).await?.into_inner();
    match args.format.format {
        Format::Json => output::out(&output::json(&test_json(&resp))?)?,
        Format::Text => output::out(&test_text(&resp))?,
    }
    test_outcome(&args.name, &resp)?;
    Ok(())
}

#[cfg(test)]
#[path = "workload_identity_tests.rs"]
mod tests;
