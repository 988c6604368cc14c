//! Whether the database is taking writes. A failed write batch (an unwritable or
//! immutable database file, a full disk) makes `Store::health` fail, so the auth
//! service's `/readyz` answers 503 and load balancers send agents elsewhere. A
//! successful batch clears it at once; with no writes at all the mark lapses after
//! [`FAILED_FOR`], so a server nobody writes to comes back into rotation by itself
//! and the next write tests the disk again (and marks it again if it still fails).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one failed batch keeps the store unready without a newer success.
pub(super) const FAILED_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct WriteHealth {
    /// When the last batch failed, if none has succeeded since.
    failed: Mutex<Option<Instant>>,
}

impl WriteHealth {
    pub(super) fn failed(&self) {
        if let Ok(mut f) = self.failed.lock() {
            *f = Some(Instant::now());
        }
    }

    pub(super) fn succeeded(&self) {
        if let Ok(mut f) = self.failed.lock() {
            *f = None;
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let Ok(f) = self.failed.lock() else {
            return Ok(());
        };
        match &*f {
            // The reason (paths, SQLite's message) is in the log, not for
            // anonymous `/readyz` callers.
            Some(at) if at.elapsed() < FAILED_FOR => Err(format!(
                "database writes failed {} s ago (the reason is in the auth service's log)",
                at.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_marks_unready_until_a_success() {
        let h = WriteHealth::default();
        assert!(h.check().is_ok());
        h.failed();
        let e = h.check().expect_err("unready after a failed write");
        assert!(e.contains("database writes failed"), "{e}");
        h.succeeded();
        assert!(h.check().is_ok());
    }
}
