//! Admin verbs for workload identities: mint one for testing and explain a
//! rule decision (`sigil workload-identity issue|test`).

use sigil_proto::v1::{
    AdminIssueWorkloadIdentityRequest, IssueWorkloadIdentitiesResponse,
    TestWorkloadIdentityRequest, TestWorkloadIdentityResponse,
};
use sigil_types::{RuleDecision, WorkloadIdentity};
use tonic::Status;

use crate::state::AuthState;
use crate::workload;

/// Attribute namespaces an admin may supply by hand.
const ADMIN_PREFIXES: [&str; 3] = ["workload.", "join.", "bot."];

fn identity(state: &AuthState, name: &str) -> Result<WorkloadIdentity, Status> {
    state.cache.workload_identity(name).ok_or_else(|| {
        Status::not_found(format!(
            "workload identity {name:?} not found: `sigil get workload_identities` lists them"
        ))
    })
}

pub async fn issue(
    state: &AuthState,
    r: AdminIssueWorkloadIdentityRequest,
    actor: String,
) -> Result<IssueWorkloadIdentitiesResponse, Status> {
    let wi = identity(state, &r.name)?;
    let attrs = workload::check_workload_attributes(&r.attributes, &ADMIN_PREFIXES)?;
    if r.x509_public_key_spki.is_empty() && r.jwt_audiences.is_empty() {
        return Err(Status::invalid_argument(
            "ask for an X.509-SVID (a public key) and/or a JWT-SVID (audiences)",
        ));
    }
    workload::issue(
        state,
        workload::IssueRequest {
            candidates: vec![wi],
            attrs,
            x509_spki: &r.x509_public_key_spki,
            jwt_audiences: &r.jwt_audiences,
            x509_ttl_secs: r.x509_ttl_seconds,
            jwt_ttl_secs: r.jwt_ttl_seconds,
            only_spiffe_id: "",
            max_ttl: sigil_types::DEFAULT_MAX_TTL,
            actor,
            holder: None,
        },
    )
    .await
}

pub fn test(
    state: &AuthState,
    r: TestWorkloadIdentityRequest,
) -> Result<TestWorkloadIdentityResponse, Status> {
    let wi = identity(state, &r.name)?;
    let attrs = workload::check_workload_attributes(&r.attributes, &ADMIN_PREFIXES)?;
    let mut resp = TestWorkloadIdentityResponse {
        matched_rule: -1,
        ..Default::default()
    };
    match wi.spec.evaluate(&attrs) {
        RuleDecision::Allowed { rule, matched } => {
            resp.allowed = true;
            resp.matched_rule = rule.map_or(-1, |i| i32::try_from(i).unwrap_or(i32::MAX));
            resp.explanation = match rule {
                None => "allowed: the identity has no allow rules".to_string(),
                Some(i) => {
                    let checked: Vec<String> =
                        matched.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    format!("allowed by rule {i} ({})", checked.join(", "))
                }
            };
        }
        RuleDecision::Denied { reason } => {
            resp.explanation = reason;
        }
    }
    match wi.spec.render(&state.cluster, &attrs) {
        Ok(rendered) => {
            if resp.allowed {
                resp.spiffe_id = rendered.spiffe_id.to_string();
                resp.dns_sans = rendered.dns_sans;
            }
        }
        Err(e) => {
            resp.allowed = false;
            resp.template_error = e.to_string();
        }
    }
    Ok(resp)
}
