//! An in-memory copy of the hot resource kinds (roles, bots, locks,
//! workload identities, X.509-SVID revocations, databases), kept current from
//! the store's watch stream so that per-request checks (locks, role
//! evaluation) never wait on the database.
//!
//! Bot instances grow with the fleet, so they are neither loaded at start (a
//! server with a million instances is ready in seconds) nor all kept: the
//! cache holds the [`INSTANCE_CACHE_CAP`] most recently written ones, as raw
//! items with their revision, filled by writes (this server's and the change
//! feed's) only. A miss reads the store. A cached copy is never older than
//! the newest write this server has seen, and a renewal's compare-and-swap on
//! its revision catches the rest and re-reads the store. Reads never insert:
//! a read racing a newer write or a delete could otherwise cache the older state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use sigil_store::{Item, Op, Store, WatchEvent};
use sigil_types::{Bot, Lock, LockTarget, Role, WorkloadIdentity, WorkloadIdentityX509Revocation};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;

use crate::keys;

/// The kinds loaded whole at start and kept whole.
const LOADED: [&str; 7] = [
    keys::ROLES,
    keys::BOTS,
    keys::LOCKS,
    keys::WORKLOAD_IDENTITIES,
    keys::REVOCATIONS,
    keys::DATABASES,
    keys::APPS,
];

/// How many bot instances the cache keeps (the most recently written). At
/// ~3 KB a record, about 200 MB; the fleet's steady renewals fit, a million
/// idle instances do not need to.
pub const INSTANCE_CACHE_CAP: usize = 65_536;

fn followed(key: &str) -> bool {
    key.starts_with(keys::BOT_INSTANCES) || LOADED.iter().any(|p| key.starts_with(p))
}

#[derive(Default)]
struct Snapshot {
    /// The newest revision applied per key of the low-churn kinds (bot instances keep
    /// theirs in the item), deletions included: with several servers a server's own
    /// write, applied at once, may come after a newer one from the change feed.
    seen: HashMap<String, i64>,
    roles: HashMap<String, Role>,
    bots: HashMap<String, Bot>,
    locks: BTreeMap<String, Lock>,
    /// Raw bot instance items by store key, at most [`INSTANCE_CACHE_CAP`].
    instances: HashMap<String, Item>,
    /// Keys of `instances` in the order they entered (first out first); may
    /// name keys deleted since, which eviction skips.
    instance_order: std::collections::VecDeque<String>,
    workload_identities: BTreeMap<String, WorkloadIdentity>,
    revocations: BTreeMap<String, WorkloadIdentityX509Revocation>,
    databases: BTreeMap<String, sigil_types::Database>,
    apps: BTreeMap<String, sigil_types::App>,
}

/// What changed, for followers of [`Cache::subscribe`]. Each counter moves
/// when its kinds change; followers compare and recompute what they derive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    /// Roles, bots and workload identities (what a bot may be issued).
    pub policy: u64,
    /// Locks.
    pub locks: u64,
    /// X.509-SVID revocations.
    pub revocations: u64,
}

/// The watch-fed cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<RwLock<Snapshot>>,
    changes: Arc<tokio::sync::watch::Sender<Revisions>>,
    /// Locked instance id → its bot, for the SSH KRL (see `ssh_access`).
    owners: Arc<std::sync::Mutex<HashMap<String, Option<String>>>>,
}

impl Default for Cache {
    fn default() -> Self {
        // Start the policy counter at a per-process random value: agents compare
        // it for equality, so a restarted server must not repeat an old value.
        let start = Revisions {
            policy: u64::from(rand_u32()) << 16,
            ..Revisions::default()
        };
        Cache {
            inner: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(start).0),
            owners: Arc::default(),
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // aws-lc's RNG; on failure fall back to the clock (uniqueness, not secrecy).
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return OffsetDateTime::now_utc().nanosecond();
    }
    u32::from_le_bytes(b)
}

impl Cache {
    /// Load the cached kinds and follow the store's changes in the background.
    pub async fn start(store: Arc<dyn Store>) -> anyhow::Result<Cache> {
        let cache = Cache::default();
        // Subscribe before loading so no change between the two is lost.
        let mut rx = store.watch();
        cache.reload(store.as_ref()).await?;
        let c = cache.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(WatchEvent::Put(item)) => c.apply_put(&item),
                    Ok(WatchEvent::Delete { key, revision }) => c.apply_delete(&key, revision),
                    Ok(WatchEvent::Reset) => {
                        tracing::warn!("the store's change feed lost continuity; reloading");
                        c.reload_until_done(store.as_ref()).await;
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "cache fell behind the store; reloading");
                        c.reload_until_done(store.as_ref()).await;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok(cache)
    }

    /// Reloads, retrying until it succeeds: a cache that missed changes must not keep
    /// serving (a missed lock would be a lock not enforced).
    async fn reload_until_done(&self, store: &dyn Store) {
        let mut wait = std::time::Duration::from_millis(100);
        while let Err(e) = self.reload(store).await {
            tracing::error!(error = %e, "cache reload failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(2));
        }
    }

    async fn reload(&self, store: &dyn Store) -> anyhow::Result<()> {
        let mut items = Vec::new();
        for prefix in LOADED {
            items.extend(store.list(prefix).await?);
        }
        let mut snap = Snapshot::default();
        for item in &items {
            snap.newer(&item.key, item.revision);
            insert(&mut snap, item);
        }
        *self.write() = snap;
        self.changes.send_modify(|r| {
            r.policy += 1;
            r.locks += 1;
            r.revocations += 1;
        });
        Ok(())
    }

    /// Follow changes to the cached policy, locks and revocations.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Revisions> {
        self.changes.subscribe()
    }

    /// Tell followers that what agents are issued changed without a cached kind
    /// changing (a CA rotation step): workload and SSH streams re-send and re-issue.
    pub fn bump_policy(&self) {
        self.changes.send_modify(|r| r.policy += 1);
    }

    /// Bump the counter of the kind stored under `key`.
    fn notify(&self, key: &str) {
        if key.starts_with(keys::BOT_INSTANCES) {
            return;
        }
        self.changes.send_modify(|r| {
            if key.starts_with(keys::LOCKS) {
                r.locks += 1;
            } else if key.starts_with(keys::REVOCATIONS) {
                r.revocations += 1;
            } else {
                r.policy += 1;
            }
        });
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply a committed write right away (read-your-writes for the writer;
    /// the watch event that follows is idempotent).
    pub fn apply_put(&self, item: &Item) {
        if followed(&item.key) {
            {
                let mut s = self.write();
                if !s.newer(&item.key, item.revision) {
                    return;
                }
                insert(&mut s, item);
            }
            self.notify(&item.key);
        }
    }

    /// Reads a bot and its roles from the store into the cache (puts only: what
    /// exists; an absence is left to the change feed).
    pub async fn read_through_bot(&self, store: &dyn Store, bot: &str) -> anyhow::Result<()> {
        let Some(item) = store.get(&keys::bot(bot)).await? else {
            return Ok(());
        };
        let roles: Vec<String> = serde_json::from_slice::<Bot>(&item.value)
            .map(|b| b.spec.roles)
            .unwrap_or_default();
        self.apply_put(&item);
        for role in roles {
            if let Some(r) = store.get(&keys::role(&role)).await? {
                self.apply_put(&r);
            }
        }
        Ok(())
    }

    /// Apply committed ops (with the revisions `commit` returned) at once, so
    /// this server enforces them before the watch event arrives; no re-read.
    pub fn apply_committed(&self, ops: &[Op], revisions: &[i64]) {
        for (op, rev) in ops.iter().zip(revisions) {
            match op.committed(*rev) {
                WatchEvent::Put(item) => self.apply_put(&item),
                WatchEvent::Delete { key, revision } => self.apply_delete(&key, revision),
                WatchEvent::Reset => {}
            }
        }
    }

    /// `revision` 0: the backend does not number deletes (one process, in order).
    pub fn apply_delete(&self, key: &str, revision: i64) {
        if revision != 0 && !self.write().newer(key, revision) {
            return;
        }
        self.delete_entry(key);
        self.notify(key);
    }

    fn delete_entry(&self, key: &str) {
        let mut s = self.write();
        if let Some(n) = key.strip_prefix(keys::WORKLOAD_IDENTITIES) {
            s.workload_identities.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::REVOCATIONS) {
            s.revocations.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::DATABASES) {
            s.databases.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::APPS) {
            s.apps.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::ROLES) {
            s.roles.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::BOTS) {
            s.bots.remove(n);
        } else if let Some(n) = key.strip_prefix(keys::LOCKS) {
            s.locks.remove(n);
        } else if key.starts_with(keys::BOT_INSTANCES) {
            s.instances.remove(key);
        }
    }

    /// The bot of a locked instance id as looked up before: `Some(None)` when it
    /// did not exist then (ids are never reused), `None` when not looked up.
    pub fn instance_owner(&self, id: &str) -> Option<Option<String>> {
        self.owners().get(id).cloned()
    }

    pub fn remember_instance_owner(&self, id: &str, bot: Option<String>) {
        self.owners().insert(id.to_string(), bot);
    }

    /// Keep the looked-up owners of these ids only (the instances locked now).
    pub fn forget_instance_owners_except(&self, ids: &std::collections::BTreeSet<String>) {
        self.owners().retain(|id, _| ids.contains(id));
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many bot instances are cached now (at most [`INSTANCE_CACHE_CAP`]).
    #[cfg(test)]
    fn cached_instances(&self) -> usize {
        self.read().instances.len()
    }

    /// A bot instance item as last seen (may be stale; compare-and-swap on
    /// its revision detects that).
    pub fn instance_item(&self, key: &str) -> Option<Item> {
        self.read().instances.get(key).cloned()
    }

    /// Every database, by name.
    pub fn databases(&self) -> Vec<sigil_types::Database> {
        self.read().databases.values().cloned().collect()
    }
    pub fn database(&self, name: &str) -> Option<sigil_types::Database> {
        self.read().databases.get(name).cloned()
    }

    /// Every app, by name.
    pub fn apps(&self) -> Vec<sigil_types::App> {
        self.read().apps.values().cloned().collect()
    }

    /// Every workload identity, by name.
    pub fn workload_identities(&self) -> Vec<WorkloadIdentity> {
        self.read().workload_identities.values().cloned().collect()
    }
    pub fn workload_identity(&self, name: &str) -> Option<WorkloadIdentity> {
        self.read().workload_identities.get(name).cloned()
    }
    /// Every X.509-SVID revocation, by serial.
    pub fn revocations(&self) -> Vec<WorkloadIdentityX509Revocation> {
        self.read().revocations.values().cloned().collect()
    }
    /// Whether the X.509-SVID with this normalised serial is revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.read().revocations.contains_key(serial_hex)
    }

    pub fn bot(&self, name: &str) -> Option<Bot> {
        self.read().bots.get(name).cloned()
    }
    pub fn bots(&self) -> Vec<Bot> {
        self.read().bots.values().cloned().collect()
    }
    /// Locks in force (not expired).
    pub fn locks(&self) -> Vec<Lock> {
        let now = OffsetDateTime::now_utc();
        self.read()
            .locks
            .values()
            .filter(|l| l.metadata.expires.is_none_or(|e| e > now))
            .cloned()
            .collect()
    }

    /// The first lock in force that targets any of `targets`.
    pub fn lock_for(&self, targets: &[LockTarget]) -> Option<Lock> {
        let now = OffsetDateTime::now_utc();
        let s = self.read();
        s.locks
            .values()
            .find(|l| {
                l.metadata.expires.is_none_or(|e| e > now) && targets.contains(&l.spec.target)
            })
            .cloned()
    }

    /// Roles by name; a name that no longer exists is reported.
    pub fn roles(&self, names: &[String]) -> Result<Vec<Role>, String> {
        let s = self.read();
        names
            .iter()
            .map(|n| s.roles.get(n).cloned().ok_or_else(|| n.clone()))
            .collect()
    }
}

impl Snapshot {
    /// Whether a change at `revision` to `key` is newer than what was applied (and
    /// records it). Bot instances are ordered by their items instead.
    fn newer(&mut self, key: &str, revision: i64) -> bool {
        if key.starts_with(keys::BOT_INSTANCES) {
            return true;
        }
        match self.seen.get(key) {
            Some(&seen) if revision <= seen => false,
            _ => {
                self.seen.insert(key.to_string(), revision);
                true
            }
        }
    }
}

/// Drop the oldest cached instances until at most `cap` remain.
fn evict_instances(s: &mut Snapshot, cap: usize) {
    while s.instances.len() > cap {
        match s.instance_order.pop_front() {
            Some(old) => {
                s.instances.remove(&old);
            }
            None => break,
        }
    }
    // Deleted keys linger in the order; rebuild it before it grows unbounded.
    if s.instance_order.len() > 2 * cap.max(1) {
        let Snapshot {
            instances,
            instance_order,
            ..
        } = s;
        instance_order.retain(|k| instances.contains_key(k));
    }
}

fn insert(s: &mut Snapshot, item: &Item) {
    if item.key.starts_with(keys::BOT_INSTANCES) {
        // Watch events may arrive after a newer write was applied directly.
        let newer = s
            .instances
            .get(&item.key)
            .is_none_or(|cur| cur.revision < item.revision);
        if newer && s.instances.insert(item.key.clone(), item.clone()).is_none() {
            s.instance_order.push_back(item.key.clone());
            evict_instances(s, INSTANCE_CACHE_CAP);
        }
        return;
    }
    let parsed = if let Some(n) = item.key.strip_prefix(keys::WORKLOAD_IDENTITIES) {
        serde_json::from_slice(&item.value).map(|w| {
            s.workload_identities.insert(n.to_string(), w);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::REVOCATIONS) {
        serde_json::from_slice(&item.value).map(|r| {
            s.revocations.insert(n.to_string(), r);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::DATABASES) {
        serde_json::from_slice(&item.value).map(|d| {
            s.databases.insert(n.to_string(), d);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::APPS) {
        serde_json::from_slice(&item.value).map(|a| {
            s.apps.insert(n.to_string(), a);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::ROLES) {
        serde_json::from_slice(&item.value).map(|r| {
            s.roles.insert(n.to_string(), r);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::BOTS) {
        serde_json::from_slice(&item.value).map(|b| {
            s.bots.insert(n.to_string(), b);
        })
    } else if let Some(n) = item.key.strip_prefix(keys::LOCKS) {
        serde_json::from_slice(&item.value).map(|l| {
            s.locks.insert(n.to_string(), l);
        })
    } else {
        Ok(())
    };
    if let Err(e) = parsed {
        tracing::error!(key = %item.key, error = %e, "undecodable resource in the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_item(name: &str, bot: &str, revision: i64) -> Item {
        let json = serde_json::json!({
            "kind": "lock", "version": "v1", "metadata": {"name": name},
            "spec": {"target": {"bot": bot}}
        });
        Item {
            key: format!("{}{name}", keys::LOCKS),
            value: serde_json::to_vec(&json).expect("json"),
            revision,
            expires: None,
        }
    }

    fn locked(cache: &Cache, bot: &str) -> bool {
        cache
            .lock_for(&[LockTarget::Bot(bot.to_string())])
            .is_some()
    }

    fn instance_item(n: usize, revision: i64) -> Item {
        Item {
            key: keys::bot_instance("b", &format!("{n:06}")),
            value: b"{}".to_vec(),
            revision,
            expires: None,
        }
    }

    #[test]
    fn instances_are_bounded_and_evicted_oldest_first() {
        let cache = Cache::default();
        for n in 0..INSTANCE_CACHE_CAP + 10 {
            cache.apply_put(&instance_item(n, 1));
        }
        assert_eq!(cache.cached_instances(), INSTANCE_CACHE_CAP);
        assert!(
            cache.instance_item(&instance_item(9, 1).key).is_none(),
            "oldest out"
        );
        assert!(cache.instance_item(&instance_item(10, 1).key).is_some());
        // An update of a cached instance replaces it in place; an older
        // revision (a late watch event) does not undo it.
        cache.apply_put(&instance_item(10, 3));
        cache.apply_put(&instance_item(10, 2));
        let got = cache
            .instance_item(&instance_item(10, 1).key)
            .expect("cached");
        assert_eq!(got.revision, 3);
        // Deleted keys leave the cache at once; the order's stale entries are
        // compacted, so it stays bounded however many come and go.
        for n in 10..INSTANCE_CACHE_CAP + 10 {
            cache.apply_delete(&instance_item(n, 1).key, 0);
        }
        assert_eq!(cache.cached_instances(), 0);
        for round in 0..3 {
            for n in 0..INSTANCE_CACHE_CAP {
                cache.apply_put(&instance_item(n + round * INSTANCE_CACHE_CAP, 1));
            }
        }
        assert_eq!(cache.cached_instances(), INSTANCE_CACHE_CAP);
        assert!(cache.read().instance_order.len() <= 2 * INSTANCE_CACHE_CAP + 1);
    }

    #[test]
    fn older_changes_never_undo_newer_ones() {
        let cache = Cache::default();
        // The feed delivered another server's re-creation at 11 ...
        cache.apply_put(&lock_item("l1", "b", 11));
        assert!(locked(&cache, "b"), "the lock decodes and applies");
        // ... before this server applied its own older deletion (10): ignored.
        cache.apply_delete(&lock_item("l1", "b", 10).key, 10);
        assert!(
            locked(&cache, "b"),
            "a stale delete must not drop a newer lock"
        );
        // An older put is ignored too; a newer delete applies.
        cache.apply_put(&lock_item("l1", "other", 9));
        assert!(locked(&cache, "b"));
        cache.apply_delete(&lock_item("l1", "b", 12).key, 12);
        assert!(!locked(&cache, "b"));
        // And after that deletion, the put it replaced cannot come back.
        cache.apply_put(&lock_item("l1", "b", 11));
        assert!(
            !locked(&cache, "b"),
            "a put older than the delete stays deleted"
        );
        // Backends that do not number deletes (0) are applied in their order.
        cache.apply_put(&lock_item("l2", "c", 20));
        cache.apply_delete(&lock_item("l2", "c", 0).key, 0);
        assert!(!locked(&cache, "c"));
    }
}
