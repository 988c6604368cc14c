//! Fault injection (cargo feature `fault-injection`, test builds only): the
//! agent aborts — no cleanup, no flush, as if the machine lost power — at a
//! named point of a join or renewal, so the end-to-end tests can prove that a
//! restarted agent recovers from each one without a false theft lockout.
//!
//! `SIGIL_AGENT_FAULT=<point>` aborts the first time the point is reached;
//! `<point>@<n>` the n-th time (a join reads several server messages). Without
//! the feature the `fault_point!` calls expand to nothing.

use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable naming the point to abort at.
pub const ENV: &str = "SIGIL_AGENT_FAULT";

/// Every point, in the order a join or renewal passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The join's TLS key is persisted as the pending key; nothing sent yet.
    JoinBeforeSend,
    /// A join message was sent and the server's next message (a challenge,
    /// or the result) may be on its way: the agent waits briefly, so the
    /// server can commit, then aborts without reading it. Reached before
    /// each server message: `@2` is the result of a one-challenge join.
    JoinAfterSend,
    /// bound_keypair rotation: the new key is persisted, the answer not sent.
    JoinAfterRotationKey,
    /// The result was read; nothing of it persisted.
    JoinAfterAnswer,
    /// bound_keypair: the new bound key is in place, the join state not yet.
    JoinAfterBoundKey,
    /// The method's state (bound_keypair's key and join state) is persisted;
    /// the credential is not.
    JoinAfterMethodState,
    /// The credential is saved; the pending key is not yet removed.
    JoinAfterCredential,
    /// The renewal's next key is persisted; nothing sent yet.
    RenewBeforeSend,
    /// The renewal was sent; its answer (if it came) is never read.
    RenewAfterSend,
    /// The renewal's answer was read; nothing of it persisted.
    RenewAfterAnswer,
    /// The renewed credential is saved; the pending key is not yet removed.
    RenewAfterCredential,
}

impl Point {
    pub const ALL: [Point; 11] = [
        Point::JoinBeforeSend,
        Point::JoinAfterSend,
        Point::JoinAfterRotationKey,
        Point::JoinAfterAnswer,
        Point::JoinAfterBoundKey,
        Point::JoinAfterMethodState,
        Point::JoinAfterCredential,
        Point::RenewBeforeSend,
        Point::RenewAfterSend,
        Point::RenewAfterAnswer,
        Point::RenewAfterCredential,
    ];

    /// The name `SIGIL_AGENT_FAULT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Point::JoinBeforeSend => "join.before_send",
            Point::JoinAfterSend => "join.after_send",
            Point::JoinAfterRotationKey => "join.after_rotation_key",
            Point::JoinAfterAnswer => "join.after_answer",
            Point::JoinAfterBoundKey => "join.after_bound_key",
            Point::JoinAfterMethodState => "join.after_method_state",
            Point::JoinAfterCredential => "join.after_credential",
            Point::RenewBeforeSend => "renew.before_send",
            Point::RenewAfterSend => "renew.after_send",
            Point::RenewAfterAnswer => "renew.after_answer",
            Point::RenewAfterCredential => "renew.after_credential",
        }
    }

    fn index(self) -> usize {
        Point::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

static HITS: [AtomicU32; 11] = [const { AtomicU32::new(0) }; 11];

/// The configured point and occurrence, if the variable names a known point.
fn configured() -> Option<(Point, u32)> {
    let v = std::env::var(ENV).ok()?;
    let (name, nth) = match v.split_once('@') {
        Some((n, k)) => (n, k.parse().ok()?),
        None => (v.as_str(), 1),
    };
    Point::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .map(|p| (p, nth))
}

/// Whether this passage of `p` is the one to abort at (counts the passage).
pub fn armed(p: Point) -> bool {
    let Some((want, nth)) = configured() else {
        return false;
    };
    let n = HITS[p.index()].fetch_add(1, Ordering::SeqCst) + 1;
    want == p && n == nth
}

/// Abort the process, as a crash would.
pub fn crash(p: Point) -> ! {
    eprintln!("{ENV}: aborting at {}", p.name());
    std::process::abort()
}

/// Abort at `p` if it is the configured point.
pub fn hit(p: Point) {
    if armed(p) {
        crash(p);
    }
}

/// At `p`, if armed: let `answer` (a call whose request is sent) run for a
/// moment so the server can commit, then abort without using what it returned.
pub async fn lose_answer<F: std::future::Future>(p: Point, answer: F) {
    if armed(p) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), answer).await;
        crash(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_has_a_distinct_name() {
        let mut names: Vec<_> = Point::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Point::ALL.len());
        for (i, p) in Point::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }
}
