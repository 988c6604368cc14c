//! What every console API call starts from: the session from the cookie,
//! the CSRF and origin checks for a change, and the session's principal as
//! an admin API caller. An extractor, so no handler can skip it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::Status;

use super::RemoteAddr;
use super::session::{self, CSRF_HEADER, SESSION_COOKIE, Session};
use crate::audit;
use crate::authz::{self, Caller};
use crate::state::SharedState;

/// A console API call from a live session.
pub struct Web {
    pub state: SharedState,
    pub session: Session,
    pub caller: Caller,
    pub remote: String,
}

impl Web {
    /// The admin API's authorisation, with its refusals audited the same way.
    pub async fn authorize(&self, kind: &str, verb: &str) -> Result<(), Response> {
        let result = authz::authorize_admin(&self.state, &self.caller, kind, verb);
        self.audited(result).await
    }

    /// Pass `result` through, auditing a permission refusal with its reason.
    pub async fn audited(&self, result: Result<(), Status>) -> Result<(), Response> {
        if let Err(e) = &result
            && e.code() == tonic::Code::PermissionDenied
        {
            let ev = audit::event(
                audit::ADMIN_DENIED,
                serde_json::json!({
                    "by": authz::actor(&self.caller), "reason": e.message(),
                    "remote_addr": self.remote, "via": "web",
                }),
            );
            self.state
                .denials
                .record(self.state.store.as_ref(), ev)
                .await;
        }
        result.map_err(status_response)
    }

    pub fn actor(&self) -> String {
        authz::actor(&self.caller)
    }

    /// For the audit events of the changes this call makes.
    pub fn origin(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("via".into(), "web".into());
        m.insert("remote_addr".into(), self.remote.clone().into());
        m
    }
}

impl FromRequestParts<SharedState> for Web {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let remote = remote_of(parts);
        let Some(session) = session_of(state, &parts.headers).await else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "no session: log in with `sigil admin login`",
            ));
        };
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            check_change(state, parts, &session, &remote).await?;
        }
        let caller = session::caller(state, &session, &remote)
            .await
            .map_err(status_response)?;
        // Only a request the principal may make keeps the session alive.
        session::touch(state, &session).await;
        Ok(Web {
            state: state.clone(),
            session,
            caller,
            remote,
        })
    }
}

/// A change must carry the session's CSRF token and come from this origin;
/// a refusal is audited.
pub async fn check_change(
    state: &SharedState,
    parts: &Parts,
    session: &Session,
    remote: &str,
) -> Result<(), Response> {
    let csrf = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let why = match same_origin(parts) {
        Err(why) => Some(why),
        Ok(()) if csrf.is_empty() => Some("no CSRF token"),
        Ok(()) if !session::csrf_matches(session, csrf) => Some("wrong CSRF token"),
        Ok(()) => None,
    };
    match why {
        None => Ok(()),
        Some(why) => {
            refuse_csrf(state, &session.actor(), why, remote, parts.uri.path()).await;
            Err(error(
                StatusCode::FORBIDDEN,
                "refused: the request is cross-site or lacks this session's CSRF token",
            ))
        }
    }
}

/// Storage (or key store) trouble: the details go to the server's log, the
/// browser gets a message that leaks nothing of the backend.
pub fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "web console: {what}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{what} failed: the service is unavailable; the server's log has the details"),
    )
}

/// Audits a refused cross-site or token-less change.
pub async fn refuse_csrf(state: &SharedState, by: &str, why: &str, remote: &str, path: &str) {
    let ev = audit::event(
        session::WEB_CSRF_REFUSED,
        serde_json::json!({"by": by, "reason": why, "remote_addr": remote, "path": path}),
    );
    state.denials.record(state.store.as_ref(), ev).await;
}

pub fn remote_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<RemoteAddr>()
        .map(|r| r.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A change must come from a page of this very origin: `Origin` (which
/// browsers send with every POST and DELETE, and a page cannot forge) is
/// `https://` + the host the request was sent to, and `Sec-Fetch-Site`, when
/// the browser sends it, says `same-origin`.
pub fn same_origin(parts: &Parts) -> Result<(), &'static str> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .ok_or("no Host")?;
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .ok_or("no Origin header")?;
    if origin != format!("https://{host}") {
        return Err("foreign Origin");
    }
    match parts
        .headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("same-origin") => Ok(()),
        Some(_) => Err("Sec-Fetch-Site is not same-origin"),
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

pub async fn session_of(state: &SharedState, headers: &HeaderMap) -> Option<Session> {
    session::find(state, cookie(headers, SESSION_COOKIE)?).await
}

pub fn error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// The admin API's error, as the HTTP status a browser understands.
pub fn status_response(s: Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if code.is_server_error() {
        // Storage or key store text stays in the server's log.
        tracing::warn!(error = %s.message(), "web console: a call failed");
        return error(
            code,
            "the service could not complete the request; the server's log has the details",
        );
    }
    error(code, s.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method("POST").uri("/web/api/locks");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_same_origin_changes_pass() {
        let host = ("host", "auth.example:8443");
        assert!(same_origin(&parts(&[host, ("origin", "https://auth.example:8443")])).is_ok());
        assert!(
            same_origin(&parts(&[
                host,
                ("origin", "https://auth.example:8443"),
                ("sec-fetch-site", "same-origin")
            ]))
            .is_ok()
        );
        assert!(same_origin(&parts(&[host])).is_err());
        assert!(same_origin(&parts(&[host, ("origin", "https://evil.example")])).is_err());
        assert!(same_origin(&parts(&[host, ("origin", "http://auth.example:8443")])).is_err());
        assert!(same_origin(&parts(&[host, ("origin", "null")])).is_err());
        assert!(
            same_origin(&parts(&[
                host,
                ("origin", "https://auth.example:8443"),
                ("sec-fetch-site", "cross-site")
            ]))
            .is_err()
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; __Host-sigil_session_x=2; __Host-sigil_session=abc"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
