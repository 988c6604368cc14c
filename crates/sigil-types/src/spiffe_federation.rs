//! `spiffe_federation`: trust a foreign SPIFFE trust domain (SPIFFE Federation
//! standard). The auth service fetches the domain's bundle from its bundle
//! endpoint, keeps it current, and hands it to agents, whose workloads then
//! accept SVIDs of that domain.
//!
//! ```yaml
//! kind: spiffe_federation
//! version: v1
//! metadata: {name: partner.example}        # the foreign trust domain
//! spec:
//!   bundle_source:
//!     https_web: {bundle_endpoint_url: "https://partner.example/.well-known/spiffe-bundle"}
//!     # or https_spiffe: {bundle_endpoint_url: ..., endpoint_spiffe_id: "spiffe://partner.example/bundle-server"}
//!   trust_bundle: |                        # bootstrap bundle (PEM or SPIFFE bundle JSON)
//!     -----BEGIN CERTIFICATE-----
//! ```

use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use crate::spiffe::{SpiffeId, validate_trust_domain};
use serde::{Deserialize, Serialize};

/// Longest `bundle_endpoint_url` (bytes).
pub const MAX_URL_LEN: usize = 2048;
/// Largest `spec.trust_bundle` (bytes).
pub const MAX_TRUST_BUNDLE_BYTES: usize = 256 * 1024;

/// Body of a `spiffe_federation`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpiffeFederationSpec {
    /// Where the foreign bundle comes from.
    pub bundle_source: BundleSource,
    /// The first bundle (the standard's "bootstrap"): PEM CA certificates or a
    /// SPIFFE bundle document (JWKS JSON). Required for `https_spiffe`, whose
    /// endpoint is authenticated with the last known bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
}

/// Exactly one profile of the SPIFFE bundle endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BundleSource {
    /// Endpoint authenticated with WebPKI (system roots, `--outbound-ca-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_web: Option<HttpsWeb>,
    /// Endpoint authenticated with an X.509-SVID of the foreign domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_spiffe: Option<HttpsSpiffe>,
}

/// The `https_web` profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpsWeb {
    /// `https://…` URL of the bundle endpoint.
    pub bundle_endpoint_url: String,
}

/// The `https_spiffe` profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpsSpiffe {
    /// `https://…` URL of the bundle endpoint.
    pub bundle_endpoint_url: String,
    /// The SPIFFE ID the endpoint's X.509-SVID must carry (in the foreign domain).
    pub endpoint_spiffe_id: String,
}

/// A federation with a foreign trust domain.
pub type SpiffeFederation = Resource<SpiffeFederationSpec>;

/// The profile of a federation, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleProfile<'a> {
    /// WebPKI-authenticated.
    Web {
        /// The endpoint URL.
        url: &'a str,
    },
    /// SPIFFE-authenticated.
    Spiffe {
        /// The endpoint URL.
        url: &'a str,
        /// The SPIFFE ID the endpoint must present.
        endpoint_spiffe_id: &'a str,
    },
}

impl SpiffeFederationSpec {
    /// The configured profile (validation guarantees exactly one).
    pub fn profile(&self) -> Option<BundleProfile<'_>> {
        match (
            &self.bundle_source.https_web,
            &self.bundle_source.https_spiffe,
        ) {
            (Some(w), None) => Some(BundleProfile::Web {
                url: &w.bundle_endpoint_url,
            }),
            (None, Some(s)) => Some(BundleProfile::Spiffe {
                url: &s.bundle_endpoint_url,
                endpoint_spiffe_id: &s.endpoint_spiffe_id,
            }),
            _ => None,
        }
    }
}

impl Kind for SpiffeFederationSpec {
    const KIND: &'static str = "spiffe_federation";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        let td = &res.metadata.name;
        validate_trust_domain(td).map_err(|e| {
            ValidationError::new(
                "metadata.name",
                format!("must be the foreign trust domain (e.g. partner.example): {e}"),
            )
        })?;
        let src = &res.spec.bundle_source;
        match (&src.https_web, &src.https_spiffe) {
            (Some(w), None) => {
                validate_https_url(&w.bundle_endpoint_url).map_err(|m| {
                    ValidationError::new("spec.bundle_source.https_web.bundle_endpoint_url", m)
                })?;
            }
            (None, Some(s)) => {
                validate_https_url(&s.bundle_endpoint_url).map_err(|m| {
                    ValidationError::new("spec.bundle_source.https_spiffe.bundle_endpoint_url", m)
                })?;
                let field = "spec.bundle_source.https_spiffe.endpoint_spiffe_id";
                let id = SpiffeId::parse(&s.endpoint_spiffe_id)
                    .map_err(|e| ValidationError::new(field, e.to_string()))?;
                if id.trust_domain() != td {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "{:?} is not in the federated trust domain {td:?}: the endpoint must present an SVID of that domain",
                            s.endpoint_spiffe_id
                        ),
                    ));
                }
                if res.spec.trust_bundle.is_none() {
                    return Err(ValidationError::new(
                        "spec.trust_bundle",
                        "required with https_spiffe: the endpoint is authenticated with the domain's bundle, so give the first one (PEM CA certificates or the SPIFFE bundle JSON, obtained out of band)",
                    ));
                }
            }
            _ => {
                return Err(ValidationError::new(
                    "spec.bundle_source",
                    "give exactly one of https_web or https_spiffe",
                ));
            }
        }
        if let Some(b) = &res.spec.trust_bundle {
            if b.trim().is_empty() {
                return Err(ValidationError::new(
                    "spec.trust_bundle",
                    "empty: give PEM CA certificates or a SPIFFE bundle document, or leave it out",
                ));
            }
            if b.len() > MAX_TRUST_BUNDLE_BYTES {
                return Err(ValidationError::new(
                    "spec.trust_bundle",
                    format!("larger than {MAX_TRUST_BUNDLE_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// `https://HOST[:PORT][/PATH]`, no user info, fragment or control characters.
pub fn validate_https_url(url: &str) -> Result<(), String> {
    let shown = crate::text::escape_unsafe(url);
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("\"{shown}\" contains spaces or control characters"));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "\"{shown}\" is not an https URL: a bundle endpoint is https://HOST[:PORT]/PATH"
        ));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("\"{shown}\" has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "\"{shown}\" has user info (USER@): credentials do not belong in the URL"
        ));
    }
    if url.contains('#') {
        return Err(format!("\"{shown}\" has a fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_resources;
    use crate::resource::AnyResource;

    fn parse(yaml: &str) -> Result<SpiffeFederation, String> {
        let r = parse_resources(yaml, "t.yaml").map_err(|e| e.to_string())?;
        match r.into_iter().next() {
            Some(AnyResource::SpiffeFederation(f)) => {
                f.validate().map_err(|e| e.to_string())?;
                Ok(f)
            }
            other => Err(format!("{other:?}")),
        }
    }

    const WEB: &str = "kind: spiffe_federation\nversion: v1\nmetadata: {name: partner.example}\nspec:\n  bundle_source:\n    https_web: {bundle_endpoint_url: \"https://partner.example/.well-known/spiffe-bundle\"}\n";

    #[test]
    fn https_web_is_accepted() {
        let f = parse(WEB).unwrap();
        assert_eq!(
            f.spec.profile(),
            Some(BundleProfile::Web {
                url: "https://partner.example/.well-known/spiffe-bundle"
            })
        );
    }

    #[test]
    fn https_spiffe_needs_foreign_id_and_bootstrap() {
        let base = "kind: spiffe_federation\nversion: v1\nmetadata: {name: partner.example}\nspec:\n  bundle_source:\n    https_spiffe: {bundle_endpoint_url: \"https://p:8443/\", endpoint_spiffe_id: \"ID\"}\n";
        let ok = format!(
            "{}  trust_bundle: \"{{}}\"\n",
            base.replace("ID", "spiffe://partner.example/bundle")
        );
        parse(&ok).unwrap();
        let wrong_td = format!(
            "{}  trust_bundle: \"{{}}\"\n",
            base.replace("ID", "spiffe://other.example/bundle")
        );
        let e = parse(&wrong_td).unwrap_err();
        assert!(
            e.contains("endpoint_spiffe_id") && e.contains("not in"),
            "{e}"
        );
        let no_bootstrap = base.replace("ID", "spiffe://partner.example/bundle");
        let e = parse(&no_bootstrap).unwrap_err();
        assert!(e.contains("spec.trust_bundle"), "{e}");
    }

    #[test]
    fn refuses_bad_names_urls_and_profiles() {
        let e = parse(&WEB.replace("partner.example}", "Partner.Example}")).unwrap_err();
        assert!(e.contains("metadata.name"), "{e}");
        let e = parse(&WEB.replace("https://partner", "http://partner")).unwrap_err();
        assert!(e.contains("not an https URL"), "{e}");
        let e = parse(&WEB.replace("https://partner", "https://u:p@partner")).unwrap_err();
        assert!(e.contains("user info"), "{e}");
        let both = format!(
            "{WEB}    https_spiffe: {{bundle_endpoint_url: \"https://x/\", endpoint_spiffe_id: \"spiffe://partner.example/x\"}}\n"
        );
        let e = parse(&both).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let none = "kind: spiffe_federation\nversion: v1\nmetadata: {name: partner.example}\nspec: {bundle_source: {}}\n";
        let e = parse(none).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }
}
