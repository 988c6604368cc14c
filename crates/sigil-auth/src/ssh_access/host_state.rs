//! `WatchSshHost`: the state a host's sshd decides logins with, for the
//! host's labels — pushed at once and again on every change, so a lock
//! reaches every host's `RevokedKeys` file and principals command (and ends
//! open sessions) within a second or two.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sigil_pki::{ClientIdentity, Krl, KrlCertSection};
use sigil_proto::v1::{SshHostAccess, SshHostState};
use sigil_types::{LockTarget, RoleSet};
use tokio::sync::mpsc;
use tonic::Status;

use super::user_key_id;
use crate::authz;
use crate::issuance::bot_authority;
use crate::state::{AuthState, SharedState};

/// Recompute at least this often (a lock with a TTL ends on its own).
const RECHECK_EVERY: Duration = Duration::from_secs(15);
/// At most this many labels on one host.
const MAX_HOST_LABELS: usize = 64;

/// Check the labels a host declares (they decide who may log in to it).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Status> {
    if labels.len() > MAX_HOST_LABELS {
        return Err(Status::invalid_argument(format!(
            "labels: at most {MAX_HOST_LABELS} labels on one host"
        )));
    }
    for (k, v) in labels {
        sigil_types::check_label_key(k)
            .and_then(|()| sigil_types::check_label_value(v))
            .map_err(|e| Status::invalid_argument(format!("labels: {e}")))?;
    }
    Ok(())
}

/// Stream states to `tx` until the host agent goes away or is locked.
pub async fn watch(
    state: SharedState,
    id: ClientIdentity,
    labels: BTreeMap<String, String>,
    tx: mpsc::Sender<Result<SshHostState, Status>>,
) {
    let mut changes = state.cache.subscribe();
    let mut last: Option<SshHostState> = None;
    loop {
        changes.borrow_and_update();
        let next = host_state(&state, &id, &labels).await;
        let stop = next.is_err();
        let changed = match (&next, &last) {
            (Ok(n), Some(l)) => !same_decisions(n, l),
            _ => true,
        };
        if changed {
            if tx.send(next.clone()).await.is_err() || stop {
                return;
            }
            last = next.ok();
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Keys per page when walking bot instances in the store.
const INSTANCE_PAGE: usize = 10_000;

fn storage(e: sigil_store::StoreError) -> Status {
    Status::unavailable(format!("storage: {e}"))
}

/// The instance ids of `bot`, page by page from the store's key index.
async fn instances_of(state: &AuthState, bot: &str) -> Result<Vec<String>, Status> {
    let prefix = crate::keys::bot_instances_of(bot);
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page = state
            .store
            .list_keys(&prefix, &after, INSTANCE_PAGE)
            .await
            .map_err(storage)?;
        let full = page.len() == INSTANCE_PAGE;
        for key in page {
            if let Some(id) = key.strip_prefix(&prefix) {
                ids.push(id.to_string());
            }
            after = key;
        }
        if !full {
            return Ok(ids);
        }
    }
}

/// The bot of each locked instance id that exists, as `(instance, bot)`. Ids
/// are resolved once per server (an id never moves to another bot) with one
/// walk over the instance keys for all the new ones together.
async fn instance_owners(
    state: &AuthState,
    locked: &BTreeSet<String>,
) -> Result<Vec<(String, String)>, Status> {
    let missing: BTreeSet<&str> = locked
        .iter()
        .map(String::as_str)
        .filter(|id| state.cache.instance_owner(id).is_none())
        .collect();
    if !missing.is_empty() {
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        let mut after = String::new();
        loop {
            let page = state
                .store
                .list_keys(crate::keys::BOT_INSTANCES, &after, INSTANCE_PAGE)
                .await
                .map_err(storage)?;
            let full = page.len() == INSTANCE_PAGE;
            for key in page {
                if let Some((bot, id)) = key
                    .strip_prefix(crate::keys::BOT_INSTANCES)
                    .and_then(|k| k.split_once('/'))
                    && missing.contains(id)
                {
                    found.insert(id.to_string(), bot.to_string());
                }
                after = key;
            }
            if !full {
                break;
            }
        }
        for id in missing {
            state
                .cache
                .remember_instance_owner(id, found.get(id).cloned());
        }
    }
    state.cache.forget_instance_owners_except(locked);
    Ok(locked
        .iter()
        .filter_map(|id| {
            let bot = state.cache.instance_owner(id).flatten()?;
            Some((id.clone(), bot))
        })
        .collect())
}

/// Equal apart from the KRL's generation time.
fn same_decisions(a: &SshHostState, b: &SshHostState) -> bool {
    a.revoked_key_ids == b.revoked_key_ids
        && a.revoked_serials == b.revoked_serials
        && a.access == b.access
        && a.locked_logins == b.locked_logins
        && a.ssh_user_ca == b.ssh_user_ca
}

/// The state for one host right now. Refused when the host's own bot is
/// locked, removed, or holds no role that makes it an SSH host.
pub async fn host_state(
    state: &AuthState,
    host: &ClientIdentity,
    labels: &BTreeMap<String, String>,
) -> Result<SshHostState, Status> {
    let auth = bot_authority(state, &host.bot, &host.bot_uid).map_err(Status::permission_denied)?;
    let mut targets = authz::lock_targets(host);
    targets.extend(auth.roles.iter().cloned().map(LockTarget::Role));
    if let Some(l) = state.cache.lock_for(&targets) {
        return Err(authz::locked(&l));
    }
    if !auth
        .role_set
        .roles()
        .iter()
        .any(|r| !r.spec.allow.ssh_host_principals.is_empty())
    {
        return Err(Status::permission_denied(format!(
            "bot {:?} is not an SSH host: none of its roles allows ssh_host_principals",
            host.bot
        )));
    }
    let locks = state.cache.locks();
    let locked = |kind: &str| -> BTreeSet<String> {
        locks
            .iter()
            .filter(|l| l.spec.target.kind_str() == kind)
            .map(|l| l.spec.target.value().to_string())
            .collect()
    };
    let locked_logins = locked("login");
    let locked_bots = locked("bot");
    let locked_roles = locked("role");
    let locked_instances = locked("bot_instance");

    let mut access = Vec::new();
    // Bot name → (uid, locked): for the KRL's key IDs, found below in one
    // pass over the instances (not one per bot), and only if anything is locked.
    let mut uids: std::collections::HashMap<String, (String, bool)> = Default::default();
    let mut bots = state.cache.bots();
    bots.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for bot in bots {
        let name = bot.metadata.name.as_str();
        let bot_locked = locked_bots.contains(name)
            || bot
                .spec
                .roles
                .iter()
                .any(|r| locked_roles.contains(r.as_str()));
        uids.insert(name.to_string(), (bot.spec.uid.clone(), bot_locked));
        if bot_locked {
            continue;
        }
        // A bot whose role is missing logs in nowhere.
        let Ok(roles) = state.cache.roles(&bot.spec.roles) else {
            continue;
        };
        let Some(mut h) = RoleSet::new(roles).host_logins(labels) else {
            continue;
        };
        h.logins.retain(|l| !locked_logins.contains(l));
        // Template logins are not sent: a host cannot tell which role a
        // rendered login came from, so a template on a role matching this
        // host would let in logins other roles grant only elsewhere.
        // Refused here (fail closed) until hosts get each instance's logins.
        if h.logins.is_empty() {
            continue;
        }
        access.push(SshHostAccess {
            bot: name.to_string(),
            bot_uid: bot.spec.uid.clone(),
            logins: h.logins,
            login_patterns: Vec::new(),
            deny_patterns: h.deny_patterns,
        });
    }
    let mut revoked_key_ids = BTreeSet::new();
    // Every instance of a locked bot, read from the store by the bot's prefix.
    for (bot, (uid, bot_locked)) in &uids {
        if !*bot_locked {
            continue;
        }
        for instance in instances_of(state, bot).await? {
            revoked_key_ids.insert(user_key_id(bot, uid, &instance));
        }
    }
    // A locked instance names its id only; its bot is looked up once.
    for (instance, bot) in instance_owners(state, &locked_instances).await? {
        if let Some((uid, _)) = uids.get(&bot) {
            revoked_key_ids.insert(user_key_id(&bot, uid, &instance));
        }
    }
    let cas = state.cas();
    let ssh_user_ca = cas.ssh_user_cas();
    let revoked_key_ids: Vec<String> = revoked_key_ids.into_iter().collect();
    let krl = Krl {
        version: 1,
        generated_unix: time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
        comment: format!("sigil {} ssh-user CA", state.cluster),
        // One section per trusted user CA: during a rotation either may have signed.
        certs: cas
            .ssh_user
            .trusted
            .iter()
            .map(|ca| KrlCertSection {
                ca_public_key_openssh: Some(ca.public_key_openssh()),
                serials: Vec::new(),
                key_ids: revoked_key_ids.clone(),
            })
            .collect(),
        revoked_keys_openssh: Vec::new(),
    }
    .to_bytes()
    .map_err(|e| Status::internal(format!("building the KRL: {e}")))?;
    Ok(SshHostState {
        krl,
        revoked_key_ids,
        revoked_serials: Vec::new(),
        access,
        ssh_user_ca,
        locked_logins: locked_logins.into_iter().collect(),
    })
}
