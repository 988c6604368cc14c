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
    // Show what the server stored; fall back to what was sent.
    let stored = serde_json::from_str::<Value>(&resp.json).unwrap_or(res);
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
            data: files::pem("CERTIFICATE", &svid.cert_der).into_bytes(),
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
    if !bundle.crl_der.is_empty() {
        out.push(OutFile {
            name: CRL,
            data: files::pem("X509 CRL", &bundle.crl_der).into_bytes(),
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
    files::ensure_private_dir(dir)?;
    let mut written = Vec::with_capacity(out.len());
    for f in out {
        let path = dir.join(f.name);
        files::write_atomic(&path, &f.data, f.mode)?;
        written.push(path);
    }
    for optional in [CRL, JWT_SVID] {
        if !out.iter().any(|f| f.name == optional) {
            match std::fs::remove_file(dir.join(optional)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "removing the stale {}",
                        dir.join(optional).display()
                    )));
                }
                _ => {}
            }
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
        eprintln!("{line}");
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
mod tests {
    use super::*;
    use crate::cli::FormatArg;
    use crate::error::Failure;
    use sigil_proto::v1::{JwtSvid, TrustBundle, WorkloadIdentityDenial, X509Svid};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn serials_are_normalised() {
        for (input, want) in [
            ("01:A2:FF", "01a2ff"),
            ("0x01a2ff", "01a2ff"),
            ("0X1A2FF", "01a2ff"),
            ("00001f", "1f"),
            ("1F3A9C", "1f3a9c"),
            ("serial=01A2FF", "01a2ff"),
            (" 7 ", "07"),
        ] {
            assert_eq!(parse_serial(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_serials_are_usage_errors_that_explain() {
        for bad in ["", "0", "00:00", "xyz", "0x", "12-34", &"f".repeat(41)] {
            let err = parse_serial(bad).unwrap_err();
            assert_eq!(err.failure, Failure::Usage, "{bad}");
            assert_eq!(err.failure.exit_code(), 2);
            assert!(err.message.contains("in hex"), "{}", err.message);
            assert!(
                err.message
                    .contains("openssl x509 -noout -serial -in svid.pem"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn attrs() {
        let got = parse_attrs(&[
            "workload.unix.uid=1000".into(),
            "workload.k8s.label=a=b".into(),
            "bot.name=".into(),
        ])
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got["workload.unix.uid"], "1000");
        assert_eq!(got["workload.k8s.label"], "a=b");
        assert_eq!(got["bot.name"], "");
        assert!(parse_attrs(&[]).unwrap().is_empty());
        for bad in ["workload.unix.uid", "=1000", " =x"] {
            let err = parse_attrs(&[bad.into()]).unwrap_err();
            assert_eq!(err.failure, Failure::Usage, "{bad}");
            assert!(err.message.contains("--attr"), "{}", err.message);
        }
        let err = parse_attrs(&["a.b=1".into(), "a.b=2".into()]).unwrap_err();
        assert!(err.message.contains("more than once"), "{}", err.message);
    }

    #[test]
    fn revocation_resource_shape() {
        let now = OffsetDateTime::from_unix_timestamp(1_714_564_800).unwrap()
            + time::Duration::milliseconds(250);
        let v = revocation_resource("01:A2:FF", "key leaked", now).unwrap();
        assert_eq!(v["kind"], "workload_identity_x509_revocation");
        assert_eq!(v["version"], "v1");
        assert_eq!(v["metadata"]["name"], "01a2ff");
        assert_eq!(v["spec"]["reason"], "key leaked");
        assert_eq!(v["spec"]["revoked_at"], "2024-05-01T12:00:00Z");
        let spec = v["spec"].as_object().unwrap();
        assert_eq!(spec.len(), 2, "{v}");
        assert_eq!(revocation_text(&v), "revoked serial 01a2ff (key leaked)");

        let err = revocation_resource("nope", "x", now).unwrap_err();
        assert_eq!(err.failure, Failure::Usage);
        for bad in ["", "  ", "two\nlines"] {
            let err = revocation_resource("1f", bad, now).unwrap_err();
            assert_eq!(err.failure, Failure::Usage, "{bad:?}");
            assert!(err.message.contains("--reason"), "{}", err.message);
        }
    }

    fn issue_args(attrs: &[&str], ttl: Option<&str>, auds: &[&str]) -> WorkloadIdentityIssueArgs {
        WorkloadIdentityIssueArgs {
            name: "payments".into(),
            out: "/tmp/x".into(),
            attrs: attrs.iter().map(|s| s.to_string()).collect(),
            ttl: ttl.map(str::to_string),
            jwt_audiences: auds.iter().map(|s| s.to_string()).collect(),
            format: FormatArg::default(),
        }
    }

    #[test]
    fn issue_request_from_flags() {
        let args = issue_args(&["workload.unix.uid=1000"], Some("1h"), &["aud1", "aud2"]);
        let req = issue_request(&args, vec![1, 2, 3]).unwrap();
        assert_eq!(req.name, "payments");
        assert_eq!(req.attributes["workload.unix.uid"], "1000");
        assert_eq!(req.x509_public_key_spki, [1, 2, 3]);
        assert_eq!(req.jwt_audiences, ["aud1", "aud2"]);
        assert_eq!((req.x509_ttl_seconds, req.jwt_ttl_seconds), (3600, 3600));

        let req = issue_request(&issue_args(&[], None, &[]), vec![1]).unwrap();
        assert_eq!((req.x509_ttl_seconds, req.jwt_ttl_seconds), (0, 0));
        assert!(req.jwt_audiences.is_empty() && req.attributes.is_empty());

        let err = issue_request(&issue_args(&["nokey"], None, &[]), vec![1]).unwrap_err();
        assert_eq!(err.failure, Failure::Usage);
        let err = issue_request(&issue_args(&[], Some("soon"), &[]), vec![1]).unwrap_err();
        assert!(err.message.contains("--ttl"), "{}", err.message);
        let err = issue_request(&issue_args(&[], None, &[""]), vec![1]).unwrap_err();
        assert!(err.message.contains("--jwt-audience"), "{}", err.message);
    }

    fn issued(crl: &[u8], jwt: bool) -> IssueWorkloadIdentitiesResponse {
        IssueWorkloadIdentitiesResponse {
            x509_svids: vec![X509Svid {
                name: "payments".into(),
                spiffe_id: "spiffe://example.test/svc/payments/1000".into(),
                hint: String::new(),
                cert_der: vec![0x30, 0x03, 1, 2, 3],
                serial_hex: "01a2ff".into(),
                expires_unix: 1_714_564_800,
            }],
            jwt_svids: if jwt {
                vec![JwtSvid {
                    name: "payments".into(),
                    spiffe_id: "spiffe://example.test/svc/payments/1000".into(),
                    hint: String::new(),
                    token: "eyJ.tok.sig".into(),
                    expires_unix: 1_714_565_100,
                }]
            } else {
                vec![]
            },
            denials: vec![],
            bundle: Some(TrustBundle {
                trust_domain: "example.test".into(),
                x509_authorities: vec![vec![0x30, 1, 9], vec![0x30, 1, 8]],
                jwt_jwks_json: "{}".into(),
                crl_der: crl.to_vec(),
                sequence: 1,
                revoked_serials: vec![],
            }),
        }
    }

    #[test]
    fn denied_issue_is_exit_3_and_lists_reasons() {
        let resp = IssueWorkloadIdentitiesResponse {
            denials: vec![WorkloadIdentityDenial {
                name: "payments".into(),
                reason: "no allow rule matched".into(),
            }],
            bundle: issued(&[], false).bundle,
            ..Default::default()
        };
        assert_eq!(denial_lines(&resp), ["payments: no allow rule matched"]);
        let err = issued_files("payments", &resp, "KEY").unwrap_err();
        assert_eq!(err.failure, Failure::Denied);
        assert_eq!(err.failure.exit_code(), 3);
        assert!(err.message.contains("\"payments\""), "{}", err.message);
    }

    #[test]
    fn issued_files_and_their_contents() {
        let resp = issued(&[0x30, 0x00], true);
        let out = issued_files("payments", &resp, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let names: Vec<&str> = out.iter().map(|f| f.name).collect();
        assert_eq!(names, [SVID_KEY, SVID_CERT, BUNDLE, CRL, JWT_SVID]);
        let by = |n: &str| out.iter().find(|f| f.name == n).unwrap();
        assert_eq!(by(SVID_KEY).mode, 0o600);
        assert_eq!(by(JWT_SVID).mode, 0o600);
        assert_eq!(by(SVID_CERT).mode, 0o644);
        let text = |n: &str| String::from_utf8(by(n).data.clone()).unwrap();
        assert_eq!(
            sigil_pki::pem_to_ders(&text(SVID_CERT), "CERTIFICATE").unwrap(),
            [vec![0x30, 0x03, 1, 2, 3]]
        );
        assert_eq!(
            sigil_pki::pem_to_ders(&text(BUNDLE), "CERTIFICATE").unwrap(),
            [vec![0x30, 1, 9], vec![0x30, 1, 8]]
        );
        assert_eq!(
            sigil_pki::pem_to_ders(&text(CRL), "X509 CRL").unwrap(),
            [vec![0x30, 0x00]]
        );
        assert_eq!(text(JWT_SVID), "eyJ.tok.sig\n");

        // No CRL when nothing is revoked, no JWT-SVID without audiences.
        let out = issued_files("payments", &issued(&[], false), "K").unwrap();
        let names: Vec<&str> = out.iter().map(|f| f.name).collect();
        assert_eq!(names, [SVID_KEY, SVID_CERT, BUNDLE]);

        // A response without a bundle is not written half-way.
        let mut no_bundle = issued(&[], false);
        no_bundle.bundle = None;
        assert_eq!(
            issued_files("p", &no_bundle, "K").unwrap_err().failure,
            Failure::Other
        );
    }

    #[test]
    fn write_files_creates_a_private_dir_and_drops_stale_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("svids");
        let full = issued_files("p", &issued(&[0x30, 0], true), "KEY").unwrap();
        let written = write_files(&dir, &full).unwrap();
        assert_eq!(written.len(), 5);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(SVID_KEY)), 0o600);
        assert_eq!(mode(&dir.join(JWT_SVID)), 0o600);
        assert_eq!(std::fs::read_to_string(dir.join(SVID_KEY)).unwrap(), "KEY");

        let small = issued_files("p", &issued(&[], false), "KEY2").unwrap();
        let written = write_files(&dir, &small).unwrap();
        assert_eq!(
            written,
            [dir.join(SVID_KEY), dir.join(SVID_CERT), dir.join(BUNDLE)]
        );
        assert!(!dir.join(CRL).exists() && !dir.join(JWT_SVID).exists());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [BUNDLE, SVID_KEY, SVID_CERT]);
    }

    #[test]
    fn issue_json_and_text() {
        let resp = issued(&[], true);
        let dir = Path::new("/out");
        let written = vec![dir.join(SVID_KEY), dir.join(SVID_CERT)];
        let v = issue_json(&resp, &written);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["expires", "files", "jwt_svids", "serial", "spiffe_id"]
        );
        assert_eq!(v["spiffe_id"], "spiffe://example.test/svc/payments/1000");
        assert_eq!(v["serial"], "01a2ff");
        assert_eq!(v["expires"], "2024-05-01T12:00:00Z");
        assert_eq!(v["files"], json!(["/out/svid.key", "/out/svid.pem"]));
        assert_eq!(
            v["jwt_svids"],
            json!([{"spiffe_id": "spiffe://example.test/svc/payments/1000",
                    "expires": "2024-05-01T12:05:00Z"}])
        );
        assert!(!v.to_string().contains("eyJ.tok.sig"), "token leaked: {v}");

        let t = issue_text(&resp, dir, &["aud1".into()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "issued spiffe://example.test/svc/payments/1000 (serial 01a2ff, expires \
             2024-05-01T12:00:00Z) into /out"
        );
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[1].contains("JWT-SVID"), "{t}");
        assert!(
            lines[1].contains("aud1") && lines[1].contains("/out/jwt_svid"),
            "{t}"
        );
        assert!(!t.contains("eyJ.tok.sig"), "{t}");
    }

    fn tested(
        allowed: bool,
        explanation: &str,
        template_error: &str,
    ) -> TestWorkloadIdentityResponse {
        TestWorkloadIdentityResponse {
            allowed,
            matched_rule: if allowed { 0 } else { -1 },
            explanation: explanation.into(),
            spiffe_id: if allowed {
                "spiffe://example.test/svc/1000".into()
            } else {
                String::new()
            },
            template_error: template_error.into(),
            dns_sans: if allowed {
                vec!["a.internal".into(), "b.internal".into()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn test_allowed() {
        let r = tested(true, "allowed by rule 0 (workload.unix.uid=\"1000\")", "");
        assert_eq!(
            test_text(&r),
            "allowed: by rule 0 (workload.unix.uid=\"1000\")\n\
             SPIFFE ID: spiffe://example.test/svc/1000\n\
             DNS SANs: a.internal, b.internal"
        );
        assert_eq!(test_outcome("p", &r), Ok(()));
        let mut r = tested(true, "allowed: the identity has no allow rules", "");
        r.dns_sans.clear();
        assert_eq!(
            test_text(&r),
            "allowed: the identity has no allow rules\nSPIFFE ID: spiffe://example.test/svc/1000"
        );
    }

    #[test]
    fn test_denied_and_template_errors_exit_3() {
        let r = tested(
            false,
            "deny rule 0 matched (workload.unix.uid eq \"0\")",
            "",
        );
        assert_eq!(
            test_text(&r),
            "denied: deny rule 0 matched (workload.unix.uid eq \"0\")"
        );
        let err = test_outcome("p", &r).unwrap_err();
        assert_eq!(err.failure.exit_code(), 3);

        let r = tested(
            false,
            "allowed by rule 1 (x=\"y\")",
            "attribute workload.unix.uid is missing",
        );
        let t = test_text(&r);
        assert!(
            t.starts_with("denied: the rules allow it (by rule 1"),
            "{t}"
        );
        assert!(
            t.ends_with("\ntemplate: attribute workload.unix.uid is missing"),
            "{t}"
        );
        assert!(!t.contains("SPIFFE ID"), "{t}");
        let err = test_outcome("p", &r).unwrap_err();
        assert_eq!(err.failure, Failure::Denied);
        assert!(err.message.contains("template"), "{}", err.message);

        let r = tested(
            false,
            "no allow rule matched: rule 0: attribute x is missing",
            "bad",
        );
        let t = test_text(&r);
        assert_eq!(
            t,
            "denied: no allow rule matched: rule 0: attribute x is missing\ntemplate: bad"
        );
    }

    #[test]
    fn test_json_shape() {
        let v = test_json(&tested(true, "allowed by rule 0 ()", ""));
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed",
                "dns_sans",
                "explanation",
                "matched_rule",
                "spiffe_id",
                "template_error"
            ]
        );
        assert_eq!(v["allowed"], true);
        assert_eq!(v["matched_rule"], 0);
        assert_eq!(v["spiffe_id"], "spiffe://example.test/svc/1000");
        assert_eq!(v["dns_sans"], json!(["a.internal", "b.internal"]));
        let v = test_json(&tested(false, "no", "oops"));
        assert_eq!(
            (v["allowed"].clone(), v["matched_rule"].clone()),
            (json!(false), json!(-1))
        );
        assert_eq!(v["template_error"], "oops");
    }
}
