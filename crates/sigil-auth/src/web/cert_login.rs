//! Logging in to the console with the client certificate the browser
//! presented on this connection (an identity output's, see client_cert.rs):
//! `GET /web/api/certificate` says whether there is one (for the login
//! page's button), `POST /web/api/login/certificate` opens a session for it.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sigil_pki::{CertInfo, ClientIdentity};
use time::OffsetDateTime;

use super::client_cert::{ConnCert, PresentedCert};
use super::context::{self, error};
use super::session::{self, AGENT_IDENTITY_REFUSED, NewSession, Principal, WEB_LOGIN_DENIED};
use crate::audit;
use crate::authz::{self, Caller};
use crate::state::{AuthState, SharedState};

/// What every refused certificate login is told; the audit log says why.
const DENIED: &str = "access denied";

fn presented(parts: &Parts) -> Option<ConnCert> {
    parts.extensions.get::<ConnCert>().cloned()
}

/// `GET /web/api/certificate`: `{"presented": bool, "bot": NAME|null}`. The
/// name is the one the certificate states: only its holder sees it.
pub async fn certificate(req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let (presented, bot) = match presented(&parts).as_ref().map(|c| c.0.as_ref()) {
        None | Some(PresentedCert::None) => (false, None),
        Some(PresentedCert::Refused { bot, .. }) => (true, bot.clone()),
        Some(PresentedCert::Verified { identity, .. }) => (true, Some(identity.bot.clone())),
    };
    axum::Json(json!({"presented": presented, "bot": bot})).into_response()
}

/// `POST /web/api/login/certificate`: a session for the certificate's bot,
/// from this origin only. A refusal says only "access denied".
pub async fn login(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let remote = context::remote_of(&parts);
    if let Err(why) = context::same_origin(&parts) {
        context::refuse_csrf(&state, "anonymous", why, &remote, parts.uri.path()).await;
        return error(StatusCode::FORBIDDEN, "refused: cross-site login");
    }
    // As the link login: the session this browser had ends first.
    if let Some(old) = context::session_of(&state, &parts.headers).await
        && let Err(e) = session::end(&state, &old, &remote).await
    {
        return context::unavailable("ending the previous session", &e.message());
    }
    let cert = presented(&parts);
    let result = match cert.as_ref().map(|c| c.0.as_ref()) {
        None | Some(PresentedCert::None) => Err((
            None,
            "no client certificate on this connection (is the auth service started with --web-client-certificates?)".to_string(),
        )),
        // The name an unverified certificate states is not audited: anyone
        // can mint one naming any bot, and a name per attempt would keep
        // the denials from aggregating into one row per kind.
        Some(PresentedCert::Refused { why, .. }) => Err((None, why.clone())),
        Some(PresentedCert::Verified {
            identity,
            info,
            client_ca_pin,
        }) => open_with_certificate(&state, identity, info, client_ca_pin, &remote)
            .await
            .map_err(|why| (Some(identity.bot.clone()), why)),
    };
    match result {
        Ok(s) => super::api::with_session_cookies(axum::Json(json!({"ok": true})), &s),
        Err((bot, why)) => {
            let ev = audit::event(
                WEB_LOGIN_DENIED,
                json!({
                    "reason": why, "remote_addr": remote, "via": "web",
                    "method": "client_certificate", "bot": bot,
                }),
            );
            state.denials.record(state.store.as_ref(), ev).await;
            error(StatusCode::FORBIDDEN, DENIED)
        }
    }
}

/// Open a session for the bot whose identity-output certificate the
/// browser presented on this connection (verified against the client CAs
/// trusted now; `client_ca_pin` names the one that signed it). Checked as
/// the admin API checks an mTLS caller, plus what `CreateWebLogin` asks:
/// never an agent's own identity, and a role that may list something.
/// `Err` is the reason, for the audit log only.
async fn open_with_certificate(
    state: &AuthState,
    identity: &ClientIdentity,
    info: &CertInfo,
    client_ca_pin: &str,
    remote: &str,
) -> Result<NewSession, String> {
    if identity.is_agent_identity() {
        return Err(AGENT_IDENTITY_REFUSED.into());
    }
    let caller = Caller::Bot(Box::new((identity.clone(), info.clone())));
    let principal = Principal::of(&caller, Some(client_ca_pin));
    // Cluster, expiry, the CA's pin still trusted, locks, bot and instance
    // current: what every request of the session re-checks.
    let caller = session::caller_of(state, &principal, remote)
        .await
        .map_err(|e| e.message().to_string())?;
    authz::authorize_any(state, &caller, "list").map_err(|e| e.message().to_string())?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    session::open(state, principal, now, remote, "client_certificate", None).await
}
