//! Kubernetes client certificates: what kube-apiserver's x509 authenticator
//! (`--client-ca-file`) reads. The subject's CommonName is the user name and
//! each Organization attribute a group; the EKU is clientAuth. The cluster
//! name is *not* put in an Organization here (as in Sigil's other leaves):
//! the API server would make it a group. A URI SAN names the bot instance
//! for whoever inspects the certificate (kube-apiserver ignores it).

use std::time::Duration;

use crate::der;
use crate::keys::CaPurpose;
use crate::x509_ca::{IssuedCert, OID_CN, OID_KP_CLIENT_AUTH, OID_ORG, X509Ca, check_uri_safe};
use crate::{PkiError, Result};

/// At most this many groups in one certificate.
pub const MAX_KUBERNETES_GROUPS: usize = 64;
/// Longest user or group name (bytes).
const MAX_NAME: usize = 255;

/// Checks a Kubernetes user or group name for a certificate subject:
/// 1..=255 bytes, no control characters (the API server takes any string,
/// but a name that prints differently from what it is has no place here).
pub fn check_kubernetes_name(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME {
        "must be at most 255 bytes"
    } else if value.chars().any(|c| c.is_control()) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName {
        field,
        value: value.escape_default().to_string(),
        reason,
    })
}

impl X509Ca {
    /// Issue a Kubernetes client certificate from the `kubernetes` CA:
    /// subject `O=<group>…, CN=<user>`, EKU clientAuth, URI SAN
    /// `sigil://<cluster>/bot/<bot>/<instance_id>`.
    pub fn issue_kubernetes_client(
        &self,
        subject_spki_der: &[u8],
        user: &str,
        groups: &[String],
        bot: &str,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        if self.purpose != CaPurpose::Kubernetes {
            return Err(PkiError::WrongPurpose {
                purpose: self.purpose,
                expected: "the kubernetes CA",
            });
        }
        check_kubernetes_name("kubernetes user", user)?;
        if groups.len() > MAX_KUBERNETES_GROUPS {
            return Err(PkiError::InvalidName {
                field: "kubernetes groups",
                value: groups.len().to_string(),
                reason: "at most 64 groups in one certificate",
            });
        }
        for g in groups {
            check_kubernetes_name("kubernetes group", g)?;
        }
        check_uri_safe("bot name", bot)?;
        check_uri_safe("instance id", instance_id)?;
        let mut subject: Vec<(&[u8], &str)> =
            groups.iter().map(|g| (OID_ORG, g.as_str())).collect();
        subject.push((OID_CN, user));
        let uri = format!("sigil://{}/bot/{bot}/{instance_id}", self.cluster);
        let mut sans = Vec::new();
        der::tlv(&mut sans, 0x86, uri.as_bytes());
        self.issue_leaf_with_subject(
            subject_spki_der,
            &subject,
            &sans,
            &[OID_KP_CLIENT_AUTH],
            None,
            ttl,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SoftwareKeyManager, TlsKeyPair};
    use x509_parser::prelude::*;

    #[test]
    fn subject_is_user_and_groups_only() {
        let km = SoftwareKeyManager;
        let (ca, _) = X509Ca::generate(&km, CaPurpose::Kubernetes, "example.test").unwrap();
        let key = TlsKeyPair::generate().unwrap();
        let groups = vec!["deployers".to_string(), "system:viewers".to_string()];
        let cert = ca
            .issue_kubernetes_client(
                &key.spki_der(),
                "ci",
                &groups,
                "builder",
                "i-1",
                Duration::from_secs(600),
            )
            .unwrap();
        let (_, c) = X509Certificate::from_der(&cert.der).unwrap();
        let cn: Vec<&str> = c
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        let o: Vec<&str> = c
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["ci"]);
        assert_eq!(o, ["deployers", "system:viewers"]);
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn refuses_bad_names_and_other_cas() {
        let km = SoftwareKeyManager;
        let (ca, _) = X509Ca::generate(&km, CaPurpose::Kubernetes, "example.test").unwrap();
        let key = TlsKeyPair::generate().unwrap();
        let ttl = Duration::from_secs(600);
        for (user, groups) in [
            ("", vec![]),
            ("ci\n", vec![]),
            ("ci", vec!["a\u{7}".to_string()]),
            ("ci", vec!["g".to_string(); 65]),
        ] {
            assert!(
                ca.issue_kubernetes_client(&key.spki_der(), user, &groups, "b", "i", ttl)
                    .is_err(),
                "{user:?} {groups:?}"
            );
        }
        let (client, _) = X509Ca::generate(&km, CaPurpose::Client, "example.test").unwrap();
        assert!(
            client
                .issue_kubernetes_client(&key.spki_der(), "ci", &[], "b", "i", ttl)
                .is_err()
        );
    }
}
