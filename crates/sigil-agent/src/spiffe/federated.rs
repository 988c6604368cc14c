//! Federated (foreign) trust domains' bundles in the agent: what the auth
//! service's state stream carries (`TrustBundle.federated`), in the encodings
//! the Workload API and SDS serve.

use std::collections::BTreeMap;

use sigil_proto::v1::TrustBundle;

/// One federated trust domain's bundle, in the Workload API's encodings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FederatedView {
    /// DER CA certificates.
    pub authorities: Vec<Vec<u8>>,
    /// The same, concatenated (the Workload API's encoding).
    pub bundle_der: Vec<u8>,
    pub jwks: serde_json::Value,
    pub jwks_bytes: Vec<u8>,
}

/// The federated bundles a [`TrustBundle`] carries.
pub(crate) fn federated_views(b: &TrustBundle) -> BTreeMap<String, FederatedView> {
    b.federated
        .iter()
        .map(|(td, f)| {
            (
                td.clone(),
                FederatedView {
                    authorities: f.x509_authorities.clone(),
                    bundle_der: f.x509_authorities.concat(),
                    jwks: serde_json::from_str(&f.jwt_jwks_json).unwrap_or_default(),
                    jwks_bytes: f.jwt_jwks_json.as_bytes().to_vec(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sigil_proto::v1::FederatedBundle;
    use time::OffsetDateTime;
    use tokio::sync::watch;
    use zeroize::Zeroizing;

    use super::super::api::{claimed_trust_domain, jwt_bundles, x509_bundles, x509_response};
    use super::super::runtime::{Issued, Runtime, X509Item};
    use super::*;

    fn bundle(sequence: u64, federated: &[(&str, &[u8])]) -> TrustBundle {
        TrustBundle {
            trust_domain: "a.test".into(),
            x509_authorities: vec![b"own-ca".to_vec()],
            jwt_jwks_json: r#"{"keys":[{"kid":"a"}]}"#.into(),
            sequence,
            federated: federated
                .iter()
                .map(|(td, ca)| {
                    (
                        td.to_string(),
                        FederatedBundle {
                            x509_authorities: vec![ca.to_vec()],
                            jwt_jwks_json: format!(r#"{{"keys":[{{"kid":"{td}"}}]}}"#),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    fn issued(federates_with: &[&str]) -> Issued {
        let now = OffsetDateTime::now_utc();
        Issued {
            x509: vec![X509Item {
                name: "app".into(),
                spiffe_id: "spiffe://a.test/app".into(),
                hint: String::new(),
                cert_der: b"leaf".to_vec(),
                chain_der: vec![],
                serial_hex: "01".into(),
                key_pkcs8_der: Arc::new(Zeroizing::new(b"key".to_vec())),
                expires: now + time::Duration::hours(1),
                federates_with: federates_with.iter().map(|s| s.to_string()).collect(),
            }],
            jwt: vec![],
            refresh_at: now + time::Duration::minutes(30),
            expires: now + time::Duration::hours(1),
            policy_revision: 0,
        }
    }

    #[tokio::test]
    async fn federated_bundles_follow_the_state_stream_only() {
        let rt = Runtime::new("a.test".into(), watch::channel(None).1);
        rt.apply_bundle(&bundle(1, &[("b.test", b"b-ca")]), true);
        assert_eq!(rt.trust().federated["b.test"].bundle_der, b"b-ca");
        // An issuance's answer computed before a federation was removed, arriving
        // after: it must not bring the bundle back (nor drop one).
        rt.apply_bundle(&bundle(1, &[]), true);
        assert!(rt.trust().federated.is_empty());
        rt.apply_bundle(&bundle(2, &[("b.test", b"b-ca")]), false);
        assert!(rt.trust().federated.is_empty());
        assert_eq!(rt.trust().sequence, 2, "the own bundle is still taken");
        // The stream's message is taken whatever its sequence.
        rt.apply_bundle(&bundle(1, &[("c.test", b"c-ca")]), true);
        assert_eq!(
            rt.trust().federated.keys().collect::<Vec<_>>(),
            vec!["c.test"]
        );
    }

    #[tokio::test]
    async fn workload_api_serves_federated_bundles() {
        let rt = Runtime::new("a.test".into(), watch::channel(None).1);
        rt.apply_bundle(
            &bundle(1, &[("b.test", b"b-ca"), ("c.test", b"c-ca")]),
            true,
        );
        let view = rt.trust();
        let x = x509_bundles(&view).unwrap();
        assert_eq!(x.bundles.len(), 3);
        assert_eq!(x.bundles["spiffe://b.test"], b"b-ca");
        let j = jwt_bundles(&view).unwrap();
        assert_eq!(j.bundles.len(), 3);
        assert!(String::from_utf8_lossy(&j.bundles["spiffe://c.test"]).contains("c.test"));
        // FetchX509SVID: only the domains the identity federates with (and
        // that are federated now).
        let r = x509_response(&issued(&["b.test", "gone.test"]), &view).unwrap();
        assert_eq!(
            r.federated_bundles.keys().collect::<Vec<_>>(),
            vec!["spiffe://b.test"]
        );
        let r = x509_response(&issued(&[]), &view).unwrap();
        assert!(r.federated_bundles.is_empty());
        // SDS: a federated domain by its ID, and ALL.
        let names = vec!["spiffe://b.test".to_string(), "ALL".to_string()];
        let secrets = super::super::sds::secrets(&names, &issued(&[]), &view).unwrap();
        assert_eq!(secrets.len(), 2);
    }

    #[test]
    fn claimed_trust_domain_reads_the_unverified_subject() {
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let tok = |sub: &str| {
            format!(
                "{}.{}.sig",
                enc("{}"),
                enc(&format!(r#"{{"sub":"{sub}"}}"#))
            )
        };
        assert_eq!(
            claimed_trust_domain(&tok("spiffe://b.test/app")).as_deref(),
            Some("b.test")
        );
        assert_eq!(claimed_trust_domain(&tok("not-a-spiffe-id")), None);
        assert_eq!(claimed_trust_domain("garbage"), None);
    }
}
