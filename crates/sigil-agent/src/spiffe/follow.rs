//! Response streams that follow an entry and the trust view: the full state
//! at once, then again whenever what the caller would receive changes.
//!
//! The stream is driven by the HTTP/2 layer polling it, not by a task of its
//! own: a workload with an open stream costs no task and no channel (with
//! 1,000 open streams that was ≈ 5 MB; benches/README.md), and a stream
//! whose client stops reading is simply not polled. It remembers only a
//! digest of what it last sent, not the message.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use super::runtime::{Entry, EntryState, Issued, Runtime, TrustView};

pub type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Build a stream over `entry` (none for bundle-only streams) and the trust
/// view. `build` turns the current state into a message, or into the error
/// that ends the stream (a lock, a denial). The first message is built here,
/// so an error at once is the call's error rather than a stream item.
pub fn follow<T, F>(rt: &Runtime, entry: Option<&Entry>, build: F) -> Result<RespStream<T>, Status>
where
    T: prost::Message + Send + 'static,
    F: Fn(Option<&Issued>, &TrustView) -> Result<T, Status> + Send + 'static,
{
    // Subscribed before the first state is read, so no change in between is missed.
    let mut follower = Follower {
        trust: rt.subscribe_trust(),
        state: entry.map(Entry::subscribe),
        build,
        last: None,
    };
    let first = follower.current()?;
    let rest = futures::stream::unfold(Some(follower), |follower| async move {
        let mut f = follower?;
        loop {
            if !f.changed().await {
                return None;
            }
            match f.current() {
                Ok(None) => continue,
                Ok(Some(next)) => return Some((Ok(next), Some(f))),
                Err(e) => return Some((Err(e), None)),
            }
        }
    });
    Ok(match first {
        Some(m) => Box::pin(futures::stream::once(async { Ok(m) }).chain(rest)),
        // Nothing issued yet: the first message comes when it is.
        None => Box::pin(rest),
    })
}

struct Follower<F> {
    trust: watch::Receiver<Arc<TrustView>>,
    state: Option<watch::Receiver<EntryState>>,
    build: F,
    /// SHA-256 of the last message sent.
    last: Option<[u8; 32]>,
}

impl<F> Follower<F> {
    /// The message to send now: `None` when it would repeat the last one or
    /// nothing is issued yet; an error ends the stream.
    fn current<T>(&mut self) -> Result<Option<T>, Status>
    where
        T: prost::Message,
        F: Fn(Option<&Issued>, &TrustView) -> Result<T, Status>,
    {
        let view = self.trust.borrow_and_update().clone();
        let issued = match &mut self.state {
            None => None,
            Some(s) => match &*s.borrow_and_update() {
                EntryState::Ready(i) => Some(i.clone()),
                EntryState::Empty => return Ok(None),
                EntryState::Denied(msg, _) => return Err(Status::permission_denied(msg.clone())),
            },
        };
        let next = (self.build)(issued.as_deref(), &view)?;
        let digest = message_digest(&next);
        if self.last == Some(digest) {
            return Ok(None);
        }
        self.last = Some(digest);
        Ok(Some(next))
    }

    /// Wait for the trust view or the entry to change; false once either
    /// sender is gone (the agent is shutting down).
    async fn changed(&mut self) -> bool {
        let trust = &mut self.trust;
        let state = &mut self.state;
        tokio::select! {
            r = trust.changed() => r.is_ok(),
            r = async {
                match state.as_mut() {
                    Some(s) => s.changed().await,
                    None => std::future::pending().await,
                }
            } => r.is_ok(),
        }
    }
}

/// SHA-256 of a message's encoding. Map fields encode in iteration order, so
/// equal maps of several entries may differ here: at worst a repeat is sent.
fn message_digest<T: prost::Message>(m: &T) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &m.encode_to_vec());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::workload::X509BundlesResponse;
    use std::time::Duration;

    fn bundles(b: &[u8]) -> X509BundlesResponse {
        X509BundlesResponse {
            crl: vec![],
            bundles: [("spiffe://example.test".to_string(), b.to_vec())].into(),
        }
    }

    #[test]
    fn digest_tells_messages_apart() {
        assert_eq!(
            message_digest(&bundles(b"a")),
            message_digest(&bundles(b"a"))
        );
        assert_ne!(
            message_digest(&bundles(b"a")),
            message_digest(&bundles(b"b"))
        );
    }

    #[tokio::test]
    async fn sends_state_then_changes_only_and_ends_on_error() {
        let rt = Runtime::new("example.test".into(), watch::channel(None).1);
        rt.update_trust(|v| v.bundle_der = b"first".to_vec());
        let mut s = follow(&rt, None, |_, v| match &v.locked {
            Some(msg) => Err(Status::permission_denied(msg.clone())),
            None => Ok(bundles(&v.bundle_der)),
        })
        .expect("first state");
        assert_eq!(
            s.next().await.expect("item").expect("ok"),
            bundles(b"first")
        );

        // A change that leaves the message as it was sends nothing.
        rt.update_trust(|v| v.policy_revision += 1);
        let quiet = tokio::time::timeout(Duration::from_millis(200), s.next()).await;
        assert!(quiet.is_err(), "an unchanged message was sent again");

        rt.update_trust(|v| v.bundle_der = b"second".to_vec());
        assert_eq!(
            s.next().await.expect("item").expect("ok"),
            bundles(b"second")
        );

        rt.update_trust(|v| v.locked = Some("locked by test".into()));
        let err = s.next().await.expect("item").expect_err("locked");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(err.message(), "locked by test");
        assert!(s.next().await.is_none(), "the stream ends after an error");
    }

    #[tokio::test]
    async fn an_error_at_once_is_the_call_error() {
        let rt = Runtime::new("example.test".into(), watch::channel(None).1);
        let r = follow(&rt, None, |_, _| -> Result<X509BundlesResponse, Status> {
            Err(Status::unavailable("no trust bundle yet"))
        });
        assert_eq!(r.err().map(|e| e.code()), Some(tonic::Code::Unavailable));
    }

    #[tokio::test]
    async fn ends_when_the_runtime_is_gone() {
        let rt = Runtime::new("example.test".into(), watch::channel(None).1);
        let mut s = follow(&rt, None, |_, v| Ok(bundles(&v.bundle_der))).expect("first");
        assert!(s.next().await.is_some());
        drop(rt);
        assert!(s.next().await.is_none());
    }
}
