//! Moving a rotation from one phase to the next: by an administrator
//! (`sigil ca rotate`) or on an automatic rotation's schedule. Every step is one
//! compare-and-swap commit with its audit event, so two servers (or two admins)
//! racing for the same step move it once.

use std::time::Duration;

use sigil_pki::{CaPurpose, SshCa, StoredCa, X509Ca};
use sigil_store::{Op, StoreError, Txn};
use sigil_types::{
    LockTarget, RotationMode, RotationPhase, RotationSchedule, RotationTarget, check_transition,
};
use time::OffsetDateTime;
use tonic::Status;

use super::{CaRotation, StoredRotation, fingerprint, read};
use crate::audit;
use crate::keys;
use crate::state::AuthState;

/// Shortest grace period of an automatic rotation: agents renew at half their
/// credentials' life, and each third of the grace period must leave them time to.
pub const MIN_GRACE: Duration = Duration::from_secs(30);

/// What an administrator asked for.
pub struct RotateRequest {
    pub purpose: CaPurpose,
    /// `None`: start an automatic rotation.
    pub target: Option<RotationTarget>,
    /// Grace period of an automatic rotation.
    pub grace: Duration,
    /// Finish (standby) even though some bot instances have not renewed since the
    /// new CA started signing.
    pub force: bool,
    pub by: String,
    /// The CA to rotate to (an imported one); `None`: generate one.
    pub new: Option<StoredCa>,
    /// More writes and events for the commit that starts the rotation (an import
    /// removes its pending request).
    pub with_init: Txn,
}

/// Applies one step and returns the rotation as it now stands (`None`: standby).
pub async fn rotate(state: &AuthState, req: RotateRequest) -> Result<Option<CaRotation>, Status> {
    let p = req.purpose;
    let current = read(state.store.as_ref(), p)
        .await
        .map_err(|e| Status::unavailable(format!("{e:#}")))?;
    let from = current.as_ref().map(|r| r.record.phase);
    let (target, mode) = match req.target {
        Some(t) => (t, RotationMode::Manual),
        None => {
            if let Some(r) = &current {
                return Err(Status::failed_precondition(format!(
                    "a rotation of the {p} CA is already in phase {}; move it with --phase, or roll it back with --phase rollback",
                    r.record.phase
                )));
            }
            if req.grace < MIN_GRACE {
                return Err(Status::invalid_argument(format!(
                    "--grace-period {:?} is shorter than the minimum {MIN_GRACE:?}",
                    req.grace
                )));
            }
            (
                RotationTarget::Phase(RotationPhase::Init),
                RotationMode::Auto,
            )
        }
    };
    check_transition(from, target).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    // The CA a standby drops, whose key is destroyed once the step is committed.
    let mut dropped = None;
    let (txn, after) = match (target, current) {
        (RotationTarget::Phase(RotationPhase::Init), None) => {
            let new = match req.new {
                Some(new) => new,
                None => generate(state, p)?,
            };
            let record = CaRotation {
                purpose: p,
                id: hex::encode(random_id()),
                phase: RotationPhase::Init,
                mode,
                schedule: (mode == RotationMode::Auto)
                    .then(|| RotationSchedule::from_grace(now, req.grace)),
                started: now,
                phase_changed: now,
                signing_since: None,
                new,
                by: req.by.clone(),
            };
            let mut txn = Txn {
                ops: vec![Op::Create {
                    key: keys::ca_rotation(p),
                    value: encode(&record)?,
                    expires: None,
                }],
                audit: req.with_init.audit,
            };
            txn.ops.extend(req.with_init.ops);
            txn.audit
                .push(event(&record, "standby", &req.by, Some(req.grace)));
            (txn, Some(record))
        }
        (RotationTarget::Phase(to), Some(cur)) => {
            // An administrator's step takes an automatic rotation over.
            let (txn, record) = step(&cur, to, RotationMode::Manual, &req.by)?;
            (txn, Some(record))
        }
        (RotationTarget::Standby, Some(cur)) => {
            let (txn, retired) = finish(state, &cur, &req).await?;
            dropped = Some(retired);
            (txn, None)
        }
        // check_transition allows nothing else.
        (t, None) => {
            return Err(Status::failed_precondition(format!(
                "no rotation of the {p} CA is in progress; start one before {}",
                t.as_str()
            )));
        }
    };
    let established = match (&after, target) {
        (None, RotationTarget::Standby) if from == Some(RotationPhase::UpdateServers) => {
            Some(txn_new_ca(&txn, p)?)
        }
        _ => None,
    };
    precheck(state, p, after.as_ref(), established.as_ref()).await?;
    state.store.commit(txn).await.map_err(|e| match e {
        StoreError::Conflict(_) | StoreError::AlreadyExists(_) | StoreError::NotFound(_) => {
            Status::aborted(format!(
                "the {p} CA's rotation changed while this step was being made (another administrator or server moved it); check `sigil ca status` and retry"
            ))
        }
        e => Status::unavailable(format!("saving the rotation: {e}")),
    })?;
    if let Err(e) = super::reload(state).await {
        tracing::error!(error = %format!("{e:#}"), "reloading the CAs after a rotation step failed");
    }
    if let Some(retired) = dropped {
        retire_key(state, retired).await;
    }
    Ok(after)
}

/// Destroys the key of a CA a standby dropped (on an HSM; other managers keep keys
/// only in the record the commit replaced), unless a record still names it (an
/// imported certificate for the same key). A failure is logged: the CA is no longer
/// trusted by the cluster either way.
async fn retire_key(state: &AuthState, retired: StoredCa) {
    let km = state.ca_km.as_ref();
    let p = retired.purpose;
    let in_use = match crate::cluster::read_records(state.store.as_ref(), km).await {
        Ok((stored, rotations)) => stored
            .iter()
            .chain(rotations.iter().map(|r| &r.new))
            .any(|c| c.key.material == retired.key.material),
        Err(e) => {
            tracing::warn!(ca = %p, error = %format!("{e:#}"), "not destroying the retired CA key: the CA records could not be read");
            return;
        }
    };
    if in_use {
        return;
    }
    let ctx = sigil_pki::KeyContext::ca(&state.cluster, p);
    match km.retire(&ctx, &retired.key) {
        Ok(true) => {
            tracing::info!(ca = %p, fingerprint = %fingerprint(&retired), "retired CA key destroyed");
            let ev = audit::event(
                audit::CA_KEY_DESTROYED,
                serde_json::json!({"ca": p.as_str(), "fingerprint": fingerprint(&retired), "manager": retired.key.manager}),
            );
            if let Err(e) = state
                .store
                .commit(Txn {
                    ops: vec![],
                    audit: vec![ev],
                })
                .await
            {
                tracing::warn!(error = %e, "auditing the destroyed CA key failed");
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(ca = %p, error = %e, "destroying the retired CA key failed; remove it from the token by hand")
        }
    }
}

/// Moves the rotation to phase `to` (compare-and-swap on its record).
fn step(
    cur: &StoredRotation,
    to: RotationPhase,
    mode: RotationMode,
    by: &str,
) -> Result<(Txn, CaRotation), Status> {
    let now = OffsetDateTime::now_utc();
    let mut record = cur.record.clone();
    record.phase = to;
    record.phase_changed = now;
    record.mode = mode;
    if to == RotationPhase::UpdateClients {
        record.signing_since = Some(now);
    }
    let txn = Txn {
        ops: vec![Op::Update {
            key: keys::ca_rotation(record.purpose),
            value: encode(&record)?,
            expires: None,
            expected_revision: Some(cur.revision),
        }],
        audit: vec![event(&record, cur.record.phase.as_str(), by, None)],
    };
    Ok((txn, record))
}

/// Standby: after `update_servers` the new CA becomes the established one; after a
/// rollback the new one is dropped. Also returns the CA the commit drops.
async fn finish(
    state: &AuthState,
    cur: &StoredRotation,
    req: &RotateRequest,
) -> Result<(Txn, StoredCa), Status> {
    let p = req.purpose;
    let mut ops = vec![Op::Delete {
        key: keys::ca_rotation(p),
        expected_revision: Some(cur.revision),
    }];
    let completed = cur.record.phase == RotationPhase::UpdateServers;
    if !req.force {
        guard_standby(state, &cur.record, completed).await?;
    }
    let mut dropped = cur.record.new.clone();
    if completed {
        let est = state
            .store
            .get(&keys::ca(p))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::internal(format!("the {p} CA is missing from the store")))?;
        dropped = serde_json::from_slice(&est.value)
            .map_err(|e| Status::internal(format!("decoding the {p} CA: {e}")))?;
        ops.push(Op::Update {
            key: keys::ca(p),
            value: serde_json::to_vec(&cur.record.new)
                .map_err(|e| Status::internal(e.to_string()))?,
            expires: None,
            expected_revision: Some(est.revision),
        });
    }
    let mut ev = event(&cur.record, cur.record.phase.as_str(), &req.by, None);
    if let Some(fields) = ev.fields.as_object_mut() {
        fields.insert("to".into(), "standby".into());
        fields.insert(
            "outcome".into(),
            if completed { "rotated" } else { "rolled_back" }.into(),
        );
        fields.insert("forced".into(), req.force.into());
    }
    Ok((
        Txn {
            ops,
            audit: vec![ev],
        },
        dropped,
    ))
}

/// Refuses a standby that would leave bot instances holding credentials of the CA
/// it drops: completing, those that last renewed before the new CA started signing
/// (the old CA's); rolling back, those that last renewed while the new CA signed and
/// not since the rollback (the new CA's). A rollback from `init` dropped nothing
/// anyone holds.
async fn guard_standby(state: &AuthState, r: &CaRotation, completed: bool) -> Result<(), Status> {
    let Some(signing_since) = r.signing_since else {
        return Ok(());
    };
    let p = r.purpose;
    let at = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let (behind, why) = if completed {
        (
            last_renewed_between(state, None, signing_since).await?,
            format!(
                "have not renewed since the new {p} CA started signing ({}), so they still hold credentials of the old CA",
                at(signing_since)
            ),
        )
    } else {
        (
            last_renewed_between(state, Some(signing_since), r.phase_changed).await?,
            format!(
                "last renewed while the new {p} CA signed ({} to the rollback at {}), so they hold credentials of the new CA",
                at(signing_since),
                at(r.phase_changed)
            ),
        )
    };
    let (count, shown) = behind;
    if count == 0 {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "{count} bot instance(s) {why}, which stop verifying at standby: {}{}. Wait for them to renew, remove the ones that are gone (`sigil rm bot_instance/BOT/ID`) or lock them, or pass --force",
        shown.join(", "),
        if count > shown.len() { ", …" } else { "" }
    )))
}

/// How many bot instances' latest join or renewal was at or after `from` (if
/// given) and before `until`, and the first few of them (`bot/instance`, in key
/// order). A locked bot or instance is left out: it is cut off whatever it
/// holds. Read page by page: the fleet is never in memory at once.
async fn last_renewed_between(
    state: &AuthState,
    from: Option<OffsetDateTime>,
    until: OffsetDateTime,
) -> Result<(usize, Vec<String>), Status> {
    const PAGE: usize = 1000;
    const SHOWN: usize = 5;
    let mut count = 0;
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let items = state
            .store
            .list_page(keys::BOT_INSTANCES, &after, PAGE)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let full = items.len() == PAGE;
        if let Some(last) = items.last() {
            after = last.key.clone();
        }
        for item in items {
            let Ok(inst) = serde_json::from_slice::<sigil_types::BotInstance>(&item.value) else {
                continue;
            };
            let last = inst
                .spec
                .authentications
                .iter()
                .map(|a| a.time)
                .chain(inst.spec.initial_authentication.as_ref().map(|a| a.time))
                .max();
            let in_window = match last {
                Some(t) => t < until && from.is_none_or(|f| t >= f),
                None => from.is_none(),
            };
            let locked = || {
                state
                    .cache
                    .lock_for(&[
                        LockTarget::Bot(inst.spec.bot_name.clone()),
                        LockTarget::BotInstance(inst.spec.instance_id.clone()),
                    ])
                    .is_some()
            };
            if in_window && !locked() {
                count += 1;
                if out.len() < SHOWN {
                    out.push(format!("{}/{}", inst.spec.bot_name, inst.spec.instance_id));
                }
            }
        }
        if !full {
            return Ok((count, out));
        }
    }
}

/// The last failure of each automatic rotation's step, so a step that keeps failing
/// (retried every second) is logged when it starts failing, when the reason changes
/// and once a minute, not every second.
#[derive(Default)]
pub struct AutoFailures(std::collections::HashMap<CaPurpose, (String, std::time::Instant)>);

impl AutoFailures {
    fn should_log(&mut self, p: CaPurpose, why: &str) -> bool {
        let now = std::time::Instant::now();
        match self.0.get(&p) {
            Some((w, at)) if w == why && now.duration_since(*at) < Duration::from_secs(60) => false,
            _ => {
                self.0.insert(p, (why.to_string(), now));
                true
            }
        }
    }
}

/// Advance every automatic rotation whose time has come. Every server runs this;
/// the compare-and-swap lets one of them make each step.
pub async fn auto_advance(state: &AuthState, failures: &mut AutoFailures) {
    let now = OffsetDateTime::now_utc();
    let due: Vec<(CaPurpose, RotationTarget)> = state
        .cas()
        .rotations
        .iter()
        .filter(|r| r.mode == RotationMode::Auto)
        .filter_map(|r| Some((r.purpose, r.schedule?.due(r.phase, now)?)))
        .collect();
    for (purpose, target) in due {
        let req = RotateRequest {
            purpose,
            target: Some(target),
            grace: Duration::ZERO,
            // The grace period was the promise made when the rotation started.
            force: true,
            by: "auth service (automatic rotation)".into(),
            new: None,
            with_init: Txn::default(),
        };
        match rotate_auto(state, req).await {
            Ok(()) => {
                failures.0.remove(&purpose);
                tracing::info!(ca = %purpose, phase = target.as_str(), "automatic CA rotation advanced")
            }
            // Another server made the step first.
            Err(e) if e.code() == tonic::Code::Aborted => {}
            // E.g. the step would leave servers unable to use the CA: an operator must
            // act (roll back, or import another CA), so it is said, not swallowed.
            Err(e) => {
                if failures.should_log(purpose, e.message()) {
                    tracing::warn!(ca = %purpose, phase = target.as_str(), error = %e.message(), "automatic CA rotation step failed; retrying every second");
                }
            }
        }
    }
}

/// An automatic step keeps the rotation automatic.
async fn rotate_auto(state: &AuthState, req: RotateRequest) -> Result<(), Status> {
    let p = req.purpose;
    let Some(cur) = read(state.store.as_ref(), p)
        .await
        .map_err(|e| Status::unavailable(format!("{e:#}")))?
    else {
        return Err(Status::aborted("finished"));
    };
    let target = req.target.ok_or_else(|| Status::internal("no target"))?;
    let now = OffsetDateTime::now_utc();
    // Re-check against the stored record: another server may have moved it.
    let Some(sched) = cur.record.schedule else {
        return Err(Status::aborted("not automatic"));
    };
    if cur.record.mode != RotationMode::Auto || sched.due(cur.record.phase, now) != Some(target) {
        return Err(Status::aborted("already advanced"));
    }
    let mut dropped = None;
    let txn = match target {
        RotationTarget::Standby => {
            let (txn, retired) = finish(state, &cur, &req).await?;
            precheck(state, p, None, Some(&cur.record.new)).await?;
            dropped = Some(retired);
            txn
        }
        RotationTarget::Phase(to) => {
            let (txn, record) = step(&cur, to, RotationMode::Auto, &req.by)?;
            precheck(state, p, Some(&record), None).await?;
            txn
        }
    };
    state.store.commit(txn).await.map_err(|e| match e {
        StoreError::Conflict(_) | StoreError::NotFound(_) => Status::aborted("raced"),
        e => Status::unavailable(e.to_string()),
    })?;
    if let Err(e) = super::reload(state).await {
        tracing::error!(error = %format!("{e:#}"), "reloading the CAs after a rotation step failed");
    }
    if let Some(retired) = dropped {
        retire_key(state, retired).await;
    }
    Ok(())
}

/// The CA set the store will hold once a step of `p` is committed — `rotation` in
/// progress, or `established` as the new established CA, or neither (rolled back) —
/// must be one a server can serve with; otherwise the step is refused before it is
/// made (e.g. an imported CA ending too soon to issue the auth service's certificate).
async fn precheck(
    state: &AuthState,
    p: CaPurpose,
    rotation: Option<&CaRotation>,
    established: Option<&StoredCa>,
) -> Result<(), Status> {
    let km = state.ca_km.as_ref();
    let (mut stored, mut rotations) = crate::cluster::read_records(state.store.as_ref(), km)
        .await
        .map_err(|e| Status::unavailable(format!("{e:#}")))?;
    rotations.retain(|r| r.purpose != p);
    rotations.extend(rotation.cloned());
    if let Some(new) = established {
        stored.retain(|s| s.purpose != p);
        stored.push(new.clone());
    }
    crate::cluster::build(km, stored, rotations)
        .and_then(|cas| super::check(state, &cas))
        .map_err(|e| {
            Status::failed_precondition(format!(
                "this step would leave the auth service unable to use the {p} CA: {e:#}"
            ))
        })
}

/// The CA a standby commit makes established (its update of `/cas/<p>`).
fn txn_new_ca(txn: &Txn, p: CaPurpose) -> Result<StoredCa, Status> {
    txn.ops
        .iter()
        .find_map(|op| match op {
            Op::Update { key, value, .. } if *key == keys::ca(p) => {
                serde_json::from_slice(value).ok()
            }
            _ => None,
        })
        .ok_or_else(|| Status::internal("the standby commit carries no CA"))
}

/// A new CA of the purpose, its key made by the configured key manager.
fn generate(state: &AuthState, p: CaPurpose) -> Result<StoredCa, Status> {
    let km = state.ca_km.as_ref();
    let stored = if p.is_ssh() {
        SshCa::generate(km, p, &state.cluster).map(|(_, s)| s)
    } else {
        X509Ca::generate(km, p, &state.cluster).map(|(_, s)| s)
    };
    stored.map_err(|e| Status::unavailable(format!("generating the new {p} CA: {e}")))
}

fn encode(record: &CaRotation) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(record).map_err(|e| Status::internal(e.to_string()))
}

fn random_id() -> [u8; 8] {
    let mut b = [0u8; 8];
    // Names a rotation, not a secret: the clock will do if the RNG fails.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_le_bytes()[..8]
            .try_into()
            .unwrap_or_default();
    }
    b
}

fn event(
    r: &CaRotation,
    from: &str,
    by: &str,
    grace: Option<Duration>,
) -> sigil_store::NewAuditEvent {
    let mut fields = serde_json::json!({
        "ca": r.purpose.as_str(),
        "rotation": r.id,
        "from": from,
        "to": r.phase.as_str(),
        "mode": match r.mode { RotationMode::Manual => "manual", RotationMode::Auto => "auto" },
        "new_fingerprint": fingerprint(&r.new),
        "by": by,
    });
    if let (Some(g), Some(obj)) = (grace, fields.as_object_mut()) {
        obj.insert("grace_period_seconds".into(), g.as_secs().into());
    }
    audit::event(audit::CA_ROTATION, fields)
}
