//! `kubernetes_cluster`: a Kubernetes API server Sigil issues client
//! certificates for. The `kubernetes` output writes a kubeconfig from it:
//! `spec.server` is the API server's URL and `spec.ca_file_pem` the CA that
//! signed its serving certificate (what kubectl verifies it with). Roles
//! select clusters by their labels (`kubernetes_labels`).
//!
//! ```yaml
//! kind: kubernetes_cluster
//! version: v1
//! metadata: {name: prod, labels: {env: prod}}
//! spec: {server: "https://10.0.0.1:6443", ca_file_pem: "-----BEGIN CERTIFICATE-----…"}
//! ```

use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use serde::{Deserialize, Serialize};

/// Largest `spec.ca_file_pem` (bytes).
pub const MAX_CA_PEM_BYTES: usize = 64 * 1024;
/// Longest `spec.server` (bytes).
pub const MAX_SERVER_LEN: usize = 2048;

/// Body of a `kubernetes_cluster`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesClusterSpec {
    /// The API server, `https://HOST[:PORT][/PATH]`.
    pub server: String,
    /// PEM certificate(s) of the CA(s) that sign the API server's serving
    /// certificate (kubeconfig `certificate-authority-data`).
    pub ca_file_pem: String,
}

/// A Kubernetes cluster.
pub type KubernetesCluster = Resource<KubernetesClusterSpec>;

impl Kind for KubernetesClusterSpec {
    const KIND: &'static str = "kubernetes_cluster";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_server(&res.spec.server).map_err(|m| ValidationError::new("spec.server", m))?;
        validate_ca_pem(&res.spec.ca_file_pem)
            .map_err(|m| ValidationError::new("spec.ca_file_pem", m))?;
        Ok(())
    }
}

/// Checks an API server URL: `https://`, a host (DNS name, IPv4 or `[IPv6]`),
/// an optional port 1..=65535 and path; no user info, query or fragment
/// (kubectl would send a password in the URL, or drop the rest).
pub fn validate_server(url: &str) -> Result<(), String> {
    let shown = crate::text::escape_unsafe(url);
    if url.len() > MAX_SERVER_LEN {
        return Err(format!("longer than {MAX_SERVER_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("\"{shown}\" contains spaces or control characters"));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "\"{shown}\" is not an https URL: give the API server as https://HOST[:PORT], e.g. https://10.0.0.1:6443"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "\"{shown}\" has user info (USER@): credentials do not belong in the server URL"
        ));
    }
    if url.contains('?') || url.contains('#') {
        return Err(format!(
            "\"{shown}\" has a query or fragment: give only https://HOST[:PORT][/PATH]"
        ));
    }
    let (host, port) = split_host_port(authority).map_err(|m| format!("\"{shown}\": {m}"))?;
    if host.is_empty() {
        return Err(format!("\"{shown}\" has no host"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!("\"{shown}\": port {p:?} is not a number 1-65535"));
    }
    if path.contains("..") {
        return Err(format!("\"{shown}\": the path may not contain \"..\""));
    }
    Ok(())
}

/// `host[:port]` or `[v6][:port]`, host checked.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address must be closed with ]")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        return match after {
            "" => Ok((addr, None)),
            p => Ok((
                addr,
                Some(p.strip_prefix(':').ok_or("expected :PORT after ]")?),
            )),
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let dns_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !host.is_empty() && (host.len() > 253 || !dns_ok) {
        return Err(format!(
            "{host:?} is not a host name or IPv4 address (IPv6 goes in brackets: https://[::1]:6443)"
        ));
    }
    Ok((host, port))
}

/// Checks that `pem` holds one or more PEM `CERTIFICATE` blocks, each a
/// certificate that parses, and nothing else. Returns how many.
pub fn validate_ca_pem(pem_text: &str) -> Result<usize, String> {
    if pem_text.trim().is_empty() {
        return Err("empty: give the PEM certificate of the CA that signs the API server's certificate (e.g. /etc/kubernetes/pki/ca.crt)".into());
    }
    if pem_text.len() > MAX_CA_PEM_BYTES {
        return Err(format!("larger than {MAX_CA_PEM_BYTES} bytes"));
    }
    let blocks = pem::parse_many(pem_text).map_err(|e| {
        format!("not PEM ({e}): give the CA certificate as -----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----")
    })?;
    if blocks.is_empty() {
        return Err("no PEM certificate found: give the CA certificate as -----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----".into());
    }
    // Text outside the blocks (other than blank lines) is refused: a pasted
    // private key or a truncated block must not pass silently.
    let outside = pem_text.lines().filter(|l| !l.trim().is_empty()).count();
    let inside: usize = pem_text
        .split("-----BEGIN ")
        .skip(1)
        .map(|b| {
            b.split_once("-----END ")
                .map_or(usize::MAX / 2, |(body, _)| body.lines().count() + 1)
        })
        // Saturating: unterminated blocks must not overflow (found by fuzzing;
        // fuzz/regressions/resources).
        .fold(0, usize::saturating_add);
    if outside > inside {
        return Err("has text outside the PEM blocks: give only CERTIFICATE blocks".into());
    }
    for (i, b) in blocks.iter().enumerate() {
        if b.tag() != "CERTIFICATE" {
            return Err(format!(
                "block {} is a {:?}, not a CERTIFICATE: give only the CA's certificate (never a key)",
                i + 1,
                b.tag()
            ));
        }
        let (rest, _) = x509_parser::parse_x509_certificate(b.contents())
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
        if !rest.is_empty() {
            return Err(format!(
                "certificate {} has trailing bytes after its DER",
                i + 1
            ));
        }
    }
    Ok(blocks.len())
}

/// Checks a Kubernetes user or group named in a role: 1..=255 bytes, no
/// control or invisible characters. In `allow`, exact names (they go into
/// certificates); in `deny`, globs too (`system:*`).
pub fn validate_subject_name(value: &str, glob_ok: bool) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    crate::text::check_free_text(value, 255, false)?;
    if !glob_ok && value.contains(['*', '?']) {
        return Err(format!(
            "{:?}: allow lists exact names (they go into certificates); globs only in deny",
            value
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Metadata;

    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBgzCCASmgAwIBAgIULi6qXAuq1xkKX70FwGtcHoYiYsQwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMdGVzdCBrdWJlIENBMB4XDTI2MTIwMzA2NDQzNFoXDTM2MTEz
MDA2NDQzNFowFzEVMBMGA1UEAwwMdGVzdCBrdWJlIENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEeP5fpMPZVKqAF7x1RzBuxYy+3T/WUAq4jPeiFHHi0NeRonr2
m+idhjUIn0yKJG3oH7F0yi+0OVdWv48hdyiYEaNTMFEwHQYDVR0OBBYEFDTjlHRD
oqOSL7U5wu7aL0lfyDlHMB8GA1UdIwQYMBaAFDTjlHRDoqOSL7U5wu7aL0lfyDlH
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAOjpnrUbqlLTLL9f
7VgBYT550OakJZypecMQGrWO4DIxAiAgzRYRsq5p9SDO6FMpC/UJkdnQdP//vI9X
sH4x4Z2mww==
-----END CERTIFICATE-----
";

    fn cluster(server: &str, ca: &str) -> KubernetesCluster {
        Resource::new(
            Metadata::named("prod"),
            KubernetesClusterSpec {
                server: server.into(),
                ca_file_pem: ca.into(),
            },
        )
    }

    #[test]
    fn servers() {
        for ok in [
            "https://10.0.0.1:6443",
            "https://kube.example.test",
            "https://kube.example.test:443/k8s/clusters/c-1",
            "https://[::1]:6443",
            "https://localhost:6443/",
        ] {
            validate_server(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("http://10.0.0.1:6443", "not an https URL"),
            ("10.0.0.1:6443", "not an https URL"),
            ("https://", "no host"),
            ("https://:6443", "no host"),
            ("https://admin:pw@10.0.0.1", "user info"),
            ("https://10.0.0.1:6443?x=1", "query"),
            ("https://10.0.0.1:6443/#f", "fragment"),
            ("https://10.0.0.1:0", "port"),
            ("https://10.0.0.1:99999", "port"),
            ("https://10.0.0.1:x", "port"),
            ("https://kube example", "spaces"),
            ("https://kube_1.example", "not a host name"),
            ("https://[::1", "closed"),
            ("https://[zz]:1", "IPv6"),
        ] {
            let e = validate_server(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn ca_pem_must_be_certificates() {
        assert_eq!(validate_ca_pem(CA), Ok(1));
        assert_eq!(validate_ca_pem(&format!("{CA}\n{CA}")), Ok(2));
        let with_key =
            format!("{CA}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(
            validate_ca_pem(&with_key)
                .unwrap_err()
                .contains("not a CERTIFICATE")
        );
        assert!(
            validate_ca_pem(&format!("junk\n{CA}"))
                .unwrap_err()
                .contains("outside")
        );
        for (bad, says) in [
            ("", "empty"),
            ("not pem at all", "no PEM certificate"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not a CERTIFICATE",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "does not parse",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                "not PEM",
            ),
        ] {
            let e = validate_ca_pem(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn resource_errors_name_the_field() {
        let e = cluster("http://x", CA).validate().unwrap_err();
        assert_eq!(e.field, "spec.server");
        let e = cluster("https://x", "nope").validate().unwrap_err();
        assert_eq!(e.field, "spec.ca_file_pem");
    }

    #[test]
    fn subject_names() {
        validate_subject_name("system:deployers", false).unwrap();
        validate_subject_name("system:*", true).unwrap();
        assert!(validate_subject_name("system:*", false).is_err());
        assert!(validate_subject_name("", true).is_err());
        assert!(validate_subject_name("a\u{202E}b", true).is_err());
        assert!(validate_subject_name("a\nb", true).is_err());
    }
}
