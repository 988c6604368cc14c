//! Key-value writes for the group-commit writer: one statement per run of ops.
//!
//! A run is ops of one kind on distinct keys (a single op is a run of one). Its statement
//! takes the ops as column arrays (`UNNEST … WITH ORDINALITY`), decides in one snapshot
//! which ops apply (live / absent / expected revision), numbers only those from the
//! batch's next revision in op order, writes them and their change-feed rows, and returns
//! every op's outcome: its revision, or whether the key was live (to tell `Conflict` from
//! `NotFound`). So a failed op leaves no gap in the revisions and costs no extra round
//! trip. Keys are distinct within a run, so no op of a run depends on another. Every
//! writer holds the `meta.revision` row lock while this runs, so the snapshot the
//! statement decides on is the state its writes apply to.

use std::sync::LazyLock;

use sqlx::Row as _;
use sqlx::{AssertSqlSafe, PgConnection};

use super::write::CHANNEL;
use super::writer::Chain;

use crate::sqlite::{backend, to_ns};
use crate::store::Op;
use crate::{Result, StoreError};

/// The kind of an op; runs of one kind are applied together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Create,
    Put,
    Update,
    Delete,
}

impl Kind {
    pub(super) fn of(op: &Op) -> Kind {
        match op {
            Op::Create { .. } => Kind::Create,
            Op::Put { .. } => Kind::Put,
            Op::Update { .. } => Kind::Update,
            Op::Delete { .. } => Kind::Delete,
        }
    }
}

/// Live-row condition on the joined `kv` row; `now` is the given parameter.
macro_rules! live {
    ($now:literal) => {
        concat!(
            "(kv.expires_ns IS NULL OR kv.expires_ns > ",
            $now,
            "::BIGINT)"
        )
    };
}

/// Numbers the ops that apply (`n`), writes them (`w`), appends their change rows (`f`)
/// and reports every op; `$base` is the revision before the run.
macro_rules! tail {
    ($base:literal, $write:expr, $feed_cols:literal) => {
        concat!(
            "n AS (SELECT c.*, ",
            $base,
            "::BIGINT + row_number() OVER (ORDER BY c.ord) AS rev FROM c WHERE c.ok), ",
            "w AS (",
            $write,
            " RETURNING kv.key), ",
            "f AS (INSERT INTO changes (revision, key, value, expires_ns, deleted) ",
            "SELECT n.rev, n.key, ",
            $feed_cols,
            " FROM n JOIN w ON w.key = n.key RETURNING key, revision) ",
            "SELECT c.ord, c.live, f.revision FROM c LEFT JOIN f ON f.key = c.key ORDER BY c.ord"
        )
    };
}

/// The last part of every run statement, where [`with_finish`] adds its own.
const REPORT: &str =
    "SELECT c.ord, c.live, f.revision FROM c LEFT JOIN f ON f.key = c.key ORDER BY c.ord";

/// `sql` (a run statement with `params` parameters) that also does what the batch's
/// finishing statement would, for a batch that is this one run: appends the audit rows
/// if every op applied (`$p+7` = the number of ops), advances the revision counter by
/// the ops that applied and notifies (`$p+8` = the channel). One round trip fewer.
fn with_finish(sql: &str, params: usize) -> String {
    let head = sql.strip_suffix(REPORT).unwrap_or(sql);
    let p = |i: usize| format!("${}", params + i);
    format!(
        "{head}, a AS (INSERT INTO audit (seq, time, type, fields, prev_hash, hash) \
         SELECT * FROM UNNEST({}::BIGINT[], {}::TEXT[], {}::TEXT[], {}::TEXT[], {}::TEXT[], \
         {}::TEXT[]) WHERE (SELECT count(*) FROM f) = {}::BIGINT), \
         m AS (UPDATE meta SET value = value + (SELECT count(*) FROM f) \
         WHERE name = 'revision' AND EXISTS (SELECT 1 FROM f) RETURNING value), \
         t AS MATERIALIZED (SELECT pg_notify({}, value::TEXT) FROM m) \
         SELECT c.ord, c.live, f.revision, (SELECT count(*) FROM t) \
         FROM c LEFT JOIN f ON f.key = c.key ORDER BY c.ord",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8)
    )
}

/// The run statements with the batch's finish folded in, by kind.
static FINISHING: LazyLock<[String; 4]> = LazyLock::new(|| {
    [
        with_finish(CREATE, 5),
        with_finish(PUT, 4),
        with_finish(UPDATE, 6),
        with_finish(DELETE, 4),
    ]
});

/// $1 keys, $2 values, $3 expiries, $4 base revision, $5 now.
const CREATE: &str = concat!(
    "WITH v AS (SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[]) ",
    "WITH ORDINALITY AS v(key, value, expires_ns, ord)), ",
    "c AS (SELECT v.*, kv.key IS NOT NULL AS live, kv.key IS NULL AS ok FROM v ",
    "LEFT JOIN kv ON kv.key = v.key AND ",
    live!("$5"),
    "), ",
    // The guard repeats the decision: a row that slipped in would show as a gap, not be
    // overwritten.
    tail!(
        "$4",
        "INSERT INTO kv (key, value, revision, expires_ns) \
         SELECT key, value, rev, expires_ns FROM n ON CONFLICT (key) DO UPDATE SET \
         value = EXCLUDED.value, revision = EXCLUDED.revision, expires_ns = EXCLUDED.expires_ns \
         WHERE kv.expires_ns IS NOT NULL AND kv.expires_ns <= $5::BIGINT",
        "n.value, n.expires_ns, false"
    )
);

/// $1 keys, $2 values, $3 expiries, $4 base revision.
const PUT: &str = concat!(
    "WITH v AS (SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[]) ",
    "WITH ORDINALITY AS v(key, value, expires_ns, ord)), ",
    "c AS (SELECT v.*, true AS live, true AS ok FROM v), ",
    tail!(
        "$4",
        "INSERT INTO kv (key, value, revision, expires_ns) \
         SELECT key, value, rev, expires_ns FROM n ON CONFLICT (key) DO UPDATE SET \
         value = EXCLUDED.value, revision = EXCLUDED.revision, expires_ns = EXCLUDED.expires_ns",
        "n.value, n.expires_ns, false"
    )
);

/// $1 keys, $2 values, $3 expiries, $4 expected revisions, $5 base revision, $6 now.
const UPDATE: &str = concat!(
    "WITH v AS (SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[]) ",
    "WITH ORDINALITY AS v(key, value, expires_ns, expected, ord)), ",
    "c AS (SELECT v.*, kv.key IS NOT NULL AS live, ",
    "kv.key IS NOT NULL AND (v.expected IS NULL OR kv.revision = v.expected) AS ok FROM v ",
    "LEFT JOIN kv ON kv.key = v.key AND ",
    live!("$6"),
    "), ",
    tail!(
        "$5",
        "UPDATE kv SET value = n.value, revision = n.rev, expires_ns = n.expires_ns \
         FROM n WHERE kv.key = n.key",
        "n.value, n.expires_ns, false"
    )
);

/// $1 keys, $2 expected revisions, $3 base revision, $4 now.
const DELETE: &str = concat!(
    "WITH v AS (SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[]) ",
    "WITH ORDINALITY AS v(key, expected, ord)), ",
    "c AS (SELECT v.*, kv.key IS NOT NULL AS live, ",
    "kv.key IS NOT NULL AND (v.expected IS NULL OR kv.revision = v.expected) AS ok FROM v ",
    "LEFT JOIN kv ON kv.key = v.key AND ",
    live!("$4"),
    "), ",
    tail!(
        "$3",
        "DELETE FROM kv USING n WHERE kv.key = n.key",
        "NULL::BYTEA, NULL::BIGINT, true"
    )
);

/// Applies `ops` — all of `kind`, distinct keys — as one statement. The ops that apply
/// get the revisions after `*revision`, in op order, and `*revision` advances past them.
/// Returns each op's outcome: its revision (deletes are numbered too: watchers order them
/// against other servers' puts) or its own error. An `Err` means the database failed (or
/// answered inconsistently) and the batch must be abandoned.
///
/// With `finish` (the audit rows of every op's txn, for a batch that is this run alone)
/// the statement also advances the revision counter and notifies, and appends those
/// audit rows if every op applied; if one did not, the caller appends the right ones.
pub(super) async fn apply_run(
    conn: &mut PgConnection,
    kind: Kind,
    ops: &[&Op],
    now: i64,
    revision: &mut i64,
    finish: Option<&Chain>,
) -> Result<Vec<Result<i64>>> {
    let keys: Vec<&str> = ops.iter().map(|op| op.key()).collect();
    let mut values: Vec<&[u8]> = Vec::with_capacity(ops.len());
    let mut expires: Vec<Option<i64>> = Vec::with_capacity(ops.len());
    let mut expected: Vec<Option<i64>> = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Create {
                value, expires: e, ..
            }
            | Op::Put {
                value, expires: e, ..
            } => {
                values.push(value);
                expires.push(e.map(to_ns));
            }
            Op::Update {
                value,
                expires: e,
                expected_revision,
                ..
            } => {
                values.push(value);
                expires.push(e.map(to_ns));
                expected.push(*expected_revision);
            }
            Op::Delete {
                expected_revision, ..
            } => expected.push(*expected_revision),
        }
        if Kind::of(op) != kind {
            return Err(StoreError::Backend(
                "internal: mixed op kinds in a run".into(),
            ));
        }
    }
    let base = *revision;
    let sql: &str = match (kind, finish.is_some()) {
        (Kind::Create, false) => CREATE,
        (Kind::Put, false) => PUT,
        (Kind::Update, false) => UPDATE,
        (Kind::Delete, false) => DELETE,
        (kind, true) => &FINISHING[kind as usize],
    };
    let query = sqlx::query(AssertSqlSafe(sql));
    let query = match kind {
        Kind::Create => query
            .bind(keys)
            .bind(values)
            .bind(expires)
            .bind(base)
            .bind(now),
        Kind::Put => query.bind(keys).bind(values).bind(expires).bind(base),
        Kind::Update => query
            .bind(keys)
            .bind(values)
            .bind(expires)
            .bind(expected)
            .bind(base)
            .bind(now),
        Kind::Delete => query.bind(keys).bind(expected).bind(base).bind(now),
    };
    let query = match finish {
        Some(chain) => query
            .bind(&chain.seqs)
            .bind(&chain.times)
            .bind(&chain.types)
            .bind(&chain.fields)
            .bind(&chain.prev)
            .bind(&chain.hashes)
            .bind(ops.len() as i64)
            .bind(CHANNEL),
        None => query,
    };
    let err = |e| backend("writing items", e);
    let rows = query.fetch_all(&mut *conn).await.map_err(err)?;
    if rows.len() != ops.len() {
        return Err(StoreError::Backend(format!(
            "writing items: {} outcomes for {} ops",
            rows.len(),
            ops.len()
        )));
    }
    let mut out = Vec::with_capacity(ops.len());
    let mut next = base;
    for (row, op) in rows.iter().zip(ops) {
        let live: bool = row.try_get(1).map_err(err)?;
        let rev: Option<i64> = row.try_get(2).map_err(err)?;
        let key = op.key();
        out.push(match (rev, kind) {
            // The feed must stay contiguous: anything but the next revision is a bug or
            // a write that bypassed the revision lock, and nothing of it may commit.
            (Some(rev), _) if rev == next + 1 => {
                next = rev;
                Ok(rev)
            }
            (Some(rev), _) => {
                return Err(StoreError::Backend(format!(
                    "writing {key}: revision {rev} where {} was due",
                    next + 1
                )));
            }
            (None, Kind::Create) => Err(StoreError::AlreadyExists(key.to_string())),
            (None, Kind::Put) => {
                return Err(StoreError::Backend(format!(
                    "writing {key}: the upsert reported no change"
                )));
            }
            (None, Kind::Update | Kind::Delete) if live => {
                Err(StoreError::Conflict(key.to_string()))
            }
            (None, Kind::Update | Kind::Delete) => Err(StoreError::NotFound(key.to_string())),
        });
    }
    *revision = next;
    Ok(out)
}

/// Deletes every item expired at `now` (each with a change row, numbered after
/// `*revision` in key order) and advances `*revision`; returns how many.
pub(super) async fn purge(conn: &mut PgConnection, now: i64, revision: &mut i64) -> Result<usize> {
    let purged: Vec<i64> = sqlx::query_scalar(
        "WITH d AS (DELETE FROM kv WHERE key IN (SELECT key FROM kv \
         WHERE expires_ns IS NOT NULL AND expires_ns <= $1 ORDER BY expires_ns LIMIT $3) \
         RETURNING key), \
         n AS (SELECT key, row_number() OVER (ORDER BY key) AS i FROM d) \
         INSERT INTO changes (revision, key, value, expires_ns, deleted) \
         SELECT $2 + i, key, NULL, NULL, true FROM n RETURNING revision",
    )
    .bind(now)
    .bind(*revision)
    .bind(crate::PURGE_BATCH as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| backend("purging expired items", e))?;
    *revision += purged.len() as i64;
    Ok(purged.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each statement names exactly the parameters its binder supplies (PostgreSQL
    /// refuses a statement bound with more or fewer).
    #[test]
    fn statements_use_the_parameters_they_are_given() {
        let finishing = [
            (FINISHING[0].as_str(), 13),
            (FINISHING[1].as_str(), 12),
            (FINISHING[2].as_str(), 14),
            (FINISHING[3].as_str(), 12),
        ];
        for (sql, n) in [(CREATE, 5), (PUT, 4), (UPDATE, 6), (DELETE, 4)]
            .into_iter()
            .chain(finishing)
        {
            for i in 1..=n {
                assert!(sql.contains(&format!("${i}")), "${i} missing in {sql}");
            }
            assert!(
                !sql.contains(&format!("${}", n + 1)),
                "extra parameter in {sql}"
            );
        }
    }
}
