//! `sigil ca export`: the public half of one CA, in the form its consumers
//! read — an OpenSSH key line for the SSH CAs (`TrustedUserCAKeys`,
//! `@cert-authority`), the PEM certificate for the X.509 CAs, the JWKS for
//! the JWT-SVID keys. Nothing secret leaves: only public keys.

use sigil_pki::{CaPurpose, StoredCa};
use sigil_proto::v1::ExportCaResponse;
use tonic::Status;

use crate::state::AuthState;

/// The CA purposes, comma-separated, for error messages.
/// A CA's fingerprint (the SPKI pin of an X.509 CA; SHA-256 over the key line
/// of an SSH CA) and, for an X.509 CA, when its certificate expires (SSH CAs
/// do not expire).
pub fn fingerprint_and_expiry(c: &StoredCa) -> (String, Option<time::OffsetDateTime>) {
    let der = c
        .cert_pem
        .as_deref()
        .and_then(|pem| sigil_pki::pem_to_ders(pem, "CERTIFICATE").ok())
        .and_then(|d| d.into_iter().next());
    match (der, &c.ssh_public_key) {
        (Some(d), _) => (
            sigil_pki::spki_pin_of_cert(&d).unwrap_or_default(),
            sigil_pki::cert_info(&d).ok().map(|i| i.not_after),
        ),
        (None, Some(ssh)) => (
            format!("sha256:{}", sigil_pki::sha256_hex(ssh.as_bytes())),
            None,
        ),
        _ => (String::new(), None),
    }
}

pub fn purpose_names() -> String {
    CaPurpose::ALL
        .iter()
        .map(CaPurpose::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The public key material of the `purpose` CA.
pub fn export(state: &AuthState, purpose: &str) -> Result<ExportCaResponse, Status> {
    let p = parse_purpose(purpose)?;
    let cas = state.cas();
    let ca = cas
        .stored
        .iter()
        .find(|c| c.purpose == p)
        .ok_or_else(|| missing(p))?;
    let mut resp = response(p, ca, || state.trust.current().jwks_json.clone())?;
    // During a rotation relying parties must trust both CAs: the new one's key
    // line or certificate comes first, then the established one's.
    if let Some(r) = cas.rotation(p) {
        let new = response(p, &r.new, String::new)?;
        resp.ssh_public_key = join_lines(&new.ssh_public_key, &resp.ssh_public_key);
        resp.cert_pem = join_lines(&new.cert_pem, &resp.cert_pem);
    }
    Ok(resp)
}

/// Both values, each on its own line(s); empty stays empty.
fn join_lines(first: &str, second: &str) -> String {
    if first.is_empty() || second.is_empty() {
        return format!("{first}{second}");
    }
    format!("{}\n{}", first.trim_end(), second)
}

pub fn parse_purpose(purpose: &str) -> Result<CaPurpose, Status> {
    CaPurpose::ALL
        .into_iter()
        .find(|p| p.as_str() == purpose)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "type {purpose:?} is not a CA; use one of {}",
                purpose_names()
            ))
        })
}

/// Picks the field the CA's consumers read; `jwks` is asked only for `jwt`.
fn response(
    p: CaPurpose,
    ca: &StoredCa,
    jwks: impl FnOnce() -> String,
) -> Result<ExportCaResponse, Status> {
    let mut resp = ExportCaResponse {
        purpose: p.as_str().to_string(),
        ..Default::default()
    };
    match p {
        CaPurpose::SshUser | CaPurpose::SshHost => {
            resp.ssh_public_key = ca.ssh_public_key.clone().ok_or_else(|| missing(p))?;
        }
        // Relying parties verify JWT-SVIDs with a JWKS, not a certificate
        // (the jwt CA's certificate is never used).
        CaPurpose::Jwt => resp.jwks_json = jwks(),
        _ => resp.cert_pem = ca.cert_pem.clone().ok_or_else(|| missing(p))?,
    }
    Ok(resp)
}

fn missing(p: CaPurpose) -> Status {
    Status::internal(format!(
        "the {} CA has no public key in the store",
        p.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_pki::{SoftwareKeyManager, SshCa, X509Ca};

    #[test]
    fn each_kind_of_ca_exports_what_its_consumers_read() {
        let km = SoftwareKeyManager;
        let (_, ssh) = SshCa::generate(&km, CaPurpose::SshUser, "example.test").unwrap();
        let r = response(CaPurpose::SshUser, &ssh, || unreachable!()).unwrap();
        assert!(r.ssh_public_key.starts_with("ssh-ed25519 AAAA"), "{r:?}");
        assert!(r.cert_pem.is_empty() && r.jwks_json.is_empty());

        let (_, host) = X509Ca::generate(&km, CaPurpose::Host, "example.test").unwrap();
        let r = response(CaPurpose::Host, &host, || unreachable!()).unwrap();
        assert!(
            r.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{r:?}"
        );
        assert!(r.ssh_public_key.is_empty() && r.jwks_json.is_empty());

        let (_, jwt) = X509Ca::generate(&km, CaPurpose::Jwt, "example.test").unwrap();
        let r = response(CaPurpose::Jwt, &jwt, || "{\"keys\":[]}".into()).unwrap();
        assert_eq!(r.jwks_json, "{\"keys\":[]}");
        assert!(r.cert_pem.is_empty());
    }

    #[test]
    fn an_unknown_type_lists_the_valid_ones() {
        assert_eq!(parse_purpose("ssh-host").unwrap(), CaPurpose::SshHost);
        let e = parse_purpose("ssh").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"ssh\""), "{e:?}");
        assert!(
            e.message().contains("ssh-user") && e.message().contains("db-client"),
            "{e:?}"
        );
    }
}
