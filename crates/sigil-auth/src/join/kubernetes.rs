//! `kubernetes`: a pod proves its service account with a projected
//! service-account token (`aud` = the section's `audience`, default the
//! cluster name). Keys are the cluster's JWKS pasted into the token
//! (`static_jwks`; `iss` must then equal `issuer` if that is set) or come
//! from discovery at `issuer` (a cluster with a public OIDC issuer).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sigil_proto::v1::JoinInit;
use sigil_types::token::{KubernetesJoin, kubernetes_attributes};
use sigil_types::{JoinAttributes, JoinMethodKind};

use super::jwt_verifier::{JwksCache, allow, id_token, in_context, verify_static};
use super::{Conversation, JoinDenied, JoinMethod, Verified, load_token};
use crate::state::AuthState;

/// What the audit log names as the issuer of a pasted JWKS without one.
const STATIC_JWKS: &str = "static_jwks";

pub struct KubernetesMethod {
    keys: Arc<JwksCache>,
}

impl KubernetesMethod {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        KubernetesMethod { keys }
    }
}

/// Service-account attributes of verified claims; anything else (a user's
/// OIDC token from the same issuer, say) is refused.
fn service_account(claims: &Value) -> Result<JoinAttributes, JoinDenied> {
    kubernetes_attributes(claims).ok_or_else(|| {
        JoinDenied::new(
            "not a service account token (sub is not system:serviceaccount:NAMESPACE:NAME)",
        )
    })
}

/// Verify against the pasted JWKS; no network.
fn verify_pasted(
    section: &KubernetesJoin,
    jwks: &str,
    jwt: &str,
    audience: &str,
) -> Result<JoinAttributes, JoinDenied> {
    let claims = verify_static(jwt, jwks, section.issuer.as_deref(), audience)?;
    service_account(&claims)
}

#[async_trait]
impl JoinMethod for KubernetesMethod {
    fn name(&self) -> &'static str {
        JoinMethodKind::Kubernetes.as_str()
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        _conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::Kubernetes).await?;
        let section = token
            .spec
            .kubernetes
            .as_ref()
            .ok_or_else(|| JoinDenied::new("token has no kubernetes section"))?;
        let audience = section.audience.as_deref().unwrap_or(&state.cluster);
        let issuer = section.issuer.as_deref().unwrap_or(STATIC_JWKS).to_string();
        let attrs = async {
            let jwt = id_token(&init.evidence)?;
            match (&section.static_jwks, &section.issuer) {
                (Some(jwks), _) => verify_pasted(section, jwks, jwt, audience),
                (None, Some(iss)) => {
                    let claims = self
                        .keys
                        .verify(&state.outbound, iss, jwt, audience)
                        .await?;
                    service_account(&claims)
                }
                (None, None) => Err(JoinDenied::new(
                    "kubernetes section has neither static_jwks nor issuer",
                )),
            }
        }
        .await
        .map_err(|d| in_context(d, &token, &issuer))?;
        allow(&token, attrs, &issuer)
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use sigil_types::Token;

    use super::*;

    const ISS: &str = "https://kubernetes.default.svc";

    /// A P-256 key: its PKCS#8 and its JWKS text.
    fn key() -> (Vec<u8>, String) {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let p = pair.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "sa-1", "use": "sig",
            "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])}]});
        (pkcs8.as_ref().to_vec(), jwks.to_string())
    }

    fn sa_token(pkcs8: &[u8], sub: &str, aud: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "iss": ISS, "aud": [aud], "sub": sub, "exp": now + 600, "iat": now, "nbf": now,
            "kubernetes.io": {"namespace": "ci", "pod": {"name": "runner-0", "uid": "p-u"},
                              "serviceaccount": {"name": "deployer", "uid": "sa-u"}}
        });
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("sa-1".into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(pkcs8)).unwrap()
    }

    fn token(jwks: &str, issuer: Option<&str>) -> Token {
        serde_json::from_value(json!({
            "kind": "token", "version": "v1", "metadata": {"name": "k8s-ci"},
            "spec": {"bot_name": "ci", "join_method": "kubernetes",
                     "kubernetes": {"static_jwks": jwks, "issuer": issuer,
                                    "allow": [{"service_account": "ci:deploy*"}]}}
        }))
        .unwrap()
    }

    #[test]
    fn pasted_jwks_service_account_joins_and_rules_apply() {
        let (pkcs8, jwks) = key();
        let t = token(&jwks, Some(ISS));
        let section = t.spec.kubernetes.as_ref().unwrap();
        let jwt = sa_token(&pkcs8, "system:serviceaccount:ci:deployer", "example.test");
        let attrs = verify_pasted(section, &jwks, &jwt, "example.test").unwrap();
        assert_eq!(attrs["service_account"], "ci:deployer");
        assert_eq!(attrs["pod.name"], "runner-0");
        let v = allow(&t, attrs, ISS).unwrap();
        assert_eq!(v.bot_name, "ci");
        assert!(!v.renewable && v.consume.is_empty());
        assert_eq!(v.audit["issuer"], ISS);
        assert_eq!(v.audit["matched_rule"], 0);

        // Another service account: verified, but no rule matches.
        let jwt = sa_token(&pkcs8, "system:serviceaccount:ci:builder", "example.test");
        let attrs = verify_pasted(section, &jwks, &jwt, "example.test").unwrap();
        let d = allow(&t, attrs, ISS).err().unwrap();
        assert!(d.reason.contains("no allow rule"), "{}", d.reason);
        assert_eq!(d.audit["issuer"], ISS);
        assert_eq!(d.audit["claims"]["service_account"], "ci:builder");
    }

    #[test]
    fn pasted_jwks_refusals() {
        let (pkcs8, jwks) = key();
        let t = token(&jwks, Some(ISS));
        let section = t.spec.kubernetes.as_ref().unwrap();
        // Not a service account.
        let jwt = sa_token(&pkcs8, "alice", "example.test");
        let d = verify_pasted(section, &jwks, &jwt, "example.test").unwrap_err();
        assert!(d.reason.starts_with("not a service account token"));
        // Wrong audience.
        let jwt = sa_token(
            &pkcs8,
            "system:serviceaccount:ci:deployer",
            "https://kubernetes.default.svc",
        );
        let d = verify_pasted(section, &jwks, &jwt, "example.test").unwrap_err();
        assert!(d.reason.contains("audience"), "{}", d.reason);
        // Issuer set in the section: iss must match it.
        let other = token(&jwks, Some("https://other-cluster.test"));
        let jwt = sa_token(&pkcs8, "system:serviceaccount:ci:deployer", "example.test");
        let d = verify_pasted(
            other.spec.kubernetes.as_ref().unwrap(),
            &jwks,
            &jwt,
            "example.test",
        )
        .unwrap_err();
        assert!(d.reason.contains("issuer"), "{}", d.reason);
        // Without an issuer in the section, any iss is fine (the keys decide).
        let no_iss = token(&jwks, None);
        assert!(
            verify_pasted(
                no_iss.spec.kubernetes.as_ref().unwrap(),
                &jwks,
                &jwt,
                "example.test"
            )
            .is_ok()
        );
        // Signed by a key that is not in the pasted set.
        let (other_key, _) = key();
        let jwt = sa_token(
            &other_key,
            "system:serviceaccount:ci:deployer",
            "example.test",
        );
        let d = verify_pasted(section, &jwks, &jwt, "example.test").unwrap_err();
        assert_eq!(d.reason, "signature does not verify");
        // Denials never quote the token.
        assert!(!d.reason.contains(&jwt[..30]));
    }
}
