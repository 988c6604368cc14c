//! Signed audit checkpoints, like a transparency log's signed tree heads.
//!
//! The hash chain alone cannot show that the newest events were deleted, that all of
//! them were, or that one was edited and every hash after it recomputed: whoever can
//! write the database can do all three consistently. So the service signs, with a key
//! the database does not hold (see `key.rs`), checkpoints `(cluster, seq, head hash,
//! time)`:
//!
//! - after writes, batched: when the head moved, at most every [`SIGN_EVERY`] or after
//!   [`SIGN_EVENTS`] new events, at start (covering `auth.started`) and at shutdown;
//! - stored in the database (the newest [`KEEP`]) and the newest also in
//!   `audit-head.json` in the data dir, so a database replaced by an older copy, or
//!   stripped of its checkpoints, still disagrees with something signed;
//! - handed to agents in every join, renewal and ping response: agents are witnesses that
//!   refuse a server whose checkpoint goes backwards.
//!
//! Verification (`sigil audit verify`, and at every start) checks the chain, then every
//! checkpoint's signature and that the log still has the checkpoint's hash at its seq.
//! A failed verification stops signing (fail closed: the key never vouches for a log
//! that failed), and is reported by the log, `sigil_audit_integrity_ok` and `/readyz`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sigil_store::{AuditQuery, AuditVerification, GENESIS_HASH, Op, Store, Txn, WatchEvent};
use sigil_types::{Checkpoint, SignedCheckpoint};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::key::{self, AuditKey};

/// Sign at most this often while events keep coming.
pub const SIGN_EVERY: Duration = Duration::from_secs(10);
/// ... or as soon as this many events are unsigned.
pub const SIGN_EVENTS: i64 = 1000;
/// Checkpoints kept in the database. Each commits to the whole log before it, so the
/// newest would suffice; a few older ones locate an edit more precisely.
pub const KEEP: usize = 64;
/// Store key prefix of checkpoints (slot = seq mod [`KEEP`]).
pub const PREFIX: &str = "/audit_checkpoints/";
/// The newest signed checkpoint, outside the database.
pub const HEAD_FILE: &str = "audit-head.json";

/// What the last verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The start-up verification is still running.
    Checking,
    Intact,
    Broken {
        seq: i64,
        reason: String,
    },
}

/// Outcome of [`Checkpoints::verify`].
#[derive(Clone, Debug)]
pub struct Verification {
    /// Events in the log (0 when the chain itself is broken before the end).
    pub count: i64,
    pub head: String,
    /// Checkpoints (and heads) compared against the log.
    pub checked: usize,
    /// The first problem: the seq it concerns and what is wrong.
    pub problem: Option<(i64, String)>,
    /// The first problem with what the service holds itself (the chain, its stored
    /// checkpoints, `audit-head.json`), as opposed to a head an operator passed in,
    /// which may simply be mistyped.
    pub own_problem: Option<(i64, String)>,
}

pub struct Checkpoints {
    store: Arc<dyn Store>,
    key: AuditKey,
    cluster: String,
    head_file: PathBuf,
    latest: RwLock<Option<SignedCheckpoint>>,
    integrity: RwLock<Integrity>,
    signing: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    /// Loads the newest stored checkpoint (what is served until the next signature).
    pub async fn open(
        store: Arc<dyn Store>,
        key: AuditKey,
        cluster: &str,
        data_dir: &Path,
    ) -> anyhow::Result<Checkpoints> {
        let all = stored(store.as_ref()).await?;
        let cps = Checkpoints {
            store,
            key,
            cluster: cluster.to_string(),
            head_file: data_dir.join(HEAD_FILE),
            latest: RwLock::new(None),
            integrity: RwLock::new(Integrity::Checking),
            signing: tokio::sync::Mutex::new(()),
        };
        // Served only if it verifies with this server's key (verification at start
        // reports any that do not).
        for (_, c) in &all {
            if let Ok(cp) = cps.open_signed(c)
                && cp.cluster == cps.cluster
            {
                cps.adopt_if_newer(c);
            }
        }
        Ok(cps)
    }

    pub fn public_key(&self) -> &str {
        &self.key.public_key
    }

    pub fn key_path(&self) -> &Path {
        &self.key.path
    }

    /// The newest stored checkpoint, if any.
    pub fn latest(&self) -> Option<SignedCheckpoint> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn latest_proto(&self) -> Option<sigil_proto::v1::AuditCheckpoint> {
        self.latest().map(to_proto)
    }

    pub fn integrity(&self) -> Integrity {
        self.integrity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_integrity(&self, i: Integrity) {
        metrics::gauge!("sigil_audit_integrity_ok").set(match i {
            Integrity::Broken { .. } => 0.0,
            _ => 1.0,
        });
        *self.integrity.write().unwrap_or_else(|p| p.into_inner()) = i;
    }

    /// Checks the chain, every stored checkpoint, `audit-head.json` and `head` (a head
    /// recorded earlier by an operator: seq and hash). A problem with what the service
    /// holds itself stops signing until a verification finds none; a mismatching
    /// operator head is only reported (it may be a typo).
    pub async fn verify(&self, head: Option<(i64, String)>) -> anyhow::Result<Verification> {
        let v = self.verify_inner(head).await?;
        match &v.own_problem {
            Some((seq, reason)) => self.set_integrity(Integrity::Broken {
                seq: *seq,
                reason: reason.clone(),
            }),
            None => self.set_integrity(Integrity::Intact),
        }
        Ok(v)
    }

    async fn verify_inner(&self, head: Option<(i64, String)>) -> anyhow::Result<Verification> {
        let (count, head_hash) = match self.store.audit_verify().await? {
            AuditVerification::Intact { count, head_hash } => (count, head_hash),
            AuditVerification::Broken { seq, reason } => {
                let p = Some((seq, format!("hash chain broken: {reason}")));
                return Ok(Verification {
                    count: 0,
                    head: String::new(),
                    checked: 0,
                    problem: p.clone(),
                    own_problem: p,
                });
            }
        };
        // (label, seq, hash, the service's own evidence?)
        let mut claims: Vec<(String, i64, String, bool)> = Vec::new();
        let mut problems: Vec<(i64, String, bool)> = Vec::new();
        for (seq, signed) in stored(self.store.as_ref()).await? {
            match self.open_signed(&signed) {
                Ok(cp) => claims.push((
                    format!("signed checkpoint seq {}", cp.seq),
                    cp.seq,
                    cp.head,
                    true,
                )),
                Err(e) => problems.push((seq, format!("stored checkpoint seq {seq}: {e}"), true)),
            }
        }
        match read_head_file(&self.head_file) {
            Ok(None) => {}
            Ok(Some(signed)) => match self.open_signed(&signed) {
                Ok(cp) => claims.push((
                    format!(
                        "the last checkpoint this service signed ({HEAD_FILE}, seq {})",
                        cp.seq
                    ),
                    cp.seq,
                    cp.head,
                    true,
                )),
                Err(e) => problems.push((0, format!("{}: {e}", self.head_file.display()), true)),
            },
            Err(e) => problems.push((0, e, true)),
        }
        if let Some((seq, hash)) = head {
            claims.push((format!("the recorded head {seq}:{hash}"), seq, hash, false));
        }
        claims.sort_by_key(|c| c.1);
        let checked = claims.len();
        let mut last_ok = 0;
        for (label, seq, hash, own) in claims {
            let at = if seq == 0 {
                Some(GENESIS_HASH.to_string())
            } else if seq <= count {
                self.hash_at(seq).await?
            } else {
                None
            };
            match compare(&label, seq, &hash, count, at.as_deref(), last_ok) {
                Some((s, m)) => problems.push((s, m, own)),
                None => last_ok = seq,
            }
        }
        // The lowest seq is where to start looking.
        problems.sort_by_key(|p| p.0);
        let own_problem = problems.iter().find(|p| p.2).map(|p| (p.0, p.1.clone()));
        Ok(Verification {
            count,
            head: head_hash,
            checked,
            problem: problems.into_iter().next().map(|p| (p.0, p.1)),
            own_problem,
        })
    }

    /// Verifies a signature with this service's key and reads the body.
    fn open_signed(&self, s: &SignedCheckpoint) -> Result<Checkpoint, String> {
        sigil_pki::verify_audit_signature(&self.key.public_key, &s.body, &s.signature).map_err(
            |_| "invalid signature (forged, or signed by another audit key)".to_string(),
        )?;
        let cp = Checkpoint::parse(&s.body).map_err(|e| e.to_string())?;
        if cp.cluster != self.cluster {
            return Err(format!(
                "signed for cluster {:?}, not {:?}",
                cp.cluster, self.cluster
            ));
        }
        Ok(cp)
    }

    async fn hash_at(&self, seq: i64) -> anyhow::Result<Option<String>> {
        let recs = self
            .store
            .audit_query(AuditQuery {
                after_seq: Some(seq - 1),
                limit: Some(1),
                ..Default::default()
            })
            .await?;
        Ok(recs.into_iter().find(|r| r.seq == seq).map(|r| r.hash))
    }

    /// The start-up check: logs loudly and records the outcome.
    pub async fn startup_check(&self) {
        match self.verify(None).await {
            Ok(Verification {
                problem: None,
                count,
                checked,
                ..
            }) => {
                tracing::info!(events = count, checkpoints = checked, audit_key = %self.key.public_key,
                    "audit log verified against its signed checkpoints");
            }
            Ok(Verification {
                problem: Some((seq, reason)),
                ..
            }) => {
                tracing::error!(seq, %reason,
                    "AUDIT LOG INTEGRITY FAILURE: the audit log does not verify; no checkpoint is signed until it does (see `sigil audit verify`)");
            }
            Err(e) => {
                self.set_integrity(Integrity::Broken {
                    seq: 0,
                    reason: format!("verification could not run: {e:#}"),
                });
                tracing::error!(error = %format!("{e:#}"), "verifying the audit log at start failed");
            }
        }
    }

    /// Signs the current head unless it is already the newest checkpoint.
    /// Refused while the log is not known to be intact.
    pub async fn sign(&self) -> anyhow::Result<SignedCheckpoint> {
        let _one = self.signing.lock().await;
        match self.integrity() {
            Integrity::Intact => {}
            Integrity::Checking => {
                anyhow::bail!("the audit log is still being verified; retry shortly")
            }
            Integrity::Broken { seq, reason } => anyhow::bail!(
                "the audit log failed verification at seq {seq} ({reason}); no checkpoint is signed until that is resolved"
            ),
        }
        let (seq, head) = self.store.audit_head().await?;
        if let Some(l) = self.latest()
            && let Ok(cp) = Checkpoint::parse(&l.body)
            && cp.seq == seq
            && cp.head == head
        {
            return Ok(l);
        }
        let cp = Checkpoint {
            cluster: self.cluster.clone(),
            seq,
            head,
            time: OffsetDateTime::now_utc(),
        };
        let body = cp.body();
        let signature = sigil_pki::sign_audit_checkpoint(self.key.signer.as_ref(), &body)?;
        let signed = SignedCheckpoint { body, signature };
        // A ring of KEEP slots by seq: a new checkpoint only ever replaces an older one,
        // and with Puts alone (no Deletes) nothing else in the service is notified.
        let ops = vec![Op::Put {
            key: format!("{PREFIX}{:02}", seq.rem_euclid(KEEP as i64)),
            value: serde_json::to_vec(&signed)?,
            expires: None,
        }];
        self.store.commit(Txn { ops, audit: vec![] }).await?;
        key::write_atomic(&self.head_file, &serde_json::to_vec_pretty(&signed)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.head_file.display()))?;
        self.adopt_if_newer(&signed);
        Ok(signed)
    }

    /// Serves `signed` if it is newer than the current checkpoint. Servers sharing a
    /// store sign in turn; each must serve the newest, or an agent that failed over
    /// from a server that signed later would see the log go backwards.
    fn adopt_if_newer(&self, signed: &SignedCheckpoint) {
        let Ok(new) = Checkpoint::parse(&signed.body) else {
            return;
        };
        let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
        let current = latest
            .as_ref()
            .and_then(|l| Checkpoint::parse(&l.body).ok())
            .map_or(-1, |c| c.seq);
        if new.seq > current {
            metrics::gauge!("sigil_audit_checkpoint_seq").set(new.seq as f64);
            *latest = Some(signed.clone());
        }
    }

    /// A checkpoint another server stored: served once it verifies with our key and
    /// the log holds its hash at its seq (a genuine checkpoint of another copy of the
    /// log, say a restored staging database with the same key, is not served).
    async fn adopt_stored(&self, signed: &SignedCheckpoint) {
        match self.open_signed(signed) {
            Ok(cp) if cp.cluster == self.cluster => match self.hash_at(cp.seq).await {
                Ok(Some(h)) if h == cp.head => self.adopt_if_newer(signed),
                Ok(_) => tracing::warn!(
                    seq = cp.seq,
                    "ignoring a stored audit checkpoint that this log does not match"
                ),
                Err(e) => tracing::warn!(error = %format!("{e:#}"),
                        "checking a stored audit checkpoint failed"),
            },
            Ok(_) => tracing::warn!("ignoring a stored audit checkpoint of another cluster"),
            Err(e) => tracing::warn!(error = %e, "ignoring a stored audit checkpoint"),
        }
    }

    /// Start-up verification, then batched signing until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // The start-up check reads the whole log (seconds per million events):
        // a shutdown meanwhile abandons it (nothing is written until it ends).
        tokio::select! {
            _ = self.startup_check() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut last_signed = Instant::now();
        let mut signed_seq = -1;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut changes = self.store.watch();
        loop {
            let event = tokio::select! {
                _ = tick.tick() => None,
                ev = changes.recv() => Some(ev),
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Some(ev) = event {
                match ev {
                    Ok(WatchEvent::Put(item)) if item.key.starts_with(PREFIX) => {
                        if let Ok(c) = serde_json::from_slice(&item.value) {
                            self.adopt_stored(&c).await;
                        }
                    }
                    Ok(WatchEvent::Reset) | Err(RecvError::Lagged(_)) => {
                        if let Ok(all) = stored(self.store.as_ref()).await {
                            for (_, c) in all {
                                self.adopt_stored(&c).await;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Closed) => return,
                }
                continue;
            }
            if self.integrity() != Integrity::Intact {
                continue;
            }
            let Ok((seq, _)) = self.store.audit_head().await else {
                continue;
            };
            let due = signed_seq < 0
                || seq - signed_seq >= SIGN_EVENTS
                || (seq != signed_seq && last_signed.elapsed() >= SIGN_EVERY);
            if !due {
                continue;
            }
            match self.sign().await {
                Ok(s) => {
                    signed_seq = Checkpoint::parse(&s.body).map_or(seq, |c| c.seq);
                    last_signed = Instant::now();
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "signing an audit checkpoint failed")
                }
            }
        }
    }
}

/// Compares one signed claim `(seq, hash)` with the log (`count` events, `at` = the
/// hash of event `seq` if present). `last_ok` is the highest seq a claim matched.
fn compare(
    label: &str,
    seq: i64,
    hash: &str,
    count: i64,
    at: Option<&str>,
    last_ok: i64,
) -> Option<(i64, String)> {
    if seq > count {
        return Some(if count == 0 {
            (
                1,
                format!(
                    "the log is empty, but {label} covers events 1..={seq}: every event was deleted"
                ),
            )
        } else {
            (
                count + 1,
                format!(
                    "the log ends at seq {count}, but {label} covers seq {seq}: events {}..={seq} were deleted (or the database was replaced by an older copy)",
                    count + 1
                ),
            )
        });
    }
    match at {
        Some(h) if h == hash => None,
        _ => Some((
            seq,
            format!(
                "event seq {seq} does not match {label}: the log was rewritten (an event in seq {}..={seq} was edited or removed and the chain recomputed)",
                last_ok + 1
            ),
        )),
    }
}

/// Stored checkpoints by the seq their body names (unverified; 0 if unreadable),
/// oldest first.
async fn stored(store: &dyn Store) -> anyhow::Result<Vec<(i64, SignedCheckpoint)>> {
    let mut out = Vec::new();
    for item in store.list(PREFIX).await? {
        // Unreadable: kept as a record whose signature cannot verify.
        let c =
            serde_json::from_slice::<SignedCheckpoint>(&item.value).unwrap_or(SignedCheckpoint {
                body: String::new(),
                signature: String::new(),
            });
        let seq = Checkpoint::parse(&c.body).map_or(0, |cp| cp.seq);
        out.push((seq, c));
    }
    out.sort_by_key(|c| c.0);
    Ok(out)
}

fn read_head_file(path: &Path) -> Result<Option<SignedCheckpoint>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is unreadable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

pub fn to_proto(s: SignedCheckpoint) -> sigil_proto::v1::AuditCheckpoint {
    sigil_proto::v1::AuditCheckpoint {
        body: s.body,
        signature: s.signature,
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    const H: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const G: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn matching_claims_pass() {
        assert_eq!(compare("cp", 5, H, 9, Some(H), 0), None);
        assert_eq!(compare("cp", 9, H, 9, Some(H), 5), None);
    }

    #[test]
    fn truncation_names_the_first_missing_seq() {
        let (seq, m) = compare("cp", 10, H, 7, None, 0).expect("problem");
        assert_eq!(seq, 8);
        assert!(m.contains("events 8..=10 were deleted"), "{m}");
        let (seq, m) = compare("cp", 10, H, 0, None, 0).expect("problem");
        assert_eq!(seq, 1);
        assert!(m.contains("every event was deleted"), "{m}");
    }

    #[test]
    fn rewrites_are_located_between_checkpoints() {
        let (seq, m) = compare("cp", 10, H, 12, Some(G), 4).expect("problem");
        assert_eq!(seq, 10);
        assert!(m.contains("seq 5..=10") && m.contains("rewritten"), "{m}");
    }
}
