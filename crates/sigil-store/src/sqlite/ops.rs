//! Key-value writes, executed as bulk statements.
//!
//! SQLite work per op is a few microseconds; a round trip to sqlx's connection thread
//! costs more (two thread wake-ups). So a run of same-kind ops on distinct keys is applied
//! with one statement per chunk (`UPDATE … FROM (VALUES …)`, `INSERT … SELECT … FROM
//! (VALUES …) ON CONFLICT …`, `DELETE … WHERE rowid IN (…)`), each `RETURNING` the keys it
//! changed. Keys are distinct within a chunk, so a key that was not returned was left
//! untouched by the chunk and one look-up afterwards tells `NotFound` from `Conflict`
//! exactly as it stood when the op ran.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Row as _, SqliteConnection};

use super::{backend, to_ns};
use crate::store::Op;
use crate::{Result, StoreError};

/// Ops per bulk statement, largest first; a few fixed shapes keep sqlx's per-connection
/// prepared-statement cache small and hot. The largest (64 rows × 5 parameters) is far
/// below SQLite's bound-parameter limit.
pub(super) const CHUNKS: [usize; 4] = [64, 16, 4, 1];

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

    fn index(self) -> usize {
        self as usize
    }
}

/// Prepared SQL text for every (kind, chunk size).
pub(super) struct OpSql {
    sql: [Vec<(usize, String)>; 4],
}

impl OpSql {
    pub(super) fn new() -> OpSql {
        let build = |kind: Kind| CHUNKS.iter().map(|&n| (n, chunk_sql(kind, n))).collect();
        OpSql {
            sql: [
                build(Kind::Create),
                build(Kind::Put),
                build(Kind::Update),
                build(Kind::Delete),
            ],
        }
    }

    fn get(&self, kind: Kind, n: usize) -> Option<&str> {
        self.sql[kind.index()]
            .iter()
            .find(|(size, _)| *size == n)
            .map(|(_, s)| s.as_str())
    }
}

fn values(n: usize, row: &str) -> String {
    vec![row; n].join(", ")
}

/// Live-row condition; `now` is bound as the statement's last parameter.
const LIVE: &str = "(kv.expires_ns IS NULL OR kv.expires_ns > ?)";

fn chunk_sql(kind: Kind, n: usize) -> String {
    match kind {
        // Replaces an expired row in place; a live one makes the upsert a no-op, and
        // RETURNING then omits the key.
        Kind::Create => format!(
            "INSERT INTO kv (key, value, revision, expires_ns) \
             SELECT column1, column2, column3, column4 FROM (VALUES {}) WHERE true \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             revision = excluded.revision, expires_ns = excluded.expires_ns \
             WHERE kv.expires_ns IS NOT NULL AND kv.expires_ns <= ? RETURNING key",
            values(n, "(?, ?, ?, ?)")
        ),
        Kind::Put => format!(
            "INSERT INTO kv (key, value, revision, expires_ns) \
             SELECT column1, column2, column3, column4 FROM (VALUES {}) WHERE true \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             revision = excluded.revision, expires_ns = excluded.expires_ns RETURNING key",
            values(n, "(?, ?, ?, ?)")
        ),
        Kind::Update => format!(
            "UPDATE kv SET value = v.column2, revision = v.column3, expires_ns = v.column4 \
             FROM (VALUES {}) AS v \
             WHERE kv.key = v.column1 AND (v.column5 IS NULL OR kv.revision = v.column5) \
             AND {LIVE} RETURNING kv.key",
            values(n, "(?, ?, ?, ?, ?)")
        ),
        Kind::Delete => format!(
            "DELETE FROM kv WHERE rowid IN (SELECT kv.rowid FROM (VALUES {}) AS v \
             JOIN kv ON kv.key = v.column1 \
             WHERE (v.column2 IS NULL OR kv.revision = v.column2) AND {LIVE}) RETURNING key",
            values(n, "(?, ?)")
        ),
    }
}

/// Applies `ops` — all of `kind`, distinct keys — in order, in chunks. Every op except a
/// Delete is given the next revision (a failed op leaves a gap; revisions only need to
/// grow). Returns each op's outcome: its new revision (0 for a Delete) or its own error.
/// An `Err` means the database failed and the batch must be abandoned.
pub(super) async fn apply_run(
    conn: &mut SqliteConnection,
    sql: &OpSql,
    kind: Kind,
    ops: &[&Op],
    now: i64,
    revision: &mut i64,
) -> Result<Vec<Result<i64>>> {
    let mut out = Vec::with_capacity(ops.len());
    let mut rest = ops;
    while !rest.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        let first = *revision + 1;
        if kind != Kind::Delete {
            *revision += n as i64;
        }
        apply_chunk(conn, sql, kind, chunk, now, first, &mut out).await?;
        rest = tail;
    }
    Ok(out)
}

async fn apply_chunk(
    conn: &mut SqliteConnection,
    sql: &OpSql,
    kind: Kind,
    chunk: &[&Op],
    now: i64,
    first_revision: i64,
    out: &mut Vec<Result<i64>>,
) -> Result<()> {
    let text = sql
        .get(kind, chunk.len())
        .ok_or_else(|| StoreError::Backend(format!("no statement for {} ops", chunk.len())))?;
    let mut q = sqlx::query(AssertSqlSafe(text));
    for (i, op) in chunk.iter().enumerate() {
        let rev = first_revision + i as i64;
        q = match op {
            Op::Create {
                key,
                value,
                expires,
            }
            | Op::Put {
                key,
                value,
                expires,
            } => q
                .bind(key.as_str())
                .bind(value.as_slice())
                .bind(rev)
                .bind(expires.map(to_ns)),
            Op::Update {
                key,
                value,
                expires,
                expected_revision,
            } => q
                .bind(key.as_str())
                .bind(value.as_slice())
                .bind(rev)
                .bind(expires.map(to_ns))
                .bind(*expected_revision),
            Op::Delete {
                key,
                expected_revision,
            } => q.bind(key.as_str()).bind(*expected_revision),
        };
    }
    if kind != Kind::Put {
        q = q.bind(now);
    }
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| backend("writing items", e))?;
    let mut changed = HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: String = row.try_get(0).map_err(|e| backend("writing items", e))?;
        changed.insert(key);
    }
    for (i, op) in chunk.iter().enumerate() {
        let key = op.key();
        let outcome = if changed.contains(key) {
            Ok(if kind == Kind::Delete {
                0
            } else {
                first_revision + i as i64
            })
        } else {
            match kind {
                Kind::Create => Err(StoreError::AlreadyExists(key.to_string())),
                Kind::Put => {
                    return Err(StoreError::Backend(format!(
                        "writing {key}: the upsert reported no change"
                    )));
                }
                Kind::Update | Kind::Delete => Err(classify(conn, key, now).await?),
            }
        };
        out.push(outcome);
    }
    Ok(())
}

/// Why a guarded Update/Delete changed nothing: the key is absent or expired
/// (`NotFound`), or it is live with another revision (`Conflict`).
async fn classify(conn: &mut SqliteConnection, key: &str, now: i64) -> Result<StoreError> {
    let live =
        sqlx::query("SELECT 1 FROM kv WHERE key = ?1 AND (expires_ns IS NULL OR expires_ns > ?2)")
            .bind(key)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(&format!("reading {key}"), e))?;
    Ok(match live {
        Some(_) => StoreError::Conflict(key.to_string()),
        None => StoreError::NotFound(key.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_size_has_sql_with_matching_parameter_count() {
        let sql = OpSql::new();
        for (kind, per_row, trailing) in [
            (Kind::Create, 4, 1),
            (Kind::Put, 4, 0),
            (Kind::Update, 5, 1),
            (Kind::Delete, 2, 1),
        ] {
            for n in CHUNKS {
                let text = sql.get(kind, n).expect("statement exists");
                assert_eq!(
                    text.matches('?').count(),
                    n * per_row + trailing,
                    "{kind:?} × {n}"
                );
            }
        }
    }
}
