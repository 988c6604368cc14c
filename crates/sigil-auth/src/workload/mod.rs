//! SPIFFE workload identity issuance: which `workload_identity` resources a
//! caller may use, evaluated against the attested attributes, rendered into
//! SPIFFE IDs, checked against locks, signed and audited.

pub mod watch;

use std::time::Duration;

use sigil_pki::{ClientIdentity, JwtSvidClaims};
use sigil_proto::v1::{IssueWorkloadIdentitiesResponse, JwtSvid, WorkloadIdentityDenial, X509Svid};
use sigil_store::{NewAuditEvent, Txn};
use sigil_types::{Attributes, LabelField, LockTarget, RoleSet, RuleDecision, WorkloadIdentity};
use tonic::Status;

use crate::audit;
use crate::state::AuthState;

/// X.509-SVID lifetime when neither the request nor the identity sets one.
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// JWT-SVID lifetime when neither the request nor the identity sets one.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Shortest lifetime issued, whatever is asked.
const MIN_TTL: Duration = Duration::from_secs(30);

const MAX_ATTRIBUTES: usize = 256;
const MAX_ATTRIBUTE_NAME: usize = 256;
const MAX_ATTRIBUTE_VALUE: usize = 4096;
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_LEN: usize = 512;

/// One issuance request, from an agent or an admin.
pub struct IssueRequest<'a> {
    /// Identities the caller may use, already filtered by grant and selector.
    pub candidates: Vec<WorkloadIdentity>,
    pub attrs: Attributes,
    /// SPKI that every X.509-SVID certifies (empty: none).
    pub x509_spki: &'a [u8],
    pub jwt_audiences: &'a [String],
    pub x509_ttl_secs: u64,
    pub jwt_ttl_secs: u64,
    /// Only this SPIFFE ID ("" = all).
    pub only_spiffe_id: &'a str,
    /// Upper bound from the caller's roles.
    pub max_ttl: Duration,
    /// Who asked, for audit (`bot:NAME/INSTANCE` or the admin actor).
    pub actor: String,
    /// The bot instance X.509-SVIDs are issued to, recorded in them (the
    /// app proxy authorises an SVID by its holder's current roles); `None`
    /// for an admin.
    pub holder: Option<sigil_pki::SvidHolder>,
}

/// Validate the attested attributes an agent sends: `workload.*` only, bounded.
pub fn check_workload_attributes(
    attrs: &std::collections::HashMap<String, String>,
    allowed_prefixes: &[&str],
) -> Result<Attributes, Status> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(Status::invalid_argument(format!(
            "too many attributes ({}; at most {MAX_ATTRIBUTES})",
            attrs.len()
        )));
    }
    let mut out = Attributes::new();
    for (k, v) in attrs {
        if k.len() > MAX_ATTRIBUTE_NAME || v.len() > MAX_ATTRIBUTE_VALUE {
            return Err(Status::invalid_argument(format!(
                "attribute {:?} is too long",
                truncate(k, 64)
            )));
        }
        if !allowed_prefixes.iter().any(|p| k.starts_with(p)) {
            return Err(Status::invalid_argument(format!(
                "attribute {k:?} must start with one of {}",
                allowed_prefixes.join(", ")
            )));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The `bot.*` and `join.*` attributes of an agent's identity, from its
/// certificate (the join method and the claims its join proved).
pub fn bot_attributes(id: &ClientIdentity) -> Attributes {
    let mut a = Attributes::new();
    a.insert("bot.name".into(), id.bot.clone());
    a.insert("bot.instance_id".into(), id.instance_id.clone());
    add_join_attributes(&mut a, id);
    a
}

/// `join.method` and `join.<method>.<claim>` from the verified claims the
/// certificate carries (set at join, kept through renewals, replaced at
/// every re-proof of a delegated method).
fn add_join_attributes(a: &mut Attributes, id: &ClientIdentity) {
    a.insert("join.method".into(), id.join_method.clone());
    for (k, v) in &id.join_attributes {
        a.insert(format!("join.{}.{k}", id.join_method), v.clone());
    }
}

/// The identities a bot's current roles grant.
pub fn granted_identities(state: &AuthState, roles: &RoleSet) -> Vec<WorkloadIdentity> {
    state
        .cache
        .workload_identities()
        .into_iter()
        .filter(|w| roles.labels_match(LabelField::WorkloadIdentity, &w.metadata.labels))
        .collect()
}

/// Evaluate, render, check locks, sign and audit.
pub async fn issue(
    state: &AuthState,
    req: IssueRequest<'_>,
) -> Result<IssueWorkloadIdentitiesResponse, Status> {
    if req.jwt_audiences.len() > MAX_AUDIENCES
        || req
            .jwt_audiences
            .iter()
            .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(Status::invalid_argument(format!(
            "give 1 to {MAX_AUDIENCES} non-empty audiences of at most {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    let mut resp = IssueWorkloadIdentitiesResponse {
        bundle: Some(state.trust.bundle_proto(&state.cluster)),
        ..Default::default()
    };
    let mut events: Vec<NewAuditEvent> = Vec::new();
    for wi in &req.candidates {
        let name = wi.metadata.name.clone();
        let mut deny = |reason: String, events: &mut Vec<NewAuditEvent>| {
            events.push(audit::event(
                audit::WORKLOAD_IDENTITY_DENIED,
                serde_json::json!({"name": name, "reason": reason, "by": req.actor}),
            ));
            resp.denials.push(WorkloadIdentityDenial {
                name: name.clone(),
                reason,
            });
        };
        let (rule, matched) = match wi.spec.evaluate(&req.attrs) {
            RuleDecision::Allowed { rule, matched } => (rule, matched),
            RuleDecision::Denied { reason } => {
                deny(reason, &mut events);
                continue;
            }
        };
        let rendered = match wi.spec.render(&state.cluster, &req.attrs) {
            Ok(r) => r,
            Err(e) => {
                deny(format!("template: {e}"), &mut events);
                continue;
            }
        };
        let spiffe_id = rendered.spiffe_id.to_string();
        if !req.only_spiffe_id.is_empty() && req.only_spiffe_id != spiffe_id {
            continue;
        }
        if let Some(lock) = state
            .cache
            .lock_for(&[LockTarget::SpiffeId(spiffe_id.clone())])
        {
            deny(
                format!("locked: {} (lock {})", lock.spec.target, lock.metadata.name),
                &mut events,
            );
            continue;
        }
        let audit_base = serde_json::json!({
            "name": wi.metadata.name, "spiffe_id": spiffe_id, "by": req.actor,
            "rule": rule, "attributes": matched,
        });
        if !req.x509_spki.is_empty() {
            let ttl = pick_ttl(
                req.x509_ttl_secs,
                rendered.x509_ttl,
                DEFAULT_X509_TTL,
                req.max_ttl,
            );
            let signer = &state.cas().spiffe.signer;
            let cert = crate::telemetry::issue("x509_svid", || match &req.holder {
                Some(h) => signer.issue_x509_svid_for(
                    req.x509_spki,
                    &spiffe_id,
                    &rendered.dns_sans,
                    ttl,
                    h,
                ),
                None => signer.issue_x509_svid(req.x509_spki, &spiffe_id, &rendered.dns_sans, ttl),
            })
            .map_err(crate::issuance::pki_error)?;
            let mut ev = audit_base.clone();
            extend(
                &mut ev,
                serde_json::json!({"kind": "x509", "serial": cert.serial_hex, "ttl_seconds": ttl.as_secs()}),
            );
            events.push(audit::event(audit::WORKLOAD_IDENTITY_ISSUED, ev));
            metrics::counter!("sigil_svids_issued_total", "kind" => "x509").increment(1);
            resp.x509_svids.push(X509Svid {
                name: wi.metadata.name.clone(),
                spiffe_id: spiffe_id.clone(),
                hint: rendered.hint.clone(),
                cert_der: cert.der,
                serial_hex: cert.serial_hex,
                expires_unix: cert.not_after.unix_timestamp(),
                chain_der: svid_chain(&state.cas().spiffe.signer),
                federates_with: wi.spec.spiffe.federates_with.clone(),
            });
        }
        if !req.jwt_audiences.is_empty() {
            let ttl = pick_ttl(
                req.jwt_ttl_secs,
                rendered.jwt_ttl,
                DEFAULT_JWT_TTL,
                req.max_ttl,
            );
            let claims = JwtSvidClaims {
                sub: spiffe_id.clone(),
                aud: req.jwt_audiences.to_vec(),
                iss: Some(state.jwt_issuer.clone()),
                ttl,
                extra: rendered.extra_claims.clone().into_iter().collect(),
            };
            let jwt = state
                .cas()
                .jwt
                .signer
                .sign_jwt_svid(&claims)
                .map_err(|e| Status::internal(format!("signing the JWT-SVID: {e}")))?;
            let mut ev = audit_base.clone();
            extend(
                &mut ev,
                serde_json::json!({"kind": "jwt", "audiences": req.jwt_audiences, "kid": jwt.kid, "ttl_seconds": ttl.as_secs()}),
            );
            events.push(audit::event(audit::WORKLOAD_IDENTITY_ISSUED, ev));
            metrics::counter!("sigil_svids_issued_total", "kind" => "jwt").increment(1);
            resp.jwt_svids.push(JwtSvid {
                name: wi.metadata.name.clone(),
                spiffe_id,
                hint: rendered.hint,
                token: jwt.token,
                expires_unix: jwt.expires.unix_timestamp(),
            });
        }
    }
    if !events.is_empty() {
        state
            .store
            .commit(Txn {
                ops: vec![],
                audit: events,
            })
            .await
            .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    }
    Ok(resp)
}

/// The request (if any) lowers the identity's own lifetime (or the default);
/// the roles' cap and a floor apply last.
fn pick_ttl(
    requested_secs: u64,
    own: Option<Duration>,
    default: Duration,
    cap: Duration,
) -> Duration {
    let ttl = match (requested_secs, own) {
        (0, own) => own.unwrap_or(default),
        (r, Some(own)) => Duration::from_secs(r).min(own),
        (r, None) => Duration::from_secs(r),
    };
    ttl.min(cap).max(MIN_TTL.min(cap))
}

fn extend(base: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(m)) = (base.as_object_mut(), more) {
        b.extend(m);
    }
}

/// What follows an X.509-SVID: nothing under Sigil's own self-signed CA (the bundle
/// holds it); the CA and the intermediates above it under an imported one, so that
/// relying parties that trust only the organisation's root can build the path.
fn svid_chain(ca: &sigil_pki::X509Ca) -> Vec<Vec<u8>> {
    if ca.is_intermediate() {
        ca.chain_ders().to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_choice() {
        let h = Duration::from_secs(3600);
        let d = Duration::from_secs(600);
        // Nothing asked: the identity's own, else the default.
        assert_eq!(pick_ttl(0, Some(d), h, 2 * h), d);
        assert_eq!(pick_ttl(0, None, h, 2 * h), h);
        // Asking for less is honoured.
        assert_eq!(pick_ttl(60, Some(d), h, 2 * h), Duration::from_secs(60));
        // The roles' cap always wins.
        assert_eq!(pick_ttl(0, None, h, d), d);
        assert_eq!(pick_ttl(7200, None, h, d), d);
        // A floor of 30 s.
        assert_eq!(pick_ttl(1, None, h, h), MIN_TTL);
    }
}
