//! Signed audit checkpoints: the text that is signed, and how a witness compares two.
//!
//! A checkpoint states "the audit log of `cluster` had `seq` events and its chain head
//! (the hash of event `seq`) was `head` at `time`". Because each event's hash covers the
//! previous one, a checkpoint commits to the whole log up to `seq`. The auth service signs
//! the body below with its audit key (held outside the database); verifiers and agents
//! check the signature with the pinned public key, then compare the body against the log
//! (verifier) or against the highest checkpoint seen before (agent witness).
//!
//! The signed body is exactly these five lines, each ending in `\n`, like a
//! transparency-log "signed note":
//!
//! ```text
//! sigil audit checkpoint v1
//! cluster: example.test
//! seq: 42
//! head: <64 lowercase hex digits>
//! time: 2026-12-02T07:00:00Z
//! ```

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const HEADER: &str = "sigil audit checkpoint v1";

/// The content of a checkpoint (what is signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Cluster (trust domain) whose log this is.
    pub cluster: String,
    /// Sequence number of the newest event covered (0: the empty log).
    pub seq: i64,
    /// Hash of event `seq` (the genesis hash, 64 zeros, for an empty log).
    pub head: String,
    /// When it was signed (whole seconds, UTC).
    pub time: OffsetDateTime,
}

/// A checkpoint body with its signature, as stored, sent and saved to files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The exact signed text ([`Checkpoint::body`]).
    pub body: String,
    /// Base64 of the signature over `body` (Ed25519: 64 bytes).
    pub signature: String,
}

/// Why a checkpoint body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audit checkpoint: {0}")]
pub struct CheckpointError(pub String);

impl Checkpoint {
    /// The canonical signed text.
    pub fn body(&self) -> String {
        let time = self
            .time
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        format!(
            "{HEADER}\ncluster: {}\nseq: {}\nhead: {}\ntime: {time}\n",
            self.cluster, self.seq, self.head
        )
    }

    /// Reads a body written by [`Checkpoint::body`]; anything else is refused, so a
    /// signature can only ever vouch for one meaning.
    pub fn parse(body: &str) -> Result<Checkpoint, CheckpointError> {
        let err = |m: &str| CheckpointError(m.to_string());
        let mut lines = body
            .strip_suffix('\n')
            .ok_or_else(|| err("the body must end with a newline"))?
            .split('\n');
        if lines.next() != Some(HEADER) {
            return Err(err("the first line must be `sigil audit checkpoint v1`"));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .ok_or_else(|| CheckpointError(format!("expected a `{name}:` line")))
        };
        let cluster = field("cluster")?.to_string();
        let seq = field("seq")?
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| err("seq must be a non-negative integer"))?;
        let head = field("head")?.to_string();
        if !is_hash(&head) {
            return Err(err("head must be 64 lowercase hex digits"));
        }
        let time = OffsetDateTime::parse(field("time")?, &Rfc3339)
            .map_err(|_| err("time must be RFC 3339"))?;
        if lines.next().is_some() {
            return Err(err("unexpected text after the time line"));
        }
        let cp = Checkpoint {
            cluster,
            seq,
            head,
            time,
        };
        if cp.body() != body {
            return Err(err("the body is not in canonical form"));
        }
        Ok(cp)
    }
}

/// True for 64 lowercase hex digits (a SHA-256 in the audit chain's encoding).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `SEQ:HASH` (as `sigil audit verify --head` takes it).
pub fn parse_head(s: &str) -> Result<(i64, String), CheckpointError> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| CheckpointError("expected SEQ:HASH, e.g. 42:3fa9…".into()))?;
    let seq = seq
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| CheckpointError(format!("{seq:?} is not a sequence number (1 or more)")))?;
    let hash = hash.trim().to_ascii_lowercase();
    if !is_hash(&hash) {
        return Err(CheckpointError(
            "the hash must be 64 hex digits (as `sigil audit verify` prints it)".into(),
        ));
    }
    Ok((seq, hash))
}

/// What a witness concludes from a newly presented checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessVerdict {
    /// Newer than (or the first) checkpoint seen: remember it.
    Advanced,
    /// The same head as the one remembered.
    Same,
    /// The log went backwards or forked: refuse this server.
    Refused(String),
}

/// Compares a new checkpoint with the highest one a witness has seen. Both must already
/// have valid signatures. Equal seqs must have equal heads (a different head means the
/// log was rewritten); a lower seq means events were removed (or the database was
/// rolled back to an older copy).
pub fn witness(seen: Option<&Checkpoint>, new: &Checkpoint) -> WitnessVerdict {
    let Some(seen) = seen else {
        return WitnessVerdict::Advanced;
    };
    if new.cluster != seen.cluster {
        return WitnessVerdict::Refused(format!(
            "the checkpoint is for cluster {:?}, but this agent witnessed {:?}",
            new.cluster, seen.cluster
        ));
    }
    if new.seq < seen.seq {
        return WitnessVerdict::Refused(format!(
            "the audit log went backwards: the server's checkpoint is at seq {}, but seq {} (head {}) was seen before (events deleted or the database rolled back)",
            new.seq, seen.seq, seen.head
        ));
    }
    if new.seq == seen.seq {
        return if new.head == seen.head {
            WitnessVerdict::Same
        } else {
            WitnessVerdict::Refused(format!(
                "the audit log was rewritten: seq {} now has head {}, but head {} was seen before",
                new.seq, new.head, seen.head
            ))
        };
    }
    WitnessVerdict::Advanced
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cp(seq: i64, head: char) -> Checkpoint {
        Checkpoint {
            cluster: "example.test".into(),
            seq,
            head: head.to_string().repeat(64),
            time: datetime!(2026-12-02 07:00:00.75 UTC),
        }
    }

    #[test]
    fn body_round_trips_and_is_canonical() {
        let c = cp(42, 'a');
        let body = c.body();
        assert_eq!(
            body,
            format!(
                "sigil audit checkpoint v1\ncluster: example.test\nseq: 42\nhead: {}\ntime: 2026-12-02T07:00:00Z\n",
                "a".repeat(64)
            )
        );
        let back = Checkpoint::parse(&body).expect("parse");
        assert_eq!(back.seq, 42);
        assert_eq!(back.head, c.head);
        assert_eq!(back.time, datetime!(2026-12-02 07:00:00 UTC));
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let body = cp(7, 'b').body();
        for bad in [
            body.trim_end().to_string(),
            body.replace("seq: 7", "seq: 07"),
            body.replace("seq: 7", "seq: -7"),
            body.replace("v1", "v2"),
            body.replace(&"b".repeat(64), &"B".repeat(64)),
            body.replace("Z\n", "+00:00\n"),
            format!("{body}extra\n"),
            body.replace("cluster: ", "cluster:"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn witness_verdicts() {
        assert_eq!(witness(None, &cp(1, 'a')), WitnessVerdict::Advanced);
        assert_eq!(
            witness(Some(&cp(5, 'a')), &cp(6, 'b')),
            WitnessVerdict::Advanced
        );
        assert_eq!(
            witness(Some(&cp(5, 'a')), &cp(5, 'a')),
            WitnessVerdict::Same
        );
        let back = witness(Some(&cp(5, 'a')), &cp(4, 'a'));
        assert!(
            matches!(&back, WitnessVerdict::Refused(m) if m.contains("backwards") && m.contains("seq 5")),
            "{back:?}"
        );
        let fork = witness(Some(&cp(5, 'a')), &cp(5, 'c'));
        assert!(
            matches!(&fork, WitnessVerdict::Refused(m) if m.contains("rewritten")),
            "{fork:?}"
        );
        let mut other = cp(9, 'a');
        other.cluster = "other".into();
        assert!(matches!(
            witness(Some(&cp(5, 'a')), &other),
            WitnessVerdict::Refused(_)
        ));
    }

    #[test]
    fn heads_parse() {
        let h = "A".repeat(64);
        assert_eq!(parse_head(&format!("12:{h}")), Ok((12, "a".repeat(64))));
        assert!(parse_head("12").is_err());
        assert!(parse_head(&format!("0:{h}")).is_err());
        assert!(parse_head("x:abc").is_err());
        assert!(parse_head("3:abc").is_err());
    }
}
