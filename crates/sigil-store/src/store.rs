//! The [`Store`] trait and the types it exchanges.

use std::fmt;

use time::OffsetDateTime;

use crate::Result;

/// A live key-value item.
///
/// `Debug` prints the value's length only: values may hold secrets.
#[derive(Clone, PartialEq)]
pub struct Item {
    /// The key.
    pub key: String,
    /// The opaque value.
    pub value: Vec<u8>,
    /// Store-wide revision at which this item was last written. Revisions only grow
    /// and are never reused, so they are safe for compare-and-swap.
    pub revision: i64,
    /// When the item stops being visible; `None` = never.
    pub expires: Option<OffsetDateTime>,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("key", &self.key)
            .field("value", &Redacted(self.value.len()))
            .field("revision", &self.revision)
            .field("expires", &self.expires)
            .finish()
    }
}

/// Shows `<N bytes>` in place of a value.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// One write inside a [`Txn`].
///
/// `Debug` prints value lengths only: values may hold secrets.
#[derive(Clone)]
pub enum Op {
    /// Insert a new item. `AlreadyExists` if a live item exists (an expired one is replaced).
    Create {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Expiry; `None` = never.
        expires: Option<OffsetDateTime>,
    },
    /// Insert or overwrite unconditionally.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Expiry; `None` = never.
        expires: Option<OffsetDateTime>,
    },
    /// Overwrite a live item. `NotFound` if absent or expired; `Conflict` if
    /// `expected_revision` is set and differs from the item's revision.
    Update {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The new expiry; `None` = never.
        expires: Option<OffsetDateTime>,
        /// Compare-and-swap guard.
        expected_revision: Option<i64>,
    },
    /// Remove a live item. `NotFound` / `Conflict` as for `Update`.
    Delete {
        /// The key.
        key: String,
        /// Compare-and-swap guard (e.g. consuming a single-use token exactly once).
        expected_revision: Option<i64>,
    },
}

impl Op {
    /// The watch event this op becomes once committed at `revision`.
    pub fn committed(&self, revision: i64) -> WatchEvent {
        match self {
            Op::Create {
                key,
                value,
                expires,
            }
            | Op::Put {
                key,
                value,
                expires,
            }
            | Op::Update {
                key,
                value,
                expires,
                ..
            } => WatchEvent::Put(Item {
                key: key.clone(),
                value: value.clone(),
                revision,
                expires: *expires,
            }),
            Op::Delete { key, .. } => WatchEvent::Delete {
                key: key.clone(),
                revision,
            },
        }
    }

    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. }
            | Op::Put { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. } => key,
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create {
                key,
                value,
                expires,
            } => f
                .debug_struct("Create")
                .field("key", key)
                .field("value", &Redacted(value.len()))
                .field("expires", expires)
                .finish(),
            Op::Put {
                key,
                value,
                expires,
            } => f
                .debug_struct("Put")
                .field("key", key)
                .field("value", &Redacted(value.len()))
                .field("expires", expires)
                .finish(),
            Op::Update {
                key,
                value,
                expires,
                expected_revision,
            } => f
                .debug_struct("Update")
                .field("key", key)
                .field("value", &Redacted(value.len()))
                .field("expires", expires)
                .field("expected_revision", expected_revision)
                .finish(),
            Op::Delete {
                key,
                expected_revision,
            } => f
                .debug_struct("Delete")
                .field("key", key)
                .field("expected_revision", expected_revision)
                .finish(),
        }
    }
}

/// An audit event to append as part of a [`Txn`].
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    /// When the event happened (stored and hashed in UTC, nanosecond precision).
    pub time: OffsetDateTime,
    /// Event type, e.g. `join.accepted`.
    pub event_type: String,
    /// Event details; a JSON object by convention. Never put secrets here.
    pub fields: serde_json::Value,
}

/// An atomic unit of writes: every op applies and every audit event is appended, or nothing.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    /// Writes, applied in order.
    pub ops: Vec<Op>,
    /// Audit events, appended in order if (and only if) every op succeeds.
    pub audit: Vec<NewAuditEvent>,
}

/// A stored audit event with its place in the hash chain.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the log, starting at 1, without gaps.
    pub seq: i64,
    /// Event time (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Event type.
    pub event_type: String,
    /// Event details.
    pub fields: serde_json::Value,
    /// Hash of the previous record ([`crate::GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// [`crate::audit_hash`] of this record.
    pub hash: String,
}

/// Filters for [`Store::audit_query`]; all set filters must match.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only events of exactly this type.
    pub event_type: Option<String>,
    /// Only events with `seq > after_seq` (for paging).
    pub after_seq: Option<i64>,
    /// At most this many records (the lowest seqs that match).
    pub limit: Option<usize>,
}

/// Outcome of [`Store::audit_verify`].
///
/// The chain detects any changed field/type/time, a broken `prev_hash` link and a gap in
/// `seq`. It cannot detect truncation of the newest events (the chain stays consistent):
/// compare `head_hash` against a copy kept elsewhere for that (the auth service's signed
/// checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub enum AuditVerification {
    /// Every record checks out.
    Intact {
        /// Number of records.
        count: i64,
        /// Hash of the last record ([`crate::GENESIS_HASH`] if the log is empty).
        head_hash: String,
    },
    /// The first record that does not check out.
    Broken {
        /// Its seq.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// A committed change, delivered by [`Store::watch`].
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// An item was created or overwritten.
    Put(Item),
    /// An item was deleted (by `Op::Delete` or by [`Store::purge_expired`]).
    Delete {
        /// The key.
        key: String,
        /// The deletion's place in the store's order, where the backend numbers
        /// deletes (PostgreSQL); 0 where it does not (SQLite, one process, in order).
        revision: i64,
    },
    /// The store cannot say what changed (a shared backend's change feed was pruned
    /// before this process read it): re-read everything you follow, as after `Lagged`.
    Reset,
}

/// The most items one [`Store::purge_expired`] call deletes.
pub const PURGE_BATCH: usize = 1000;

/// The storage interface used by the auth service.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live item under `key`; expired items are invisible.
    async fn get(&self, key: &str) -> Result<Option<Item>>;

    /// Live items whose key starts with `prefix`, sorted by key (byte order).
    /// Every one of them at once: for kinds that stay small (roles, locks, CAs).
    /// Kinds that grow with the fleet are read with [`Store::list_page`].
    async fn list(&self, prefix: &str) -> Result<Vec<Item>> {
        self.list_page(prefix, "", usize::MAX).await
    }

    /// At most `limit` live items whose key starts with `prefix` and sorts after
    /// `start_after` (`""`: from the first), sorted by key (byte order). Pass the
    /// last key of one page as `start_after` of the next: a page is one index
    /// range scan however large the kind is, and items written or deleted between
    /// pages neither repeat nor shift the others.
    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<Item>>;

    /// [`Store::list_page`] without the values: the keys only, from the index.
    async fn list_keys(&self, prefix: &str, start_after: &str, limit: usize)
    -> Result<Vec<String>>;

    /// How many live items have a key starting with `prefix` (an index scan; no
    /// values are read).
    async fn count(&self, prefix: &str) -> Result<u64>;

    /// How many live items under `prefix` expire before `before` (items without
    /// an expiry are not counted): an index range scan like [`Store::count`].
    async fn count_expiring_before(&self, prefix: &str, before: OffsetDateTime) -> Result<u64>;

    /// How long since this server last read a shared store's change feed
    /// (`None` for a store without one).
    fn feed_lag(&self) -> Option<std::time::Duration> {
        None
    }

    /// Atomic: every op applies and every audit event is appended, or nothing changes
    /// (the error of the first failing op is returned).
    /// Returns the new revision of each op in order; for a delete, its place in the
    /// order where the backend numbers deletes, else 0.
    async fn commit(&self, txn: Txn) -> Result<Vec<i64>>;

    /// Audit records matching `q`, in ascending seq.
    async fn audit_query(&self, q: AuditQuery) -> Result<Vec<AuditRecord>>;

    /// Recomputes the whole audit chain and reports the first bad record.
    async fn audit_verify(&self) -> Result<AuditVerification>;

    /// The newest committed audit record's `(seq, hash)`, or `(0, GENESIS_HASH)` for an
    /// empty log. Cheap (no chain walk): what a checkpoint signer reads.
    async fn audit_head(&self) -> Result<(i64, String)>;

    /// Events for committed changes, in commit order. A receiver that falls too far
    /// behind gets `RecvError::Lagged` and should re-read the state it cares about.
    fn watch(&self) -> tokio::sync::broadcast::Receiver<WatchEvent>;

    /// Deletes up to [`PURGE_BATCH`] expired items (the oldest expiries first) and
    /// emits a `Delete` event for each; returns how many. One short transaction,
    /// so writers never wait long behind it: call again while it returns a full batch.
    async fn purge_expired(&self) -> Result<usize>;

    /// `Err(why)` while this process may be serving a stale view: a shared backend's
    /// change feed is disconnected or behind. Embedded backends are always current.
    fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// `Err(why)` while recent writes have failed (an unwritable database directory or
    /// file, a full disk) and none has succeeded since: the service reports unready
    /// (`/readyz`) but keeps answering, refusing only what must be written.
    fn writable(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}
