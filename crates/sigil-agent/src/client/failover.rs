//! The agent's channel to the auth service: a tonic [`Channel`] whose
//! connections go through [`Servers::connect`], so connection failures
//! (refused, TLS, timeouts) move to the next server within the same call,
//! and which watches the answers: a server that answers `Unavailable`
//! (e.g. it lost its database) or lets a call time out is marked down and the
//! channel moves to a new connection, which the rotation puts on another
//! server. Any other status — a denial included — is an answer and changes
//! nothing. A server whose answer the agent itself refuses (it failed the audit
//! witness check: its log is behind what the agent saw) is marked down the same
//! way through [`AuthChannel::refuse_server`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use super::dial::{Dialled, Servers};

/// A whole call (up to the response headers) on one server.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Build a channel over `servers` with this TLS config. Lazy: nothing is
/// dialled before the first call; a broken connection is redialled on the
/// next call, starting from the server in use.
pub fn plain_channel(
    servers: &Servers,
    tls: TlsConnector,
    on: Arc<Mutex<Option<Dialled>>>,
) -> Channel {
    // The URI is only the `:authority` of requests; the connector decides
    // where to connect.
    let uri = format!("http://{}", servers.addrs()[0]);
    let endpoint = Endpoint::from_shared(uri)
        .unwrap_or_else(|_| Endpoint::from_static("http://auth.sigil.invalid"))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true);
    let servers = servers.clone();
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
        let servers = servers.clone();
        let tls = tls.clone();
        let on = on.clone();
        async move {
            let (d, conn) = servers.connect(&tls).await?;
            *on.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(conn))
        }
    }))
}

/// One connection generation: replaced when its server fails an answer.
struct Generation {
    id: u64,
    channel: Channel,
    /// The server its current connection goes to.
    on: Arc<Mutex<Option<Dialled>>>,
}

struct Shared {
    servers: Servers,
    tls: TlsConnector,
    current: Mutex<Generation>,
}

impl Shared {
    fn generation(&self) -> std::sync::MutexGuard<'_, Generation> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server behind generation `id` failed a call: mark it down and
    /// start a new connection (once, however many calls saw it fail).
    fn server_failed(&self, id: u64, why: &str) {
        let mut g = self.generation();
        if g.id != id {
            return;
        }
        let on = g.on.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(d) = on {
            self.servers.mark_down(&d, why);
        }
        let on = Arc::new(Mutex::new(None));
        *g = Generation {
            id: id.wrapping_add(1),
            channel: plain_channel(&self.servers, self.tls.clone(), on.clone()),
            on,
        };
    }
}

/// A channel that fails over between the auth servers (see the module doc).
pub struct AuthChannel {
    shared: Arc<Shared>,
    /// The generation and channel `poll_ready` reserved a slot on.
    ready: Option<(u64, Channel)>,
}

impl Clone for AuthChannel {
    fn clone(&self) -> Self {
        // A reservation belongs to the handle that made it.
        AuthChannel {
            shared: self.shared.clone(),
            ready: None,
        }
    }
}

impl AuthChannel {
    pub fn new(servers: &Servers, tls: TlsConnector) -> AuthChannel {
        let on = Arc::new(Mutex::new(None));
        let channel = plain_channel(servers, tls.clone(), on.clone());
        AuthChannel {
            shared: Arc::new(Shared {
                servers: servers.clone(),
                tls,
                current: Mutex::new(Generation { id: 0, channel, on }),
            }),
            ready: None,
        }
    }
}

impl AuthChannel {
    /// The server this channel's connection goes to answered, but the answer
    /// must not be used (e.g. its audit checkpoint is behind what this agent
    /// witnessed): skip it for a while, like a server that failed, so the next
    /// attempt dials another. `why` is logged: name the check, never a secret.
    pub fn refuse_server(&self, why: &str) {
        let id = self.shared.generation().id;
        self.shared.server_failed(id, why);
    }
}

/// Why an answer means the server is not serving, or None for an answer.
fn failure_of(result: &Result<http::Response<Body>, tonic::transport::Error>) -> Option<String> {
    match result {
        Ok(resp) => {
            let status = tonic::Status::from_header_map(resp.headers())?;
            (status.code() == tonic::Code::Unavailable)
                .then(|| format!("answered Unavailable: {}", status.message()))
        }
        Err(e) => {
            // Connection failures were handled (and logged) while
            // connecting; only a call that timed out is left to catch.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
            while let Some(s) = source {
                if s.is::<tonic::TimeoutExpired>() {
                    return Some(format!("no answer within {CALL_TIMEOUT:?}"));
                }
                source = s.source();
            }
            None
        }
    }
}

impl Service<http::Request<Body>> for AuthChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let (_, channel) = self.ready.get_or_insert_with(|| {
            let g = self.shared.generation();
            (g.id, g.channel.clone())
        });
        channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some((id, mut channel)) = self.ready.take() else {
            return Box::pin(async { Err("AuthChannel called before poll_ready".into()) });
        };
        let shared = self.shared.clone();
        let call = channel.call(req);
        Box::pin(async move {
            let result = call.await;
            if let Some(why) = failure_of(&result) {
                shared.server_failed(id, &why);
            }
            result.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        status: Option<tonic::Code>,
    ) -> Result<http::Response<Body>, tonic::transport::Error> {
        let mut resp = http::Response::new(Body::empty());
        if let Some(code) = status {
            let s = tonic::Status::new(code, "why");
            s.add_header(resp.headers_mut()).expect("headers");
        }
        Ok(resp)
    }

    #[test]
    fn only_unavailable_answers_mean_the_server_is_down() {
        assert!(
            failure_of(&answer(Some(tonic::Code::Unavailable)))
                .is_some_and(|w| w.contains("Unavailable: why"))
        );
        for denial in [
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
            tonic::Code::NotFound,
            tonic::Code::Ok,
        ] {
            assert_eq!(failure_of(&answer(Some(denial))), None, "{denial:?}");
        }
        assert_eq!(failure_of(&answer(None)), None, "a streaming answer");
    }
}
