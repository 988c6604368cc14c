//! The web console under `/web/` on the public HTTPS listener: pages and
//! their assets built into the binary, and a JSON API under `/web/api/`.
//!
//! Security model: a session comes only from a single-use login link
//! (`sigil admin login`, session.rs) or, with `--web-client-certificates`,
//! an identity output's client certificate (cert_login.rs); every API call runs as the session's
//! principal through the admin API's own authorisation (authz.rs); every
//! change needs the session's CSRF token in a header and a same-origin
//! `Origin` (and `Sec-Fetch-Site`, when sent); every response carries a
//! strict Content-Security-Policy and is never cached.

mod api;
mod cas;
mod cert_login;
pub mod client_cert;
mod context;
mod overview;
pub mod session;
mod tail;
mod tokens;
mod workload;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};

use crate::state::SharedState;
use context::session_of;

/// The peer of a public-listener connection, for audit events.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_HTML: &str = include_str!("assets/app.html");
const LOGIN_JS: &str = include_str!("assets/login.js");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The console's routes, with their state applied.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/web", get(|| async { Redirect::to("/web/") }))
        .route("/web/", get(page))
        .route("/web/fleet", get(page))
        .route("/web/fleet/{bot}", get(page))
        .route("/web/locks", get(page))
        .route("/web/audit", get(page))
        .route("/web/tokens", get(page))
        .route("/web/cas", get(page))
        .route("/web/overview", get(page))
        .route("/web/workload-identities", get(page))
        .route("/web/login", get(|| async { html(LOGIN_HTML) }))
        .route(
            "/web/static/login.js",
            get(|| async { asset(LOGIN_JS, "text/javascript") }),
        )
        .route(
            "/web/static/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/web/static/style.css",
            get(|| async { asset(STYLE_CSS, "text/css") }),
        )
        .route("/web/api/login", post(api::login))
        .route("/web/api/login/certificate", post(cert_login::login))
        .route("/web/api/certificate", get(cert_login::certificate))
        .route("/web/api/logout", post(api::logout))
        .route("/web/api/session", get(api::whoami))
        .route("/web/api/bots", get(api::bots))
        .route("/web/api/instances", get(api::instances))
        .route("/web/api/locks", get(api::locks).post(api::add_lock))
        .route("/web/api/locks/{name}", delete(api::remove_lock))
        .route("/web/api/audit", get(api::audit))
        .route("/web/api/audit/verify", get(api::verify_audit))
        .route("/web/api/audit/tail", get(tail::tail))
        .route("/web/api/cas", get(cas::cas))
        .route("/web/api/overview", get(overview::overview))
        .route("/web/api/tokens", get(tokens::list).post(tokens::create))
        .route("/web/api/tokens/{name}", delete(tokens::remove))
        .route("/web/api/token-test", post(tokens::test))
        .route("/web/api/workload-identities", get(workload::list))
        .route("/web/api/workload-identities/test", post(workload::test))
        .route("/web/api/{*rest}", get(api_not_found).post(api_not_found))
        .route("/web/{*rest}", get(page_not_found))
        .layer(middleware::from_fn(strict_headers))
        .with_state(state)
}

/// Headers on every console response, errors included.
async fn strict_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The console is served over HTTPS only; no other site's window may hold
    // a reference to a console page (a login-CSRF lever), nor embed its responses.
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn html(body: &'static str) -> Response {
    asset(body, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A console page: the app for a live session, else the login page.
async fn page(
    axum::extract::State(state): axum::extract::State<SharedState>,
    req: Request,
) -> Response {
    match session_of(&state, req.headers()).await {
        Some(_) => html(APP_HTML),
        None => Redirect::to("/web/login").into_response(),
    }
}

async fn page_not_found(
    axum::extract::State(state): axum::extract::State<SharedState>,
    req: Request,
) -> Response {
    match session_of(&state, req.headers()).await {
        Some(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        None => Redirect::to("/web/login").into_response(),
    }
}

async fn api_not_found(
    axum::extract::State(state): axum::extract::State<SharedState>,
    req: Request,
) -> Response {
    match session_of(&state, req.headers()).await {
        Some(_) => context::error(StatusCode::NOT_FOUND, "no such API call"),
        None => context::error(StatusCode::UNAUTHORIZED, "log in first"),
    }
}
