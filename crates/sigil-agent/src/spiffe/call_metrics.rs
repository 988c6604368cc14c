//! A tower layer timing every Workload API and SDS call by method and
//! counting it by gRPC status. A call ends, for this count, when its response
//! headers are ready: a unary call's answer, or a stream opened with its
//! first message computed (an error before that is a trailers-only response,
//! whose `grpc-status` is in the headers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::telemetry::{WORKLOAD_API_CALLS, WORKLOAD_API_DURATION, WORKLOAD_API_METHODS};

#[derive(Clone, Copy, Default)]
pub struct CallMetricsLayer;

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> CallMetrics<S> {
        CallMetrics { inner }
    }
}

#[derive(Clone)]
pub struct CallMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| code_label(v.as_bytes()))
                    .unwrap_or("ok"),
                Err(_) => "transport_error",
            };
            metrics::histogram!(WORKLOAD_API_DURATION, "method" => method)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(WORKLOAD_API_CALLS, "method" => method, "code" => code).increment(1);
            r
        })
    }
}

/// The method's label; any other path is `other` (the label set stays bounded).
fn method_label(path: &str) -> &'static str {
    WORKLOAD_API_METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, m)| *m)
        .unwrap_or("other")
}

/// gRPC status codes by number, as Prometheus labels.
fn code_label(v: &[u8]) -> &'static str {
    const NAMES: [&str; 17] = [
        "ok",
        "cancelled",
        "unknown",
        "invalid_argument",
        "deadline_exceeded",
        "not_found",
        "already_exists",
        "permission_denied",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "data_loss",
        "unauthenticated",
    ];
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| NAMES.get(n).copied())
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::{code_label, method_label};

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/SpiffeWorkloadAPI/FetchX509SVID"),
            "FetchX509SVID"
        );
        assert_eq!(method_label("/SpiffeWorkloadAPI/Nope"), "other");
        assert_eq!(code_label(b"7"), "permission_denied");
        assert_eq!(code_label(b"0"), "ok");
        assert_eq!(code_label(b"99"), "unknown");
        assert_eq!(code_label(b"x"), "unknown");
    }
}
