//! sigil-store: the storage layer of the Sigil auth service.
//!
//! [`Store`] is a small key-value + transaction + watch interface with a hash-chained
//! audit log. [`SqliteStore`] is the embedded default backend; [`PostgresStore`] lets several
//! auth servers share one PostgreSQL database; [`conformance`] holds the behavioural test
//! suite every backend must pass.
//!
//! Values may hold secrets: they never appear in logs, error messages or `Debug` output.
//! Errors name keys only.

mod audit;
pub mod conformance;
pub mod metrics;
mod postgres;
mod sqlite;
mod store;

pub use audit::{GENESIS_HASH, audit_hash, canonical_event_json};
pub use postgres::{PostgresStore, has_password as url_has_password, redacted as redacted_url};
pub use sqlite::SqliteStore;
pub use store::{
    AuditQuery, AuditRecord, AuditVerification, Item, NewAuditEvent, Op, PURGE_BATCH, Store, Txn,
    WatchEvent,
};

/// Result type of every store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Errors returned by a [`Store`]. Messages name keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `Create` found a live item under this key.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// An `Update`/`Delete` found no live item under this key.
    #[error("{0} not found")]
    NotFound(String),
    /// An `Update`/`Delete` carried an `expected_revision` that is no longer current.
    #[error("{0} was changed concurrently; retry")]
    Conflict(String),
    /// The storage backend failed (I/O, corruption, shutdown, ...). Nothing was committed.
    #[error("storage backend: {0}")]
    Backend(String),
}
