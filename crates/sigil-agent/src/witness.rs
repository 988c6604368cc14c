//! The agent as a witness of the auth service's audit log.
//!
//! Every join, renewal and ping response carries the service's newest signed audit
//! checkpoint (seq and head hash of its hash-chained log). The agent pins the audit
//! public key the first time it sees one — trust on first use, over a connection already
//! authenticated by the pinned host CA, so only the real auth service can introduce it —
//! and keeps the highest checkpoint it has verified in `audit-witness.json` in its
//! storage directory (0600, written atomically). A server whose checkpoint has a bad
//! signature, or goes backwards (a lower seq, or the same seq with another head: events
//! deleted, the log rewritten, or the database rolled back to an older copy) is refused:
//! the agent keeps its last good credential, logs an error, and reports it on `/readyz`
//! and in `sigil_agent_audit_witness_refusals_total`.
//!
//! After a deliberate restore of the auth service from a backup, or an audit key
//! replacement, remove `audit-witness.json` to accept the server again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sigil_proto::v1::AuditCheckpoint;
use sigil_types::{Checkpoint, SignedCheckpoint, WitnessVerdict};

use crate::fsutil;
use crate::storage::Storage;

const FILE: &str = "audit-witness.json";

/// What the agent remembers.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    audit_public_key: String,
    checkpoint: Option<SignedCheckpoint>,
}

/// The server failed the witness check: do not use what it sent.
#[derive(Debug)]
pub struct WitnessRefusal(pub String);

impl std::fmt::Display for WitnessRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing the auth service (audit log witness): {}; keeping the current credential",
            self.0
        )
    }
}
impl std::error::Error for WitnessRefusal {}

pub struct Witness {
    /// Read and written through the agent's storage (no symlinks; created
    /// with it on the first write).
    storage: Storage,
    path: PathBuf,
}

impl Witness {
    pub fn new(storage: &Path) -> Witness {
        Witness {
            storage: Storage::new(storage),
            path: storage.join(FILE),
        }
    }

    fn load(&self) -> anyhow::Result<Option<State>> {
        match self.storage.read(FILE)? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is corrupt: remove it to pin the auth service's audit key again",
                    self.path.display()
                )
            })?)),
            None => Ok(None),
        }
    }

    /// Checks what a server presented; remembers a checkpoint that advanced. An `Err`
    /// holding a [`WitnessRefusal`] means the server must not be trusted.
    pub fn observe(
        &self,
        cluster: &str,
        public_key: &str,
        checkpoint: Option<&AuditCheckpoint>,
    ) -> anyhow::Result<()> {
        self.run(cluster, public_key, checkpoint, true)
    }

    /// Like [`Witness::observe`] but remembers nothing: for a ping before a join or
    /// renewal (a refused join must leave nothing behind).
    pub fn precheck(
        &self,
        cluster: &str,
        public_key: &str,
        checkpoint: Option<&AuditCheckpoint>,
    ) -> anyhow::Result<()> {
        self.run(cluster, public_key, checkpoint, false)
    }

    fn run(
        &self,
        cluster: &str,
        public_key: &str,
        checkpoint: Option<&AuditCheckpoint>,
        save: bool,
    ) -> anyhow::Result<()> {
        let state = self.load()?;
        let r = check(state.as_ref(), cluster, public_key, checkpoint);
        match r {
            Ok(Some(next)) if save => {
                self.storage
                    .write(FILE, &serde_json::to_vec_pretty(&next)?, fsutil::SECRET)
            }
            Ok(_) => Ok(()),
            Err(reason) => {
                metrics::counter!("sigil_agent_audit_witness_refusals_total").increment(1);
                tracing::error!(%reason, file = %self.path.display(),
                    "the auth service failed the audit witness check");
                Err(WitnessRefusal(reason).into())
            }
        }
    }
}

/// The pure check: `Ok(Some(state))` to save, `Ok(None)` nothing new, `Err(reason)`.
fn check(
    seen: Option<&State>,
    cluster: &str,
    public_key: &str,
    presented: Option<&AuditCheckpoint>,
) -> Result<Option<State>, String> {
    if public_key.is_empty() {
        return match seen {
            Some(s) => Err(format!(
                "the server presents no audit key, but this agent pinned {}",
                s.audit_public_key
            )),
            // A server without audit checkpoints: nothing to witness.
            None => Ok(None),
        };
    }
    let pinned = seen.map_or(public_key, |s| s.audit_public_key.as_str());
    if pinned != public_key {
        return Err(format!(
            "the server's audit key is {public_key}, but this agent pinned {pinned} (if the key was replaced on purpose, remove audit-witness.json)"
        ));
    }
    let old = match seen.and_then(|s| s.checkpoint.as_ref()) {
        Some(o) => {
            Some(Checkpoint::parse(&o.body).map_err(|e| format!("the stored checkpoint: {e}"))?)
        }
        None => None,
    };
    let Some(p) = presented else {
        return match &old {
            Some(o) => Err(format!(
                "the server presents no audit checkpoint, but seq {} was seen before (its database lost its checkpoints, or was replaced)",
                o.seq
            )),
            None if seen.is_none() => Ok(Some(State {
                audit_public_key: public_key.to_string(),
                checkpoint: None,
            })),
            None => Ok(None),
        };
    };
    sigil_pki::verify_audit_signature(pinned, &p.body, &p.signature)
        .map_err(|e| format!("the server's audit checkpoint: {e}"))?;
    let new = Checkpoint::parse(&p.body).map_err(|e| e.to_string())?;
    if new.cluster != cluster {
        return Err(format!(
            "the audit checkpoint is for cluster {:?}, not {cluster:?}",
            new.cluster
        ));
    }
    match sigil_types::witness(old.as_ref(), &new) {
        WitnessVerdict::Refused(reason) => Err(reason),
        WitnessVerdict::Same => Ok(None),
        WitnessVerdict::Advanced => Ok(Some(State {
            audit_public_key: public_key.to_string(),
            checkpoint: Some(SignedCheckpoint {
                body: p.body.clone(),
                signature: p.signature.clone(),
            }),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_pki::{KeyAlgorithm, KeyManager as _, SoftwareKeyManager};

    struct Signer(std::sync::Arc<dyn sigil_pki::CaSigningKey>);

    impl Signer {
        fn new() -> Signer {
            let km = SoftwareKeyManager;
            let ctx = sigil_pki::KeyContext {
                cluster: "example.test",
                purpose: "audit",
            };
            Signer(
                km.load(
                    &ctx,
                    &km.generate(&ctx, KeyAlgorithm::Ed25519).expect("gen"),
                )
                .expect("load"),
            )
        }
        fn public(&self) -> String {
            sigil_pki::audit_public_key(self.0.as_ref())
        }
        fn cp(&self, seq: i64, head: char) -> AuditCheckpoint {
            let body = Checkpoint {
                cluster: "c".into(),
                seq,
                head: head.to_string().repeat(64),
                time: time::OffsetDateTime::now_utc(),
            }
            .body();
            let signature = sigil_pki::sign_audit_checkpoint(self.0.as_ref(), &body).expect("sign");
            AuditCheckpoint { body, signature }
        }
    }

    #[test]
    fn remembers_the_highest_and_refuses_going_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Witness::new(dir.path());
        let k = Signer::new();
        w.observe("c", &k.public(), Some(&k.cp(5, 'a')))
            .expect("first");
        w.observe("c", &k.public(), Some(&k.cp(9, 'b')))
            .expect("advance");
        w.observe("c", &k.public(), Some(&k.cp(9, 'b')))
            .expect("same");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(FILE))
                .expect("file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        for (bad, want) in [(k.cp(5, 'a'), "backwards"), (k.cp(9, 'c'), "rewritten")] {
            let e = w
                .observe("c", &k.public(), Some(&bad))
                .expect_err("refused");
            assert!(e.downcast_ref::<WitnessRefusal>().is_some());
            assert!(format!("{e}").contains(want), "{e}");
        }
        let e = w
            .observe("c", &k.public(), None)
            .expect_err("no checkpoint");
        assert!(format!("{e}").contains("seq 9"), "{e}");
        // The highest is still remembered after refusals.
        w.observe("c", &k.public(), Some(&k.cp(10, 'd')))
            .expect("advance");
        assert!(w.observe("c", &k.public(), Some(&k.cp(9, 'b'))).is_err());
    }

    #[test]
    fn refuses_other_keys_and_bad_signatures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Witness::new(dir.path());
        let k = Signer::new();
        let other = Signer::new();
        w.observe("c", &k.public(), Some(&k.cp(1, 'a')))
            .expect("pin");
        let e = w
            .observe("c", &other.public(), Some(&other.cp(2, 'a')))
            .expect_err("other key");
        assert!(format!("{e}").contains("pinned"), "{e}");
        let forged = other.cp(3, 'a');
        let e = w
            .observe("c", &k.public(), Some(&forged))
            .expect_err("forged");
        assert!(format!("{e}").contains("signature"), "{e}");
        assert!(w.observe("c", "", None).is_err(), "the key cannot vanish");
        assert!(
            w.observe("other", &k.public(), Some(&k.cp(4, 'a')))
                .is_err()
        );
    }

    #[test]
    fn prechecks_refuse_but_never_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Witness::new(dir.path());
        let k = Signer::new();
        w.precheck("c", &k.public(), Some(&k.cp(5, 'a')))
            .expect("ok");
        assert!(!dir.path().join(FILE).exists(), "a precheck pins nothing");
        w.observe("c", &k.public(), Some(&k.cp(5, 'a')))
            .expect("pin");
        assert!(w.precheck("c", &k.public(), Some(&k.cp(4, 'a'))).is_err());
    }

    #[test]
    fn servers_without_audit_keys_are_not_witnessed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Witness::new(dir.path());
        w.observe("c", "", None).expect("nothing to witness");
        assert!(!dir.path().join(FILE).exists());
    }
}
