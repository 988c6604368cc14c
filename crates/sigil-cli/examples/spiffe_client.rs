//! Outside SPIFFE Workload API client used by the end-to-end tests.
//!
//! It talks to a Workload API socket only through the public `spiffe` crate
//! (crates.io), so the tests exercise the agent the way a third-party
//! workload would.
//!
//! ```text
//! spiffe_client --socket /abs/path.sock x509
//! spiffe_client --socket /abs/path.sock watch N
//! spiffe_client --socket /abs/path.sock jwt AUD
//! spiffe_client --socket /abs/path.sock validate AUD TOKEN
//! spiffe_client --socket /abs/path.sock bundles
//! spiffe_client --socket /abs/path.sock pem DIR          (svid.pem, key.pem, bundle.pem)
//! spiffe_client --socket /abs/path.sock verify-x509 FILE (a peer's PEM SVID chain)
//! ```
//!
//! Exit codes: 0 ok, 3 permission denied, 4 unreachable/unavailable,
//! 1 anything else (including usage errors). Errors go to stderr with the
//! gRPC code name.

use std::error::Error as StdError;
use std::process::ExitCode;

use futures::StreamExt as _;
use serde_json::json;
use spiffe::transport::{GrpcStatusCode, GrpcStatusError, TransportConnectError, TransportError};
use spiffe::{JwtSvid, WorkloadApiClient, WorkloadApiError, X509Svid};

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

const USAGE: &str = "usage: spiffe_client --socket /abs/path.sock \
     (x509 | watch N | jwt AUD | validate AUD TOKEN | bundles | pem DIR | verify-x509 FILE)";

const EXIT_OTHER: u8 = 1;
const EXIT_PERMISSION_DENIED: u8 = 3;
const EXIT_UNAVAILABLE: u8 = 4;
const ONE_SHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

enum Command {
    X509,
    Watch(u64),
    Jwt(String),
    Validate(String, String),
    Bundles,
    Pem(String),
    VerifyX509(String),
}

fn parse_args() -> Result<(String, Command), String> {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    let mut rest = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--socket" {
            socket = Some(args.next().ok_or("--socket needs a path")?);
        } else if let Some(v) = arg.strip_prefix("--socket=") {
            socket = Some(v.to_owned());
        } else {
            rest.push(arg);
        }
    }
    let socket = socket.ok_or("missing --socket")?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let command = match rest.as_slice() {
        ["x509"] => Command::X509,
        ["watch", n] => Command::Watch(n.parse().map_err(|_| format!("bad count {n:?}"))?),
        ["jwt", aud] => Command::Jwt((*aud).to_owned()),
        ["validate", aud, token] => Command::Validate((*aud).to_owned(), (*token).to_owned()),
        ["bundles"] => Command::Bundles,
        ["pem", dir] => Command::Pem((*dir).to_owned()),
        ["verify-x509", file] => Command::VerifyX509((*file).to_owned()),
        _ => return Err("unknown or incomplete command".to_owned()),
    };
    Ok((socket, command))
}

/// Leaf serial as lowercase hex with no leading zeros (`openssl x509 -serial`
/// output, lowercased, leading `0`s trimmed); `"0"` for a zero serial.
fn leaf_serial_hex(svid: &X509Svid) -> Result<String, BoxError> {
    let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes())
        .map_err(|e| format!("cannot parse leaf certificate: {e}"))?;
    let raw = cert.tbs_certificate.raw_serial();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn sorted<I: IntoIterator<Item = String>>(it: I) -> Vec<String> {
    let mut v: Vec<String> = it.into_iter().collect();
    v.sort();
    v
}

async fn run(socket: &str, command: Command) -> Result<(), BoxError> {
    let client = WorkloadApiClient::connect_to(format!("unix:{socket}")).await?;
    match command {
        Command::X509 => {
            let ctx = client.fetch_x509_context().await?;
            let svid = ctx.default_svid().ok_or(WorkloadApiError::EmptyResponse)?;
            let tds = sorted(ctx.bundle_set().iter().map(|(td, _)| td.to_string()));
            let line = json!({
                "spiffe_id": svid.spiffe_id().to_string(),
                "serial": leaf_serial_hex(svid)?,
                "chain_len": svid.cert_chain().len(),
                "bundle_trust_domains": tds,
            });
            println!("{line}");
        }
        Command::Watch(n) => {
            let mut stream = client.stream_x509_contexts().await?;
            let mut seen = 0u64;
            while seen < n {
                let ctx = match stream.next().await {
                    Some(item) => item?,
                    None => return Err(format!("stream ended after {seen} of {n} updates").into()),
                };
                let svid = ctx.default_svid().ok_or(WorkloadApiError::EmptyResponse)?;
                let line = json!({
                    "spiffe_id": svid.spiffe_id().to_string(),
                    "serial": leaf_serial_hex(svid)?,
                });
                println!("{line}");
                seen += 1;
            }
        }
        Command::Jwt(aud) => {
            let svid = client.fetch_jwt_svid([aud.as_str()], None).await?;
            println!("{}", svid.token());
        }
        Command::Validate(aud, token) => {
            let bundles = client.fetch_jwt_bundles().await?;
            let svid = JwtSvid::parse_and_validate(&token, &bundles, &[aud.as_str()])?;
            println!("{}", json!({ "spiffe_id": svid.spiffe_id().to_string() }));
        }
        Command::Bundles => {
            let x509 = client.fetch_x509_bundles().await?;
            let jwt = client.fetch_jwt_bundles().await?;
            let line = json!({
                "x509": sorted(x509.iter().map(|(td, _)| td.to_string())),
                "jwt": sorted(jwt.iter().map(|(td, _)| td.to_string())),
            });
            println!("{line}");
        }
        Command::Pem(dir) => {
            // The SVID, its key and every bundle of the X.509 context (own and
            // federated), as PEM files an outside TLS program can use.
            let ctx = client.fetch_x509_context().await?;
            let svid = ctx.default_svid().ok_or(WorkloadApiError::EmptyResponse)?;
            let dir = std::path::Path::new(&dir);
            let chain: String = svid
                .cert_chain()
                .iter()
                .map(|c| pem_block("CERTIFICATE", c.as_bytes()))
                .collect();
            std::fs::write(dir.join("svid.pem"), chain)?;
            std::fs::write(
                dir.join("key.pem"),
                pem_block("PRIVATE KEY", svid.private_key().as_bytes()),
            )?;
            let mut bundle = String::new();
            for (_, b) in ctx.bundle_set().iter() {
                for a in b.authorities() {
                    bundle.push_str(&pem_block("CERTIFICATE", a.as_bytes()));
                }
            }
            std::fs::write(dir.join("bundle.pem"), bundle)?;
            let tds = sorted(ctx.bundle_set().iter().map(|(td, _)| td.to_string()));
            println!(
                "{}",
                json!({"spiffe_id": svid.spiffe_id().to_string(), "bundle_trust_domains": tds})
            );
        }
        Command::VerifyX509(file) => {
            // Verify a peer's X.509-SVID with nothing but this Workload API's
            // bundle for the peer's trust domain (rustls/webpki path building).
            let pem_text = std::fs::read(&file)?;
            let certs: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&pem_text)
                .map(|p| p.map(|p| p.contents))
                .collect::<Result<_, _>>()?;
            let leaf = certs.first().ok_or("no certificate in the file")?;
            let (_, cert) = x509_parser::parse_x509_certificate(leaf)?;
            let id = cert
                .subject_alternative_name()?
                .and_then(|san| {
                    san.value.general_names.iter().find_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                })
                .ok_or("the certificate has no URI SAN")?;
            let spiffe_id = spiffe::SpiffeId::new(&id)?;
            let bundles = client.fetch_x509_bundles().await?;
            let bundle = bundles.get(spiffe_id.trust_domain()).ok_or_else(|| {
                format!("no bundle for trust domain {}", spiffe_id.trust_domain())
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for a in bundle.authorities() {
                roots.add(rustls::pki_types::CertificateDer::from(
                    a.as_bytes().to_vec(),
                ))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            )
            .build()?;
            let intermediates: Vec<rustls::pki_types::CertificateDer<'static>> = certs[1..]
                .iter()
                .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
                .collect();
            verifier.verify_client_cert(
                &rustls::pki_types::CertificateDer::from(leaf.clone()),
                &intermediates,
                rustls::pki_types::UnixTime::now(),
            )?;
            println!("{}", json!({"verified": spiffe_id.to_string()}));
        }
    }
    Ok(())
}

fn pem_block(tag: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

fn code_of(code: GrpcStatusCode) -> (u8, &'static str) {
    let exit = match code {
        GrpcStatusCode::PermissionDenied => EXIT_PERMISSION_DENIED,
        GrpcStatusCode::Unavailable => EXIT_UNAVAILABLE,
        _ => EXIT_OTHER,
    };
    (exit, code.as_str())
}

/// Walks the error chain for a gRPC status; returns (exit code, gRPC code name).
fn classify(err: &(dyn StdError + 'static)) -> (u8, &'static str) {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(w) = e.downcast_ref::<WorkloadApiError>() {
            match w {
                WorkloadApiError::PermissionDenied(_) | WorkloadApiError::NoIdentityIssued => {
                    return (EXIT_PERMISSION_DENIED, "permission_denied");
                }
                WorkloadApiError::Transport(TransportError::Status(s)) => return code_of(s.code()),
                WorkloadApiError::Transport(TransportError::Connect(_)) => {
                    return (EXIT_UNAVAILABLE, "unavailable");
                }
                _ => {}
            }
        }
        if let Some(s) = e.downcast_ref::<GrpcStatusError>() {
            return code_of(s.code());
        }
        if let Some(s) = e.downcast_ref::<tonic::Status>() {
            return match s.code() {
                tonic::Code::PermissionDenied => (EXIT_PERMISSION_DENIED, "permission_denied"),
                tonic::Code::Unavailable => (EXIT_UNAVAILABLE, "unavailable"),
                _ => (EXIT_OTHER, "unknown"),
            };
        }
        if e.downcast_ref::<TransportConnectError>().is_some() {
            return (EXIT_UNAVAILABLE, "unavailable");
        }
        cur = e.source();
    }
    // Not a gRPC failure (bad token, unparsable material, ...).
    (EXIT_OTHER, "none")
}

/// `permission_denied` -> `PERMISSION_DENIED` (the canonical gRPC name).
fn upper(name: &str) -> String {
    name.to_ascii_uppercase()
}

fn main() -> ExitCode {
    let (socket, command) = match parse_args() {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("spiffe_client: {msg}\n{USAGE}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spiffe_client: runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let one_shot = !matches!(command, Command::Watch(_));
    let result = rt.block_on(async {
        if one_shot {
            // Never hang a test on a stuck server; `watch` waits as long as it is told to.
            tokio::time::timeout(ONE_SHOT_TIMEOUT, run(&socket, command))
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::status(
                        GrpcStatusCode::DeadlineExceeded,
                        format!("no answer within {ONE_SHOT_TIMEOUT:?}"),
                    )
                    .into())
                })
        } else {
            run(&socket, command).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (exit, code) = classify(err.as_ref());
            let mut chain = err.to_string();
            let mut src = err.source();
            while let Some(s) = src {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!(
                "spiffe_client: error: code={} ({code}): {chain}",
                upper(code)
            );
            ExitCode::from(exit)
        }
    }
}
