//! The console's Workload identities page: each identity's template and
//! rules, and the rule tester (`sigil workload-identity test`) as a form.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sigil_proto::v1::TestWorkloadIdentityRequest;

use super::api::{bad, body_json};
use super::context::{Web, status_response};
use crate::api::{resources, workload_admin};

/// Most attributes one test may give.
const MAX_ATTRIBUTES: usize = 64;

/// `GET /web/api/workload-identities`
pub async fn list(web: Web) -> Response {
    if let Err(r) = web.authorize("workload_identity", "list").await {
        return r;
    }
    match resources::list(&web.state, "workload_identity", "", 0, "").await {
        Ok((page, next)) => {
            let items: Vec<Value> = page
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            axum::Json(json!({"workload_identities": items, "more": !next.is_empty()}))
                .into_response()
        }
        Err(e) => status_response(e),
    }
}

/// `POST /web/api/workload-identities/test {"name", "attributes": {..}}`:
/// which rule allows or denies, and the SPIFFE ID it would get. A POST only
/// to carry the attributes; it changes nothing (`workload_identity read`).
pub async fn test(web: Web, body: Body) -> Response {
    if let Err(r) = web.authorize("workload_identity", "read").await {
        return r;
    }
    let v = match body_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
    if let Err(e) = sigil_types::check_name("workload_identity", name) {
        return bad(format!("name: {e}"));
    }
    let Some(attrs) = v.get("attributes").and_then(Value::as_object) else {
        return bad("attributes: an object of attribute names to values");
    };
    if attrs.len() > MAX_ATTRIBUTES {
        return bad(format!("attributes: at most {MAX_ATTRIBUTES}"));
    }
    let mut attributes = std::collections::HashMap::new();
    for (k, v) in attrs {
        let Some(v) = v.as_str() else {
            return bad(format!("attributes.{k}: a string"));
        };
        attributes.insert(k.clone(), v.to_string());
    }
    let req = TestWorkloadIdentityRequest {
        name: name.to_string(),
        attributes,
    };
    match workload_admin::test(&web.state, req) {
        Ok(r) => axum::Json(json!({
            "allowed": r.allowed,
            "matched_rule": r.matched_rule,
            "explanation": r.explanation,
            "spiffe_id": r.spiffe_id,
            "template_error": r.template_error,
            "dns_sans": r.dns_sans,
        }))
        .into_response(),
        Err(e) => status_response(e),
    }
}
