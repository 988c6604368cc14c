//! Which auth server to try next: the pure logic of failover, with no I/O.
//! The caller passes the time and the randomness, so it is deterministic
//! under test.
//!
//! - Servers are tried in the configured order, starting from the one in
//!   use: a client sticks to a server that works and does not drift back to
//!   the first one.
//! - A server that fails (refused, TLS failure, timeout, `Unavailable`) is
//!   skipped until its backoff ends: exponential from `base`, capped, and
//!   jittered to 50–100% so a fleet does not retry in step.
//! - When every server is backing off, the one whose backoff ends first is
//!   tried (only that one): the caller's own retry delay paces the attempts,
//!   and a server dead for long is asked less and less often.
//! - A success clears that server's failures; a denial never reaches here
//!   (it is an answer, not an outage).

use std::time::{Duration, Instant};

/// Exponential backoff for one server.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The default of agents and the CLI: 1 s, doubling, at most 1 minute.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };

    /// The pause after `failures` (≥ 1) failures in a row; `jitter` in
    /// [0, 1) picks a point in the upper half of the window.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.cap);
        exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[derive(Clone, Debug)]
struct Health {
    failures: u32,
    retry_at: Instant,
}

/// The rotation over the servers of one process (shared by its channels).
#[derive(Debug)]
pub struct Rotation<K> {
    policy: Backoff,
    /// The servers as last resolved, in configured order.
    candidates: Vec<K>,
    current: Option<K>,
    /// Failures of servers not healthy now; a handful of entries at most.
    health: Vec<(K, Health)>,
}

impl<K: Clone + PartialEq> Rotation<K> {
    pub fn new(policy: Backoff) -> Self {
        Rotation {
            policy,
            candidates: Vec::new(),
            current: None,
            health: Vec::new(),
        }
    }

    /// The servers to choose from now (DNS may have changed them). Servers
    /// no longer listed are forgotten.
    pub fn set_candidates(&mut self, candidates: Vec<K>) {
        self.health.retain(|(k, _)| candidates.contains(k));
        self.candidates = candidates;
    }

    /// The server that last worked.
    pub fn current(&self) -> Option<&K> {
        self.current.as_ref()
    }

    fn health(&self, k: &K) -> Option<&Health> {
        self.health.iter().find(|(h, _)| h == k).map(|(_, h)| h)
    }

    fn ready(&self, k: &K, now: Instant) -> bool {
        self.health(k).is_none_or(|h| h.retry_at <= now)
    }

    /// Candidates in preference order: from the one in use, then the ones
    /// after it in the configured order, wrapping round.
    fn preference(&self) -> impl Iterator<Item = &K> {
        let start = self
            .current
            .as_ref()
            .and_then(|c| self.candidates.iter().position(|k| k == c))
            .unwrap_or(0);
        self.candidates[start..]
            .iter()
            .chain(&self.candidates[..start])
    }

    /// What to dial now, in order: every server not backing off; if all
    /// are, the one whose backoff ends first.
    pub fn attempts(&self, now: Instant) -> Vec<K> {
        let ready: Vec<K> = self
            .preference()
            .filter(|k| self.ready(k, now))
            .cloned()
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        self.preference()
            .filter_map(|k| self.health(k).map(|h| (k, h.retry_at)))
            .min_by_key(|(_, at)| *at)
            .map(|(k, _)| vec![k.clone()])
            .unwrap_or_default()
    }

    /// Whether some server other than `k` could be tried right now.
    pub fn another_ready(&self, k: Option<&K>, now: Instant) -> bool {
        self.candidates
            .iter()
            .any(|c| Some(c) != k && self.ready(c, now))
    }

    /// `k` worked. Returns the server used before when this is a change
    /// (`Some(None)` for the first server a process uses).
    pub fn succeeded(&mut self, k: &K) -> Option<Option<K>> {
        self.health.retain(|(h, _)| h != k);
        if self.current.as_ref() == Some(k) {
            return None;
        }
        Some(self.current.replace(k.clone()))
    }

    /// `k` failed at `now`; `jitter` in [0, 1). Returns how long it is
    /// skipped.
    pub fn failed(&mut self, k: &K, now: Instant, jitter: f64) -> Duration {
        let failures = self.health(k).map_or(0, |h| h.failures).saturating_add(1);
        let wait = self.policy.delay(failures, jitter);
        let h = Health {
            failures,
            retry_at: now + wait,
        };
        match self.health.iter_mut().find(|(x, _)| x == k) {
            Some((_, old)) => *old = h,
            None => self.health.push((k.clone(), h)),
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn rotation(names: &[&'static str]) -> Rotation<&'static str> {
        let mut r = Rotation::new(Backoff::DEFAULT);
        r.set_candidates(names.to_vec());
        r
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_to_the_upper_half() {
        let b = Backoff::DEFAULT;
        assert_eq!(b.delay(1, 0.999_999).as_millis(), 999);
        assert_eq!(b.delay(1, 0.0), S / 2);
        assert_eq!(b.delay(2, 0.0), S);
        assert_eq!(b.delay(3, 0.0), 2 * S);
        assert_eq!(b.delay(7, 0.0), 30 * S);
        assert_eq!(b.delay(8, 0.0), 30 * S, "capped at 60 s before jitter");
        assert_eq!(b.delay(1000, 0.5), 45 * S, "no overflow");
        assert_eq!(b.delay(1, 7.0), S, "jitter clamped");
    }

    #[test]
    fn tries_in_order_and_sticks_to_the_one_that_works() {
        let t0 = Instant::now();
        let mut r = rotation(&["a", "b", "c"]);
        assert_eq!(r.attempts(t0), ["a", "b", "c"]);
        assert_eq!(r.failed(&"a", t0, 0.0), S / 2);
        // a backs off: b, then c.
        assert_eq!(r.attempts(t0), ["b", "c"]);
        assert_eq!(r.succeeded(&"b"), Some(None), "first server used");
        assert_eq!(r.succeeded(&"b"), None, "no change, nothing to log");
        // Long after a's backoff ended, b is still first: sticky.
        let later = t0 + 10 * S;
        assert_eq!(r.attempts(later), ["b", "c", "a"]);
        assert_eq!(r.current(), Some(&"b"));
        // b fails: the next after it in order, wrapping round.
        r.failed(&"b", later, 0.0);
        assert_eq!(r.attempts(later), ["c", "a"]);
        assert_eq!(r.succeeded(&"a"), Some(Some("b")), "a change to log");
        assert_eq!(r.attempts(later), ["a", "c"], "b backs off");
    }

    #[test]
    fn all_down_tries_only_the_one_whose_backoff_ends_first() {
        let t0 = Instant::now();
        let mut r = rotation(&["a", "b"]);
        r.failed(&"a", t0, 0.0); // until t0 + 0.5 s
        r.failed(&"a", t0, 0.0); // twice: until t0 + 1 s
        r.failed(&"b", t0, 0.0); // until t0 + 0.5 s
        assert_eq!(r.attempts(t0), ["b"]);
        assert!(!r.another_ready(Some(&"a"), t0));
        // Once b's backoff ends, only b is ready; a follows after its own.
        assert_eq!(r.attempts(t0 + S / 2), ["b"]);
        assert_eq!(r.attempts(t0 + S), ["a", "b"]);
        assert!(r.another_ready(Some(&"a"), t0 + S));
    }

    #[test]
    fn consecutive_failures_grow_and_a_success_resets_them() {
        let t0 = Instant::now();
        let mut r = rotation(&["a", "b"]);
        let waits: Vec<_> = (0..4).map(|_| r.failed(&"a", t0, 0.0)).collect();
        assert_eq!(waits, [S / 2, S, 2 * S, 4 * S]);
        r.succeeded(&"a");
        assert_eq!(r.failed(&"a", t0, 0.0), S / 2);
    }

    #[test]
    fn dns_changes_forget_servers_that_are_gone() {
        let t0 = Instant::now();
        let mut r = rotation(&["a", "b"]);
        r.failed(&"a", t0, 0.0);
        r.succeeded(&"b");
        // The name now resolves to c and a (b is gone).
        r.set_candidates(vec!["c", "a"]);
        // The current server is gone: start at the first listed.
        assert_eq!(r.attempts(t0), ["c"]);
        r.set_candidates(vec!["c"]);
        r.set_candidates(vec!["c", "a"]);
        assert_eq!(r.attempts(t0), ["c", "a"], "a's old failure forgotten");
    }

    #[test]
    fn nothing_to_try_without_candidates() {
        let r: Rotation<&str> = rotation(&[]);
        assert!(r.attempts(Instant::now()).is_empty());
        assert!(!r.another_ready(None, Instant::now()));
    }
}
