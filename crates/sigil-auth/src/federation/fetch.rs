//! Fetching a foreign bundle from its bundle endpoint, per profile:
//! `https_web` through the outbound client (system roots plus
//! `--outbound-ca-file`), `https_spiffe` with the endpoint authenticated by
//! the domain's last known bundle ([`super::spiffe_tls`]). Same bounds as
//! every outbound call: https only, no redirects, short timeouts, bounded body.

use std::time::Duration;

use sigil_pki::ForeignBundle;
use sigil_types::{BundleProfile, SpiffeFederation};

use super::spiffe_tls::SpiffeServerVerifier;
use crate::outbound::{self, Outbound};

/// Fetch and parse `fed`'s bundle. `last` is the bundle known now (what an
/// `https_spiffe` endpoint is authenticated with). Errors name what failed,
/// for the log and the `spiffe_federation.refresh_failed` audit event.
pub async fn fetch(
    outbound: &Outbound,
    fed: &SpiffeFederation,
    last: Option<&ForeignBundle>,
) -> Result<ForeignBundle, String> {
    let td = &fed.metadata.name;
    let (client, url) = match fed.spec.profile() {
        Some(BundleProfile::Web { url }) => (outbound.client().clone(), url),
        Some(BundleProfile::Spiffe {
            url,
            endpoint_spiffe_id,
        }) => {
            let Some(last) = last else {
                return Err("no bundle of the domain is known yet to authenticate its https_spiffe endpoint (give spec.trust_bundle)".into());
            };
            let verifier = SpiffeServerVerifier::new(&last.x509_authorities, endpoint_spiffe_id)?;
            (spiffe_client(verifier)?, url)
        }
        None => return Err("no bundle source".into()),
    };
    let resp = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    let body = outbound::read_body(url, resp)
        .await
        .map_err(|e| e.to_string())?;
    sigil_pki::parse_spiffe_bundle(&body, td)
        .map_err(|e| format!("{url}: not a usable SPIFFE bundle of {td}: {e}"))
}

fn spiffe_client(verifier: SpiffeServerVerifier) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(outbound::TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("sigil-auth/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(verifier.client_config()?)
        .build()
        .map_err(|e| format!("building the https_spiffe client: {e}"))
}

/// A reqwest error with its causes (the TLS verifier's reason is a cause).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
