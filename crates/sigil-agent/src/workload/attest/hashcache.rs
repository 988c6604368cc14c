//! SHA-256 of a process's executable, cached by file identity.
//!
//! Hashing a large binary on every Workload API call would blow the latency
//! budget, so hashes are kept per (st_dev, st_ino, size, mtime, ctime) of the
//! stat of /proc/PID/exe (of the opened file when hashing). Any write changes
//! mtime and ctime, and ctime cannot be set back from user space, so a
//! changed file never reuses a stale hash.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

use super::{AttestError, proc_io};

/// Entries kept unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Identity of one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Counters for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that hashed the file.
    pub misses: u64,
}

/// A bounded, least-recently-used map from file identity to hex SHA-256.
pub struct ExeHashCache {
    capacity: usize,
    entries: Mutex<Entries>,
    /// One hash in flight per file: a burst of new workloads running the
    /// same binary waits for one read of it instead of each reading it.
    inflight: Mutex<HashMap<FileKey, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<FileKey, (String, u64)>,
    clock: u64,
}

impl ExeHashCache {
    /// A cache holding at most `capacity` hashes (at least one).
    pub fn new(capacity: usize) -> ExeHashCache {
        ExeHashCache {
            capacity: capacity.max(1),
            entries: Mutex::default(),
            inflight: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Lowercase hex SHA-256 of the executable of `pid`, read through
    /// /proc/PID/exe (the file the process runs, even if since replaced).
    pub async fn sha256_of_exe(&self, pid: i32) -> Result<String, AttestError> {
        let path = format!("/proc/{pid}/exe");
        // stat(2) through the link: one syscall where open + fstat + close
        // took three, on every call that hits the cache.
        let seen = FileKey::of(&std::fs::metadata(&path).map_err(proc_io("exe"))?);
        if let Some(hash) = self.get(&seen) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hash);
        }
        // A miss: hash what we open, keyed by the opened file's own identity
        // (the process may have exec'd something else since the stat).
        let file = File::open(&path).map_err(proc_io("exe"))?;
        let key = FileKey::of(&file.metadata().map_err(proc_io("exe"))?);
        if let Some(hash) = self.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hash);
        }
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(hash) = self.get(&key) {
            // Hashed by the caller we waited for.
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hash);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Reading a large file must not stall the runtime's worker.
        let result = tokio::task::spawn_blocking(move || hash_file(file))
            .await
            .map_err(|e| AttestError::io("exe", std::io::Error::other(e)))
            .and_then(|r| r.map_err(proc_io("exe")));
        if let Ok(hash) = &result {
            self.put(key, hash.clone());
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        result
    }

    fn get(&self, key: &FileKey) -> Option<String> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.clock += 1;
        let now = e.clock;
        let (hash, used) = e.map.get_mut(key)?;
        *used = now;
        Some(hash.clone())
    }

    fn put(&self, key: FileKey, hash: String) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.map.len() >= self.capacity && !e.map.contains_key(&key) {
            // A linear scan only on a miss, which already paid for hashing.
            let oldest = e
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                e.map.remove(&k);
            }
        }
        e.clock += 1;
        let now = e.clock;
        e.map.insert(key, (hash, now));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.map.len()).unwrap_or(0)
    }
}

fn hash_file(mut file: File) -> std::io::Result<String> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey {
            dev: 1,
            ino,
            size: 10,
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_for_one_binary_hashes_it_once() {
        let c = Arc::new(ExeHashCache::new(8));
        let pid = i32::try_from(std::process::id()).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.sha256_of_exe(pid).await })
            })
            .collect();
        let mut hashes = Vec::new();
        for t in tasks {
            hashes.push(t.await.unwrap().unwrap());
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 31,
                misses: 1
            }
        );
        assert!(c.inflight.lock().unwrap().is_empty(), "no gate left behind");
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let c = ExeHashCache::new(2);
        c.put(key(1), "a".into());
        c.put(key(2), "b".into());
        assert_eq!(c.get(&key(1)).as_deref(), Some("a"));
        c.put(key(3), "c".into());
        assert_eq!(c.len(), 2);
        assert!(c.get(&key(2)).is_none(), "2 was least recently used");
        assert_eq!(c.get(&key(1)).as_deref(), Some("a"));
        assert_eq!(c.get(&key(3)).as_deref(), Some("c"));
    }

    #[test]
    fn a_changed_ctime_is_a_different_file() {
        let c = ExeHashCache::new(4);
        c.put(key(1), "a".into());
        let mut changed = key(1);
        changed.ctime = (1, 0);
        assert!(c.get(&changed).is_none());
    }
}
