//! What the proxy knows from the auth service, and its per-request decisions.
//!
//! `WatchAppAccess` gives the apps and client CAs and a `generation` that
//! moves on every policy, lock or CA change. A decision from `AuthorizeApp`
//! is reused only while the generation it was made under is current, so a
//! removed role or a new lock takes effect with the push (milliseconds);
//! a decision is never cached for a connection's life.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use sigil_agent::client::AuthChannel;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::{AppAccessState, AuthorizeAppRequest, WatchAppAccessRequest};
use sigil_types::App;
use tokio::sync::watch;

/// Re-sign an app JWT this long before it expires.
const JWT_REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// How long a decision is reused without a change pushed. Pushes cover
/// roles, bots, locks and CAs; what they do not (a bot instance removed, an
/// agent credential superseded by a renewal) takes effect within this.
const DECISION_MAX_AGE: Duration = Duration::from_secs(5);

/// A caller allowed to reach an app.
#[derive(Clone, Debug)]
pub struct Allowed {
    pub bot: String,
    pub instance: String,
    pub roles: Vec<String>,
    /// The caller's X.509-SVID's SPIFFE ID ("" for a Sigil identity).
    pub spiffe_id: String,
}

/// A connection's last allowed decision and its JWT header, reused while
/// `generation` is current and until `until` (see [`Access::authorize`]).
pub struct Memo {
    app: String,
    generation: u64,
    until: Instant,
    allowed: Arc<Allowed>,
    jwt: HeaderValue,
}

/// A request's authorisation: allowed with the JWT header to send, or not.
pub enum Authorized {
    Allow(Arc<Allowed>, HeaderValue),
    /// Refused; the reason is for the audit log only.
    Deny {
        bot: String,
        instance: String,
        spiffe_id: String,
        reason: String,
    },
}

/// Marks an error as the JWT's (signing failed), not the decision's.
#[derive(Debug)]
pub struct JwtFailed;

impl std::fmt::Display for JwtFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("signing the app JWT")
    }
}

/// The decision for one request.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow(Arc<Allowed>),
    /// Refused; the reason is for the audit log only.
    Deny {
        bot: String,
        instance: String,
        spiffe_id: String,
        reason: String,
    },
}

/// Whether a failed call was the auth service refusing (the caller's
/// certificate, or the proxy's right to serve the app), not a failure to
/// reach it: a connection re-checked with such an answer is closed.
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<tonic::Status>())
        .is_some_and(|s| {
            matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound
            )
        })
}

/// The current apps, CAs and generation.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// Whether the stream is up (changes are pushed): only then are decisions cached.
    pub live: bool,
    /// By lowercase `public_addr`.
    pub apps: HashMap<String, Arc<App>>,
    pub client_ca_pem: String,
}

type Key = (Arc<[u8]>, String);

/// Shared by every connection.
pub struct Access {
    client: watch::Receiver<Option<AuthServiceClient<AuthChannel>>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    decisions: Mutex<HashMap<Key, (u64, Instant, Decision)>>,
    jwts: Mutex<HashMap<Key, (u64, Instant, String)>>,
}

impl Access {
    pub fn new(client: watch::Receiver<Option<AuthServiceClient<AuthChannel>>>) -> Arc<Access> {
        Arc::new(Access {
            client,
            snapshot: watch::channel(Arc::new(Snapshot::default())).0,
            decisions: Mutex::default(),
            jwts: Mutex::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    fn auth_client(&self) -> anyhow::Result<AuthServiceClient<AuthChannel>> {
        self.client
            .borrow()
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the proxy has not joined yet"))
    }

    /// Follow `WatchAppAccess` for the proxy's life (reconnecting).
    pub async fn follow(self: Arc<Self>) {
        let mut client_rx = self.client.clone();
        let mut failures: u32 = 0;
        loop {
            let Some(mut c) = client_rx.borrow_and_update().clone() else {
                if client_rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match c.watch_app_access(WatchAppAccessRequest {}).await {
                Ok(s) => {
                    failures = 0;
                    let mut stream = s.into_inner();
                    loop {
                        tokio::select! {
                            m = stream.message() => match m {
                                Ok(Some(state)) => self.apply(state),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(error = %e.message(), "app access stream ended");
                                    break;
                                }
                            },
                            // A renewed identity: reopen with it.
                            r = client_rx.changed() => if r.is_err() { return } else { break },
                        }
                    }
                    // Fail closed while reconnecting: nothing decided under the old stream stands.
                    self.invalidate();
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e.message(), "app access refused; retrying");
                    self.invalidate();
                    let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The stream is down: nothing cached stands, and nothing is cached
    /// until it is back (each request asks the auth service).
    fn invalidate(&self) {
        self.clear_caches();
        self.snapshot.send_modify(|s| {
            *s = Arc::new(Snapshot {
                generation: s.generation + 1,
                live: false,
                apps: s.apps.clone(),
                client_ca_pem: s.client_ca_pem.clone(),
            });
        });
    }

    /// Decisions, and JWTs (they name the caller's roles), end with any change.
    fn clear_caches(&self) {
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.jwts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn apply(&self, state: AppAccessState) {
        let mut apps = HashMap::new();
        for j in &state.apps_json {
            match serde_json::from_str::<App>(j) {
                Ok(a) => {
                    apps.insert(a.spec.public_addr.to_ascii_lowercase(), Arc::new(a));
                }
                Err(e) => tracing::error!(error = %e, "undecodable app from the auth service"),
            }
        }
        let generation = self.snapshot().generation + 1;
        self.clear_caches();
        self.snapshot.send_replace(Arc::new(Snapshot {
            generation,
            live: true,
            apps,
            client_ca_pem: state.client_ca_pem,
        }));
    }

    /// The decision for `cert` on `app` under the current generation.
    pub async fn decide(&self, cert: &Arc<[u8]>, app: &App) -> anyhow::Result<Decision> {
        Ok(self.decide_reusable(cert, app).await?.0)
    }

    /// The decision, and (generation, when made) if it may be reused under
    /// that generation for `DECISION_MAX_AGE` from then.
    async fn decide_reusable(
        &self,
        cert: &Arc<[u8]>,
        app: &App,
    ) -> anyhow::Result<(Decision, Option<(u64, Instant)>)> {
        let snap = self.snapshot();
        let (generation, live) = (snap.generation, snap.live);
        let key: Key = (cert.clone(), app.metadata.name.clone());
        if let Some((g, at, d)) = self
            .decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *g == generation
            && at.elapsed() < DECISION_MAX_AGE
        {
            return Ok((d.clone(), Some((*g, *at))));
        }
        let r = self
            .auth_client()?
            .authorize_app(AuthorizeAppRequest {
                app: app.metadata.name.clone(),
                caller_cert_der: cert.to_vec(),
            })
            .await
            .map_err(|e| anyhow::Error::new(e).context("AuthorizeApp"))?
            .into_inner();
        let d = if r.allowed {
            Decision::Allow(Arc::new(Allowed {
                bot: r.bot,
                instance: r.instance,
                roles: r.roles,
                spiffe_id: r.spiffe_id,
            }))
        } else {
            Decision::Deny {
                bot: r.bot,
                instance: r.instance,
                spiffe_id: r.spiffe_id,
                reason: r.reason,
            }
        };
        // Only under the generation read before asking: a change during the
        // call leaves this entry stale at once.
        if live {
            let at = Instant::now();
            let mut map = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 100_000 {
                map.clear();
            }
            map.insert(key, (generation, at, d.clone()));
            return Ok((d, Some((generation, at))));
        }
        Ok((d, None))
    }

    /// The caller's decision and JWT header for `app`, from the connection's
    /// memo while the generation it was made under is current and neither
    /// has aged out — the same rule as the shared caches, without hashing
    /// the certificate or signing, parsing or copying anything per request.
    pub async fn authorize(
        &self,
        cert: &Arc<[u8]>,
        app: &App,
        generation: u64,
        memo: &Mutex<Option<Memo>>,
    ) -> anyhow::Result<Authorized> {
        if let Some(m) = memo.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && m.generation == generation
            && m.app == app.metadata.name
            && Instant::now() < m.until
        {
            return Ok(Authorized::Allow(m.allowed.clone(), m.jwt.clone()));
        }
        let (allowed, decided) = match self.decide_reusable(cert, app).await? {
            (Decision::Allow(a), d) => (a, d),
            (
                Decision::Deny {
                    bot,
                    instance,
                    spiffe_id,
                    reason,
                },
                _,
            ) => {
                return Ok(Authorized::Deny {
                    bot,
                    instance,
                    spiffe_id,
                    reason,
                });
            }
        };
        let (token, signed) = self
            .jwt_reusable(cert, app)
            .await
            .map_err(|e| e.context(JwtFailed))?;
        let mut jwt = HeaderValue::from_str(&token)
            .map_err(|e| anyhow::anyhow!("the app JWT is not a header value: {e}"))
            .map_err(|e| e.context(JwtFailed))?;
        jwt.set_sensitive(true);
        // Both reusable under one generation: memoised until the earlier end.
        if let (Some((g, at)), Some((jg, jwt_until))) = (decided, signed)
            && g == jg
        {
            *memo.lock().unwrap_or_else(|p| p.into_inner()) = Some(Memo {
                app: app.metadata.name.clone(),
                generation: g,
                until: (at + DECISION_MAX_AGE).min(jwt_until),
                allowed: allowed.clone(),
                jwt: jwt.clone(),
            });
        }
        Ok(Authorized::Allow(allowed, jwt))
    }

    /// The JWT for `cert` on `app`, signed anew near its expiry and after
    /// any change (it names the caller's roles); with (generation, until
    /// when) if it may be reused.
    async fn jwt_reusable(
        &self,
        cert: &Arc<[u8]>,
        app: &App,
    ) -> anyhow::Result<(String, Option<(u64, Instant)>)> {
        let snap = self.snapshot();
        let (generation, live) = (snap.generation, snap.live);
        let key: Key = (cert.clone(), app.metadata.name.clone());
        if let Some((g, until, t)) = self
            .jwts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *g == generation
            && Instant::now() < *until
        {
            return Ok((t.clone(), Some((*g, *until))));
        }
        let r = self
            .auth_client()?
            .sign_app_jwt(AuthorizeAppRequest {
                app: app.metadata.name.clone(),
                caller_cert_der: cert.to_vec(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("SignAppJwt: {}", e.message()))?
            .into_inner();
        let left = r.expires_unix - time::OffsetDateTime::now_utc().unix_timestamp();
        let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
        let until = Instant::now() + left.saturating_sub(JWT_REFRESH_BEFORE);
        if live {
            let mut map = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 100_000 {
                map.clear();
            }
            map.insert(key, (generation, until, r.token.clone()));
            return Ok((r.token, Some((generation, until))));
        }
        Ok((r.token, None))
    }

    /// The client for audit reports.
    pub fn reporter_client(&self) -> Option<AuthServiceClient<AuthChannel>> {
        self.client.borrow().clone()
    }
}

/// `host:port` or `[v6]:port` → host.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_close_a_rechecked_connection() {
        let call = |s: tonic::Status| anyhow::Error::new(s).context("AuthorizeApp");
        for s in [
            tonic::Status::invalid_argument("caller_cert_der: not a Sigil identity"),
            tonic::Status::permission_denied("bot may not serve app"),
            tonic::Status::unauthenticated("superseded"),
        ] {
            assert!(is_refusal(&call(s)));
        }
        for s in [
            tonic::Status::unavailable("transport error"),
            tonic::Status::deadline_exceeded("timeout"),
            tonic::Status::internal("h2 protocol error"),
        ] {
            assert!(!is_refusal(&call(s)));
        }
        assert!(!is_refusal(&anyhow::anyhow!(
            "the proxy has not joined yet"
        )));
    }
}
