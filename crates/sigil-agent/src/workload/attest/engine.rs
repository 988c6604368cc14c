//! `GET /containers/<id>/json` on a container engine's Unix socket (the
//! Docker API; Podman serves the same compatible endpoint).

use std::path::Path;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Inspect answers are a few KiB; bound what a misbehaving engine can send.
const MAX_BODY: usize = 4 << 20;

/// What we take from an inspect answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Inspect {
    /// `Config.Image`: the image reference the container was created from.
    pub image: Option<String>,
    /// `Image`: the image id (`sha256:...`).
    pub image_id: Option<String>,
    /// `Config.Labels` whose keys are plain (see [`plain_label_key`]).
    pub labels: Vec<(String, String)>,
}

/// Ask the engine at `socket` about container `id` (64 hex digits, checked
/// by the caller, so it is safe in a path). The caller bounds the time.
pub(super) async fn inspect(socket: &Path, id: &str) -> anyhow::Result<Inspect> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .context("connecting to the engine socket")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task is aborted when we are done or time out.
    let driver = AbortOnDrop(tokio::spawn(conn));
    let req = http::Request::get(format!("/containers/{id}/json"))
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::OK {
        bail!("the engine answered {}", resp.status());
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the engine's answer: {e}"))?
        .to_bytes();
    drop(driver);
    parse(&body)
}

/// Pull image, image id and labels out of an inspect document.
pub(super) fn parse(body: &[u8]) -> anyhow::Result<Inspect> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the engine's answer is not JSON")?;
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let labels = v["Config"]["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| plain_label_key(k))
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Inspect {
        image: text(&v["Config"]["Image"]),
        image_id: text(&v["Image"]),
        labels,
    })
}

/// Label keys become attribute names, so only `[A-Za-z0-9_.-/]` is kept.
pub(super) fn plain_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_are_filtered() {
        for ok in ["com.example/app", "a_b-c.d", "A9"] {
            assert!(plain_label_key(ok), "{ok}");
        }
        for bad in ["", "a b", "a=b", "é", "a\nb", "a:b"] {
            assert!(!plain_label_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn missing_fields_are_absent() {
        let got = parse(br#"{"Config":{"Labels":null}}"#).expect("json");
        assert_eq!(got, Inspect::default());
        assert!(parse(b"<html>").is_err());
    }
}
