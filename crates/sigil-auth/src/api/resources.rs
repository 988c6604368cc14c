//! Resource operations shared by the admin verbs: one place that knows how
//! each kind is keyed, what it must refer to, and how its change is audited.

use sigil_store::{Item, NewAuditEvent, Op, StoreError, Txn};
use sigil_types::{AnyResource, JoinMethodKind, LockTarget};
use time::OffsetDateTime;
use tonic::Status;

use crate::audit;
use crate::keys;
use crate::state::AuthState;

// The resource kinds the admin API knows, singular: those the resource model parses.
use sigil_types::KNOWN_KINDS as KINDS;

pub fn normalize_kind(kind: &str) -> Result<&'static str, Status> {
    let k = kind.trim().to_ascii_lowercase().replace('-', "_");
    let k = match k.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => k.strip_suffix('s').unwrap_or(&k).to_string(),
    };
    let k = if k == "revocation" || k == "workload_identity_revocation" {
        "workload_identity_x509_revocation"
    } else {
        &k
    };
    KINDS
        .iter()
        .find(|known| **known == k)
        .copied()
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown resource kind {kind:?}; known kinds: {}",
                KINDS.join(", ")
            ))
        })
}

pub fn store_err(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(_) => Status::already_exists(redact(&e)),
        StoreError::NotFound(_) => Status::not_found(redact(&e)),
        StoreError::Conflict(_) => Status::aborted(redact(&e)),
        StoreError::Backend(_) => Status::unavailable(e.to_string()),
    }
}

/// Turn a store key in an error into "kind name" (token keys are hashes already).
fn redact(e: &StoreError) -> String {
    let s = e.to_string();
    for (prefix, kind) in [
        (keys::ROLES, "role "),
        (keys::BOTS, "bot "),
        (keys::TOKENS, "token sha256:"),
        (keys::LOCKS, "lock "),
        (keys::BOT_INSTANCES, "bot instance "),
        (keys::WORKLOAD_IDENTITIES, "workload identity "),
        (keys::REVOCATIONS, "revocation of serial "),
        (keys::KUBERNETES_CLUSTERS, "kubernetes cluster "),
        (keys::DATABASES, "database "),
        (keys::APPS, "app "),
        (keys::SPIFFE_FEDERATIONS, "spiffe federation "),
    ] {
        if s.contains(prefix) {
            return s.replacen(prefix, kind, 1);
        }
    }
    s
}

fn key_of(res: &AnyResource) -> String {
    match res {
        AnyResource::Role(r) => keys::role(&r.metadata.name),
        AnyResource::Bot(b) => keys::bot(&b.metadata.name),
        AnyResource::Token(t) => keys::token(&t.metadata.name),
        AnyResource::Lock(l) => keys::lock(&l.metadata.name),
        AnyResource::BotInstance(i) => keys::bot_instance(&i.spec.bot_name, &i.metadata.name),
        AnyResource::WorkloadIdentity(w) => keys::workload_identity(&w.metadata.name),
        AnyResource::WorkloadIdentityX509Revocation(r) => keys::revocation(&r.metadata.name),
        AnyResource::KubernetesCluster(k) => keys::kubernetes_cluster(&k.metadata.name),
        AnyResource::Database(d) => keys::database(&d.metadata.name),
        AnyResource::App(a) => keys::app(&a.metadata.name),
        AnyResource::SpiffeFederation(f) => keys::spiffe_federation(&f.metadata.name),
    }
}

/// The store op and audit event that create (or replace) a resource, after
/// checking what it refers to.
pub fn create_ops(
    state: &AuthState,
    mut res: AnyResource,
    upsert: bool,
    actor: &str,
) -> Result<(Op, NewAuditEvent), Status> {
    check_references(state, &mut res, actor)?;
    ops_for(res, upsert, actor)
}

/// Check what a resource refers to exists, and fill in defaults. A token
/// is stamped with its bot's uid, so it never admits a re-created bot.
fn check_references(state: &AuthState, res: &mut AnyResource, actor: &str) -> Result<(), Status> {
    if let AnyResource::Token(t) = res {
        let Some(bot) = state.cache.bot(&t.spec.bot_name) else {
            return Err(Status::failed_precondition(format!(
                "bot {:?} does not exist: create it first with `sigil bots add`",
                t.spec.bot_name
            )));
        };
        t.spec.bot_uid = bot.spec.uid;
    }
    fill_defaults(state, res, actor)
}

/// A fresh bot uid (UUIDv4: never reused, so never confused with a removed bot's).
pub fn new_bot_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Defaults and checks that need no other resource.
pub fn fill_defaults(state: &AuthState, res: &mut AnyResource, actor: &str) -> Result<(), Status> {
    // Every path (create -f, bots add, tokens add, locks add) checks the
    // same rules, names included.
    res.validate()
        .map_err(|e| Status::invalid_argument(format!("{} {e}", res.kind())))?;
    match res {
        AnyResource::BotInstance(_) => {
            return Err(Status::invalid_argument(
                "bot_instance resources are read-only: they are created when an agent joins",
            ));
        }
        AnyResource::Bot(b) => {
            // The uid is the server's: kept across updates of the same bot,
            // new for a new one, never taken from the document (a chosen uid
            // could revive a removed bot's credentials).
            b.spec.uid = match state.cache.bot(&b.metadata.name) {
                Some(existing) => existing.spec.uid,
                None => new_bot_uid(),
            };
            if b.spec.created_at.is_none() {
                b.spec.created_at = Some(OffsetDateTime::now_utc());
            }
            if b.spec.roles.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "bot {:?} needs at least one role",
                    b.metadata.name
                )));
            }
            if let Err(missing) = state.cache.roles(&b.spec.roles) {
                return Err(Status::failed_precondition(format!(
                    "role {missing:?} does not exist: create it first with `sigil create -f role.yaml`"
                )));
            }
        }
        AnyResource::Token(t) => {
            if t.spec.join_method == JoinMethodKind::Token && t.metadata.expires.is_none() {
                t.metadata.expires =
                    Some(OffsetDateTime::now_utc() + sigil_types::DEFAULT_TOKEN_TTL);
            }
            if t.spec.name_is_secret() && t.metadata.name.len() < 16 {
                return Err(Status::invalid_argument(
                    "a join_method: token token's name is its secret: use at least 16 characters (or `sigil tokens add`)",
                ));
            }
        }
        AnyResource::Lock(l) => {
            if let LockTarget::Token(t) = &l.spec.target {
                l.spec.target = LockTarget::Token(keys::token_ref(t));
            }
            if l.spec.created_at.is_none() {
                l.spec.created_at = Some(OffsetDateTime::now_utc());
            }
            if l.spec.created_by.is_empty() {
                l.spec.created_by = actor.to_string();
            }
        }
        AnyResource::WorkloadIdentity(w) => {
            // Render the template once with placeholder values so a template
            // that can never form a SPIFFE ID in this trust domain is refused now.
            let probe: sigil_types::Attributes = w
                .spec
                .referenced_attributes()
                .into_iter()
                .map(|a| (a, "x".to_string()))
                .collect();
            if let Err(e) = w.spec.render(&state.cluster, &probe) {
                return Err(Status::invalid_argument(format!(
                    "workload identity {:?}: spec.spiffe: {e}",
                    w.metadata.name
                )));
            }
        }
        AnyResource::Role(_)
        | AnyResource::WorkloadIdentityX509Revocation(_)
        | AnyResource::KubernetesCluster(_) => {}
        AnyResource::Database(_) => {}
        AnyResource::App(a) => crate::app_access::check_app(state, a)?,
        AnyResource::SpiffeFederation(f) => {
            if f.metadata.name == state.cluster {
                return Err(Status::invalid_argument(format!(
                    "spiffe_federation {:?}: that is this cluster's own trust domain; federate with a foreign one",
                    f.metadata.name
                )));
            }
            crate::federation::check_resource(f)?;
        }
    }
    Ok(())
}

/// The op and audit event for an already-checked resource.
pub fn ops_for(res: AnyResource, upsert: bool, actor: &str) -> Result<(Op, NewAuditEvent), Status> {
    let expires = match &res {
        AnyResource::Token(t) => t.metadata.expires,
        AnyResource::Lock(l) => l.metadata.expires,
        _ => None,
    };
    let key = key_of(&res);
    let value = res
        .to_json_value()
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| Status::invalid_argument(format!("cannot encode the resource: {e}")))?;
    let (event_type, verb) = match (&res, upsert) {
        (AnyResource::Lock(_), _) => (audit::LOCK_CREATED, "created"),
        (_, true) => (audit::RESOURCE_UPDATED, "updated"),
        (_, false) => (audit::RESOURCE_CREATED, "created"),
    };
    let mut fields = serde_json::json!({"kind": res.kind(), "name": display_name(&res), "by": actor, "verb": verb});
    if let AnyResource::Lock(l) = &res
        && let Some(f) = fields.as_object_mut()
    {
        f.insert("target".into(), l.spec.target.to_string().into());
        f.insert("message".into(), l.spec.message.clone().into());
        f.insert("lock".into(), l.metadata.name.clone().into());
    }
    let op = if upsert {
        Op::Put {
            key,
            value,
            expires,
        }
    } else {
        Op::Create {
            key,
            value,
            expires,
        }
    };
    Ok((op, audit::event(event_type, fields)))
}

/// Names fit for logs: a `token`-method token's name is its secret.
fn display_name(res: &AnyResource) -> String {
    match res {
        AnyResource::Token(t) if t.spec.name_is_secret() => keys::secret_hint(&t.metadata.name),
        other => other.name().to_string(),
    }
}

/// Create a resource, committing its audit event with it.
pub async fn create(
    state: &AuthState,
    res: AnyResource,
    upsert: bool,
    actor: &str,
) -> Result<String, Status> {
    create_from(state, res, upsert, actor, None).await
}

/// Where a change came from, added to its audit event's fields (the web
/// console's `{"via": "web", "remote_addr": ...}`).
pub type Origin<'a> = Option<&'a serde_json::Map<String, serde_json::Value>>;

fn with_origin(mut ev: sigil_store::NewAuditEvent, origin: Origin) -> sigil_store::NewAuditEvent {
    if let (Some(o), Some(fields)) = (origin, ev.fields.as_object_mut()) {
        for (k, v) in o {
            fields.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    ev
}

/// [`create`], its audit event saying where the change came from.
pub async fn create_from(
    state: &AuthState,
    res: AnyResource,
    upsert: bool,
    actor: &str,
    origin: Origin<'_>,
) -> Result<String, Status> {
    let (op, ev) = create_ops(state, res, upsert, actor)?;
    let ev = with_origin(ev, origin);
    let json = match &op {
        Op::Put { value, .. } | Op::Create { value, .. } => {
            String::from_utf8_lossy(value).into_owned()
        }
        _ => String::new(),
    };
    commit_and_apply(
        state,
        Txn {
            ops: vec![op],
            audit: vec![ev],
        },
    )
    .await?;
    Ok(json)
}

/// Commit, then make the change visible to this server's checks at once.
pub async fn commit_and_apply(state: &AuthState, txn: Txn) -> Result<(), Status> {
    let ops = txn.ops.clone();
    let revs = state.store.commit(txn).await.map_err(store_err)?;
    state.cache.apply_committed(&ops, &revs);
    Ok(())
}

async fn find(state: &AuthState, kind: &str, name: &str) -> Result<Item, Status> {
    let not_found = || {
        let shown = if kind == "token" {
            keys::secret_hint(name)
        } else {
            name.to_string()
        };
        Status::not_found(format!("{kind} {shown:?} not found"))
    };
    if kind == "bot_instance" && !name.contains('/') {
        // Look an instance up by id alone: walk the keys (not the records).
        let suffix = format!("/{name}");
        let mut after = String::new();
        loop {
            let page = state
                .store
                .list_keys(keys::BOT_INSTANCES, &after, KEY_PAGE)
                .await
                .map_err(store_err)?;
            if let Some(key) = page.iter().find(|k| k.ends_with(&suffix)) {
                return state
                    .store
                    .get(key)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(not_found);
            }
            match page.last() {
                Some(last) if page.len() == KEY_PAGE => after = last.clone(),
                _ => return Err(not_found()),
            }
        }
    }
    let key = keys::for_kind(kind, name).ok_or_else(not_found)?;
    state
        .store
        .get(&key)
        .await
        .map_err(store_err)?
        .ok_or_else(not_found)
}

pub async fn get(state: &AuthState, kind: &str, name: &str) -> Result<String, Status> {
    let item = find(state, kind, name).await?;
    Ok(shown(kind, &item))
}

/// A stored resource as the API returns it. A `token`-method token's name
/// is its secret: it is shown only once, when created; afterwards as its hash
/// form (which `rm` and `locks add --token` accept). A bound_keypair
/// registration secret is never shown again either.
fn shown(kind: &str, item: &Item) -> String {
    if kind == "token"
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&item.value)
    {
        let secret_name = v.pointer("/spec/join_method").and_then(|m| m.as_str()) == Some("token");
        if secret_name && let Some(name) = v.pointer_mut("/metadata/name") {
            let r = keys::token_ref(name.as_str().unwrap_or_default());
            *name = serde_json::Value::String(r);
        }
        if let Some(s) = v.pointer_mut("/spec/bound_keypair/onboarding/registration_secret") {
            *s = serde_json::Value::String("<redacted>".into());
        }
        return v.to_string();
    }
    String::from_utf8_lossy(&item.value).into_owned()
}

/// Largest page a list returns, whatever the caller asks.
pub const MAX_PAGE_ITEMS: usize = 500;
/// A page ends early once it holds this many bytes of JSON, far below the
/// transport's message limit whatever the items' sizes.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// One page of a list: the items after `page_token` (a store key, hex), at
/// most `limit` (0: [`MAX_PAGE_ITEMS`]) and about [`MAX_PAGE_BYTES`], and the
/// token of the next page ("" at the end).
pub async fn list(
    state: &AuthState,
    kind: &str,
    filter: &str,
    limit: usize,
    page_token: &str,
) -> Result<(Vec<String>, String), Status> {
    let prefix = match kind {
        "role" => keys::ROLES.to_string(),
        "bot" => keys::BOTS.to_string(),
        "token" => keys::TOKENS.to_string(),
        "lock" => keys::LOCKS.to_string(),
        "workload_identity" => keys::WORKLOAD_IDENTITIES.to_string(),
        "workload_identity_x509_revocation" => keys::REVOCATIONS.to_string(),
        "kubernetes_cluster" => keys::KUBERNETES_CLUSTERS.to_string(),
        "database" => keys::DATABASES.to_string(),
        "app" => keys::APPS.to_string(),
        "spiffe_federation" => keys::SPIFFE_FEDERATIONS.to_string(),
        _ if filter.is_empty() => keys::BOT_INSTANCES.to_string(),
        _ => keys::bot_instances_of(filter),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        let key = hex::decode(page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|k| k.starts_with(&prefix))
            .ok_or_else(|| {
                Status::invalid_argument(
                    "page_token is not one this list returned: start again without it",
                )
            })?;
        Some(key)
    };
    let limit = if limit == 0 {
        MAX_PAGE_ITEMS
    } else {
        limit.min(MAX_PAGE_ITEMS)
    };
    // One more than the page holds: whether another page follows.
    let items = state
        .store
        .list_page(&prefix, after.as_deref().unwrap_or(""), limit + 1)
        .await
        .map_err(store_err)?;
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    let mut rest = items.iter().peekable();
    while let Some(item) = rest.next_if(|_| page.len() < limit && bytes < MAX_PAGE_BYTES) {
        let json = shown(kind, item);
        bytes += json.len();
        page.push(json);
        last = Some(&item.key);
    }
    let next = match (rest.peek(), last) {
        (Some(_), Some(k)) => hex::encode(k.as_bytes()),
        _ => String::new(),
    };
    Ok((page, next))
}

pub async fn delete(state: &AuthState, kind: &str, name: &str, actor: &str) -> Result<(), Status> {
    delete_from(state, kind, name, actor, None).await
}

/// [`delete`], its audit event saying where the change came from.
pub async fn delete_from(
    state: &AuthState,
    kind: &str,
    name: &str,
    actor: &str,
    origin: Origin<'_>,
) -> Result<(), Status> {
    let item = find(state, kind, name).await?;
    let mut ops = vec![Op::Delete {
        key: item.key.clone(),
        expected_revision: Some(item.revision),
    }];
    match kind {
        "role" => {
            let users: Vec<String> = state
                .cache
                .bots()
                .into_iter()
                .filter(|b| b.spec.roles.iter().any(|r| r == name))
                .map(|b| b.metadata.name)
                .collect();
            if !users.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "role {name:?} is still used by bot(s) {}: remove it from them first (`sigil bots update NAME --set-roles ...`)",
                    users.join(", ")
                )));
            }
        }
        "bot" => {
            // A removed bot's tokens can never admit anyone again; drop them.
            for tok in state.store.list(keys::TOKENS).await.map_err(store_err)? {
                let of_bot = serde_json::from_slice::<serde_json::Value>(&tok.value)
                    .ok()
                    .and_then(|v| v.pointer("/spec/bot_name")?.as_str().map(|b| b == name))
                    .unwrap_or(false);
                if of_bot {
                    ops.push(Op::Delete {
                        key: tok.key,
                        expected_revision: None,
                    });
                }
            }
        }
        _ => {}
    }
    let event_type = if kind == "lock" {
        audit::LOCK_DELETED
    } else {
        audit::RESOURCE_DELETED
    };
    let shown = if kind == "token" {
        keys::secret_hint(name)
    } else {
        name.to_string()
    };
    let ev = audit::event(
        event_type,
        serde_json::json!({"kind": kind, "name": shown, "by": actor}),
    );
    let ev = with_origin(ev, origin);
    // Every delete (a bot's tokens too) is enforced at once.
    commit_and_apply(
        state,
        Txn {
            ops,
            audit: vec![ev],
        },
    )
    .await?;
    if kind == "bot" {
        remove_instances_of(state, name).await?;
    }
    Ok(())
}

/// Keys per page when walking bot instance keys.
const KEY_PAGE: usize = 1000;

/// Drop a removed bot's instances, a bounded transaction at a time so renewals
/// never queue behind one huge commit. They can no longer renew or call
/// anything already (their certificates name a bot uid that is gone).
async fn remove_instances_of(state: &AuthState, bot: &str) -> Result<(), Status> {
    let prefix = keys::bot_instances_of(bot);
    loop {
        let page = state
            .store
            .list_keys(&prefix, "", KEY_PAGE)
            .await
            .map_err(store_err)?;
        if page.is_empty() {
            return Ok(());
        }
        let ops = page
            .into_iter()
            .map(|key| Op::Delete {
                key,
                expected_revision: None,
            })
            .collect();
        match state.store.commit(Txn { ops, audit: vec![] }).await {
            // Expired or removed meanwhile (retention, a concurrent removal): re-read.
            Ok(_) | Err(sigil_store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
    }
}
