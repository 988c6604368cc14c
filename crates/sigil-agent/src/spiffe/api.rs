//! The SPIFFE Workload API (`SpiffeWorkloadAPI`), exactly per the standard:
//! the `workload.spiffe.io: true` header on every call (`InvalidArgument`
//! without it), the caller attested on every call, `PermissionDenied` when it
//! gets no identity, and streams that send the full state at once and again on
//! every rotation, bundle or CRL change.

use std::sync::Arc;

use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use sigil_types::{Attributes, WorkloadIdentitySelector};
use tonic::{Request, Response, Status};

use super::follow::{RespStream, follow};
use super::runtime::{Entry, EntryKey, EntryKind, Issued, Runtime, TrustView};
use crate::workload::attest::{AttestorSet, PeerProcess};

/// The header every Workload API call must carry (SPIFFE Workload Endpoint).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Attributes that describe one process rather than the workload: attested
/// and logged, but not part of what workloads share SVIDs by.
const PER_PROCESS: [&str; 1] = ["workload.unix.pid"];

/// One Workload API endpoint (one `services:` entry).
#[derive(Clone)]
pub struct WorkloadApi {
    pub rt: Arc<Runtime>,
    pub selector: Option<WorkloadIdentitySelector>,
    pub attestors: Arc<AttestorSet>,
}

/// Refuse a call without `workload.spiffe.io: true`.
pub fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: set workload.spiffe.io: true",
        )),
    }
}

impl WorkloadApi {
    /// Attest the calling process (never cached across calls: pids are reused).
    pub async fn attest<T>(&self, req: &Request<T>) -> Result<Attributes, Status> {
        let peer = req
            .extensions()
            .get::<PeerProcess>()
            .ok_or_else(|| Status::internal("no peer credentials on this connection"))?;
        let mut attrs = self.attestors.attest(peer).await.map_err(|e| {
            tracing::debug!(pid = peer.pid, error = %e, "workload attestation failed");
            Status::permission_denied(format!("workload attestation failed: {e}"))
        })?;
        for k in PER_PROCESS {
            attrs.remove(k);
        }
        Ok(attrs)
    }

    /// The entry (and current SVIDs) for a caller.
    pub async fn svids<T>(
        &self,
        req: &Request<T>,
        kind: EntryKind,
    ) -> Result<(Arc<Entry>, Arc<Issued>), Status> {
        check_header(req)?;
        self.attested_svids(req, kind).await
    }

    /// [`WorkloadApi::svids`] without the SPIFFE header (Envoy's SDS sends none).
    pub async fn attested_svids<T>(
        &self,
        req: &Request<T>,
        kind: EntryKind,
    ) -> Result<(Arc<Entry>, Arc<Issued>), Status> {
        let attrs = self.attest(req).await?;
        let key = EntryKey::new(self.selector.as_ref(), attrs, kind);
        let entry = self.rt.entry(key, self.selector.as_ref());
        let issued = self.rt.get(&entry).await?;
        Ok((entry, issued))
    }
}

/// The X.509-SVID response for an issuance under the current trust view.
pub fn x509_response(issued: &Issued, view: &TrustView) -> Result<X509svidResponse, Status> {
    if let Some(msg) = &view.locked {
        return Err(Status::permission_denied(msg.clone()));
    }
    let svids: Vec<X509svid> = issued
        .x509
        .iter()
        .filter(|s| !view.locked_ids.contains(&s.spiffe_id))
        .map(|s| X509svid {
            spiffe_id: s.spiffe_id.clone(),
            // The SVID first, then any intermediates (the spec's chain form).
            x509_svid: s.chain().flat_map(|d| d.iter().copied()).collect(),
            x509_svid_key: s.key_pkcs8_der.to_vec(),
            bundle: view.bundle_der.clone(),
            hint: s.hint.clone(),
        })
        .collect();
    if svids.is_empty() {
        return Err(Status::permission_denied(
            "no X.509-SVID for this workload (its identities are locked)",
        ));
    }
    // The bundles of the domains the SVIDs' identities federate with (and
    // that are federated now: a removed federation's bundle goes at once).
    let federated_bundles = issued
        .x509
        .iter()
        .flat_map(|s| s.federates_with.iter())
        .filter_map(|td| {
            let f = view
                .federated
                .get(td)
                .filter(|f| !f.bundle_der.is_empty())?;
            Some((format!("spiffe://{td}"), f.bundle_der.clone()))
        })
        .collect();
    Ok(X509svidResponse {
        svids,
        crl: crl_list(view),
        federated_bundles,
    })
}

fn crl_list(view: &TrustView) -> Vec<Vec<u8>> {
    view.crls.clone()
}

pub(crate) fn x509_bundles(view: &TrustView) -> Result<X509BundlesResponse, Status> {
    if view.bundle_der.is_empty() {
        return Err(Status::unavailable("no trust bundle yet"));
    }
    let mut bundles: std::collections::HashMap<String, Vec<u8>> =
        [(view.trust_domain_id(), view.bundle_der.clone())].into();
    for (td, f) in &view.federated {
        if !f.bundle_der.is_empty() {
            bundles.insert(format!("spiffe://{td}"), f.bundle_der.clone());
        }
    }
    Ok(X509BundlesResponse {
        crl: crl_list(view),
        bundles,
    })
}

pub(crate) fn jwt_bundles(view: &TrustView) -> Result<JwtBundlesResponse, Status> {
    if view.jwks_bytes.is_empty() {
        return Err(Status::unavailable("no JWT bundle yet"));
    }
    let mut bundles: std::collections::HashMap<String, Vec<u8>> =
        [(view.trust_domain_id(), view.jwks_bytes.clone())].into();
    for (td, f) in &view.federated {
        if f.jwks["keys"].as_array().is_some_and(|k| !k.is_empty()) {
            bundles.insert(format!("spiffe://{td}"), f.jwks_bytes.clone());
        }
    }
    Ok(JwtBundlesResponse { bundles })
}

/// Wait (briefly) for the first bundle when the agent has just started.
pub async fn trust_ready(rt: &Runtime) -> Arc<TrustView> {
    let mut rx = rt.subscribe_trust();
    let wait = rx.wait_for(|v| !v.bundle_der.is_empty());
    match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
        Ok(Ok(v)) => v.clone(),
        _ => rt.trust(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = RespStream<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (entry, _) = self.svids(&req, EntryKind::X509).await?;
        trust_ready(&self.rt).await;
        Ok(Response::new(follow(
            &self.rt,
            Some(&entry),
            |issued, view| match issued {
                Some(i) => x509_response(i, view),
                None => Err(Status::internal("no SVIDs")),
            },
        )?))
    }

    type FetchX509BundlesStream = RespStream<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        self.attest(&req).await?;
        trust_ready(&self.rt).await;
        Ok(Response::new(follow(&self.rt, None, |_, view| {
            x509_bundles(view)
        })?))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.audience.iter().any(|a| a.is_empty()) {
            return Err(Status::invalid_argument(
                "audience must be specified (one or more non-empty values)",
            ));
        }
        let mut audiences = r.audience.clone();
        audiences.sort();
        audiences.dedup();
        let kind = EntryKind::Jwt {
            audiences,
            spiffe_id: r.spiffe_id.clone(),
        };
        let (_, issued) = self.svids(&req, kind).await?;
        let view = self.rt.trust();
        let svids: Vec<Jwtsvid> = issued
            .jwt
            .iter()
            .filter(|s| !view.locked_ids.contains(&s.spiffe_id))
            .map(|s| Jwtsvid {
                spiffe_id: s.spiffe_id.clone(),
                svid: s.token.to_string(),
                hint: s.hint.clone(),
            })
            .collect();
        if svids.is_empty() {
            return Err(Status::permission_denied("no JWT-SVID for this workload"));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = RespStream<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        self.attest(&req).await?;
        trust_ready(&self.rt).await;
        Ok(Response::new(follow(&self.rt, None, |_, view| {
            jwt_bundles(view)
        })?))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let view = trust_ready(&self.rt).await;
        // A token of a federated domain is checked with that domain's keys
        // (its claimed domain only picks the key set; the signature decides).
        let (td, jwks) = match claimed_trust_domain(&r.svid) {
            Some(td) if td != view.trust_domain => match view.federated.get(&td) {
                Some(f) => (td, &f.jwks),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "invalid JWT-SVID: trust domain {td:?} is neither this one nor federated"
                    )));
                }
            },
            _ => (view.trust_domain.clone(), &view.jwks),
        };
        let v = sigil_pki::verify_jwt_svid(&r.svid, jwks, &td, &r.audience)
            .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id,
            claims: Some(json_to_struct(v.claims)),
        }))
    }
}

/// The trust domain of a JWT's unverified `sub` (a SPIFFE ID), if any.
pub(crate) fn claimed_trust_domain(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let id = sigil_types::SpiffeId::parse(claims.get("sub")?.as_str()?).ok()?;
    Some(id.trust_domain().to_string())
}

/// JSON object → `google.protobuf.Struct`.
pub fn json_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
