//! Web console sessions: the single-use login link `sigil admin login`
//! asks for, and the session records it opens. Both live in the store with
//! an expiry (so every server of a cluster sees them), keyed and compared by
//! the SHA-256 of their secrets only: a copy of the database opens nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sigil_pki::{CertInfo, ClientIdentity};
use sigil_store::{Op, StoreError, Txn};
use time::OffsetDateTime;
use tonic::Status;

use crate::audit;
use crate::authz::{self, Caller};
use crate::state::AuthState;

/// How long a login link stays usable.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// The longest a session lasts, however active.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// A session unused this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session's idle clock is moved at most this often (one store write).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The session cookie: `__Host-` makes browsers insist on Secure, Path=/ and
/// no Domain, so no sibling host can set or read it.
pub const SESSION_COOKIE: &str = "__Host-sigil_session";
/// The CSRF token's cookie, readable by the console's script, which echoes it
/// in [`CSRF_HEADER`]; the server compares it with the session's record.
pub const CSRF_COOKIE: &str = "__Host-sigil_csrf";
pub const CSRF_HEADER: &str = "x-sigil-csrf";

const LOGINS: &str = "/web_logins/";
/// Why a link login is refused when the link is not (or no longer) there.
const UNKNOWN: &str = "unknown, used or expired login link";
const SESSIONS: &str = "/web_sessions/";

pub const WEB_LOGIN_LINK: &str = "web.login_link";
pub const WEB_LOGIN: &str = "web.login";
pub const WEB_LOGIN_DENIED: &str = "web.login.denied";
pub const WEB_LOGOUT: &str = "web.logout";
pub const WEB_CSRF_REFUSED: &str = "web.csrf_refused";

/// Who a session acts as: the local admin, or a bot identity (the client
/// certificate `sigil admin login` was run with).
#[derive(Clone, Serialize, Deserialize)]
pub struct Principal {
    /// `None`: the local admin (the admin socket's owner).
    identity: Option<ClientIdentity>,
    #[serde(default)]
    cert_serial: String,
    #[serde(default)]
    cert_not_before: i64,
    /// The session ends when the certificate it came from does.
    #[serde(default)]
    cert_not_after: i64,
    /// SPKI pin of the client CA that verified the certificate at login: the
    /// session ends when a rotation drops that CA, as the connection would.
    #[serde(default)]
    client_ca_pin: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct LoginRecord {
    secret_sha256: String,
    principal: Principal,
    expires_unix: i64,
}

/// A session as stored (under the SHA-256 of its id).
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    principal: Principal,
    csrf_sha256: String,
    created_unix: i64,
    /// Absolute end: login + [`SESSION_TTL`], or the certificate's end if sooner.
    ends_unix: i64,
    last_seen_unix: i64,
}

impl SessionRecord {
    /// When the session ends at the latest (Unix seconds).
    pub fn ends_unix(&self) -> i64 {
        self.ends_unix
    }
}

/// A live session found from a request's cookie.
pub struct Session {
    key: String,
    revision: i64,
    pub record: SessionRecord,
}

impl Session {
    /// The session's store key (the SHA-256 of its id, never the id).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A name for the session's principal in audit events.
    pub fn actor(&self) -> String {
        self.record.principal.actor()
    }
}

impl Principal {
    pub(super) fn of(caller: &Caller, client_ca_pin: Option<&str>) -> Principal {
        match caller {
            Caller::LocalAdmin => Principal {
                identity: None,
                cert_serial: String::new(),
                cert_not_before: 0,
                cert_not_after: i64::MAX,
                client_ca_pin: None,
            },
            Caller::Bot(b) => Principal {
                identity: Some(b.0.clone()),
                cert_serial: b.1.serial_hex.clone(),
                cert_not_before: b.1.not_before.unix_timestamp(),
                cert_not_after: b.1.not_after.unix_timestamp(),
                client_ca_pin: client_ca_pin.map(str::to_string),
            },
        }
    }

    fn actor(&self) -> String {
        match &self.identity {
            None => "local-admin".into(),
            Some(id) => format!("bot:{}", id.bot),
        }
    }
}

/// 32 random bytes, base64url without padding (43 characters).
fn new_secret() -> Result<String, Status> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| Status::internal("no randomness"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `s` could be a secret [`new_secret`] made; anything else is
/// refused before it reaches the store.
fn well_formed(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sha256(s: &str) -> String {
    sigil_pki::sha256_hex(s.as_bytes())
}

/// Equal hashes, compared in constant time.
fn same_hash(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn at(secs: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

fn store_err(e: StoreError) -> Status {
    Status::unavailable(format!("storage: {e}"))
}

/// The refusal of a login link for an agent's own identity.
pub const AGENT_IDENTITY_REFUSED: &str = "a web console session cannot use an agent's own identity (renewals supersede it, and an outdated copy in use looks like a stolen credential): log in with an identity output's certificate (`--identity` FILE written by an `identity` output) or on the admin socket (`--data-dir`)";

/// A login link for `caller`, whose certificate `client_ca_pin` (the SPKI pin
/// of the client CA that verified it at the handshake) vouched for:
/// `(url, expires_unix)`. The secret is in the URL's fragment, which browsers
/// never send, so no server log holds it.
pub async fn create_login(
    state: &AuthState,
    caller: &Caller,
    client_ca_pin: Option<&str>,
) -> Result<(String, i64), Status> {
    if let Caller::Bot(b) = caller {
        if b.0.is_agent_identity() {
            return Err(Status::failed_precondition(AGENT_IDENTITY_REFUSED));
        }
        if client_ca_pin.is_none() {
            return Err(Status::unauthenticated(
                "the client certificate's issuing CA is unknown: log in again",
            ));
        }
    }
    let principal = Principal::of(caller, client_ca_pin);
    let now = unix(OffsetDateTime::now_utc());
    let expires = (now + LOGIN_TTL.as_secs() as i64).min(principal.cert_not_after);
    if expires <= now {
        return Err(Status::unauthenticated(
            "the client certificate has expired: use a fresh identity",
        ));
    }
    let secret = new_secret()?;
    let hash = sha256(&secret);
    let actor = principal.actor();
    let record = LoginRecord {
        secret_sha256: hash.clone(),
        principal,
        expires_unix: expires,
    };
    let txn = Txn {
        ops: vec![Op::Create {
            key: format!("{LOGINS}{hash}"),
            value: serde_json::to_vec(&record).map_err(|e| Status::internal(e.to_string()))?,
            expires: at(expires),
        }],
        audit: vec![audit::event(
            WEB_LOGIN_LINK,
            serde_json::json!({"by": actor, "expires_unix": expires}),
        )],
    };
    state.store.commit(txn).await.map_err(store_err)?;
    Ok((format!("{}/web/login#{secret}", state.jwt_issuer), expires))
}

/// Most live sessions one principal may hold: a leaked CLI identity or a
/// script cannot fill the store with sessions.
pub const SESSIONS_PER_PRINCIPAL: usize = 20;

/// Whether `principal` holds [`SESSIONS_PER_PRINCIPAL`] live sessions already.
async fn at_session_cap(
    state: &AuthState,
    principal: &Principal,
    now: i64,
) -> Result<bool, String> {
    let actor = principal.actor();
    let live_of_actor = state
        .store
        .list(SESSIONS)
        .await
        .map_err(|e| format!("storage: {e}"))?
        .iter()
        .filter_map(|i| serde_json::from_slice::<SessionRecord>(&i.value).ok())
        .filter(|r| live(r, now) && r.principal.actor() == actor)
        .count();
    Ok(live_of_actor >= SESSIONS_PER_PRINCIPAL)
}

/// A new session's secrets, for the cookies: `(session id, CSRF token)`.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
    pub max_age: i64,
}

/// Spend a login link and open a session. `Err` is what to audit (the
/// browser is told only "denied"). The link's record is deleted at the
/// revision read and the session created in one transaction: of two
/// concurrent uses, on any servers, one wins.
pub async fn redeem(state: &AuthState, secret: &str, remote: &str) -> Result<NewSession, ()> {
    let result = redeem_inner(state, secret, remote).await;
    if let Err(reason) = &result {
        let ev = audit::event(
            WEB_LOGIN_DENIED,
            serde_json::json!({"reason": reason, "remote_addr": remote, "via": "web", "method": "link"}),
        );
        state.denials.record(state.store.as_ref(), ev).await;
    }
    result.map_err(|_| ())
}

async fn redeem_inner(state: &AuthState, secret: &str, remote: &str) -> Result<NewSession, String> {
    if !well_formed(secret) {
        return Err("malformed login link".into());
    }
    let hash = sha256(secret);
    let key = format!("{LOGINS}{hash}");
    let item = state
        .store
        .get(&key)
        .await
        .map_err(|e| format!("storage: {e}"))?
        .ok_or(UNKNOWN)?;
    let login: LoginRecord =
        serde_json::from_slice(&item.value).map_err(|e| format!("undecodable login: {e}"))?;
    let now = unix(OffsetDateTime::now_utc());
    if !same_hash(&login.secret_sha256, &hash) || login.expires_unix <= now {
        return Err(UNKNOWN.into());
    }
    let p = &login.principal;
    // The identity must still be good now, as for any admin call.
    if p.identity.is_some() {
        caller_of(state, p, remote)
            .await
            .map_err(|e| e.message().to_string())?;
    }
    let spend = Op::Delete {
        key,
        expected_revision: Some(item.revision),
    };
    open(state, login.principal, now, remote, "link", Some(spend)).await
}

/// Open a session for `principal` (checked already), in one transaction
/// with `spend` (the login link's deletion, if any); audited as a login by
/// `method`.
pub(super) async fn open(
    state: &AuthState,
    principal: Principal,
    now: i64,
    remote: &str,
    method: &str,
    spend: Option<Op>,
) -> Result<NewSession, String> {
    let p = &principal;
    if at_session_cap(state, p, now).await? {
        return Err(format!(
            "{} holds {SESSIONS_PER_PRINCIPAL} live sessions already (log out of one)",
            p.actor()
        ));
    }
    let id = new_secret().map_err(|e| e.message().to_string())?;
    let csrf = new_secret().map_err(|e| e.message().to_string())?;
    let ends = (now + SESSION_TTL.as_secs() as i64).min(p.cert_not_after);
    let record = SessionRecord {
        principal: principal.clone(),
        csrf_sha256: sha256(&csrf),
        created_unix: now,
        ends_unix: ends,
        last_seen_unix: now,
    };
    let actor = record.principal.actor();
    // Which certificate opened it (for a bot): the serial, its instance and
    // the CA that verified it, so an investigator can tell outputs apart.
    let mut fields = serde_json::json!({"by": actor, "remote_addr": remote,
        "session_ends_unix": ends, "via": "web", "method": method});
    if let Some(id) = &p.identity {
        fields["cert_serial"] = p.cert_serial.clone().into();
        fields["bot_instance"] = id.instance_id.clone().into();
        fields["client_ca_pin"] = p.client_ca_pin.clone().into();
    }
    let mut ops: Vec<Op> = spend.into_iter().collect();
    ops.push(Op::Create {
        key: format!("{SESSIONS}{}", sha256(&id)),
        value: serde_json::to_vec(&record).map_err(|e| e.to_string())?,
        expires: at(idle_end(&record, now)),
    });
    let txn = Txn {
        ops,
        audit: vec![audit::event(WEB_LOGIN, fields)],
    };
    match state.store.commit(txn).await {
        Ok(_) => Ok(NewSession {
            id,
            csrf,
            max_age: ends - now,
        }),
        Err(StoreError::NotFound(_) | StoreError::Conflict(_)) => Err(UNKNOWN.into()),
        Err(e) => Err(format!("storage: {e}")),
    }
}

/// When a session seen at `now` ends if unused.
fn idle_end(r: &SessionRecord, now: i64) -> i64 {
    (now + IDLE_TIMEOUT.as_secs() as i64).min(r.ends_unix)
}

/// The live session a cookie names; `None` for no, a malformed, an unknown
/// or an ended session. Its idle clock is not moved: [`touch`] does that once
/// the principal has passed its checks, so refused requests keep nothing alive.
pub async fn find(state: &AuthState, id: &str) -> Option<Session> {
    if !well_formed(id) {
        return None;
    }
    let key = format!("{SESSIONS}{}", sha256(id));
    let item = state.store.get(&key).await.ok()??;
    let record: SessionRecord = serde_json::from_slice(&item.value).ok()?;
    if !live(&record, unix(OffsetDateTime::now_utc())) {
        return None;
    }
    Some(Session {
        key,
        revision: item.revision,
        record,
    })
}

/// Whether a session record is within its absolute end and idle timeout at
/// `now`. The store hides expired records; checked here too, so a store with
/// a late purge or a skewed clock cannot stretch a session.
fn live(r: &SessionRecord, now: i64) -> bool {
    now < r.ends_unix && now < r.last_seen_unix + IDLE_TIMEOUT.as_secs() as i64
}

/// Move the session's idle clock (at most every [`TOUCH_EVERY`]): called
/// only for a request whose principal passed its checks.
pub async fn touch(state: &AuthState, s: &Session) {
    let now = unix(OffsetDateTime::now_utc());
    if now - s.record.last_seen_unix < TOUCH_EVERY.as_secs() as i64 {
        return;
    }
    let mut record = s.record.clone();
    record.last_seen_unix = now;
    let Ok(value) = serde_json::to_vec(&record) else {
        return;
    };
    let op = Op::Update {
        key: s.key.clone(),
        value,
        expires: at(idle_end(&record, now)),
        expected_revision: Some(s.revision),
    };
    // A concurrent request moved it already, or logout removed it: either
    // way this request goes on with what it read.
    let _ = state
        .store
        .commit(Txn {
            ops: vec![op],
            audit: vec![],
        })
        .await;
}

/// Whether the session still exists (not logged out, ended or idle past its
/// timeout), read afresh from the store: what a long-lived stream re-checks.
/// It does not move the idle clock: an open stream alone keeps no session alive.
pub async fn alive(state: &AuthState, s: &Session) -> bool {
    let now = unix(OffsetDateTime::now_utc());
    match state.store.get(&s.key).await {
        Ok(Some(item)) => {
            serde_json::from_slice::<SessionRecord>(&item.value).is_ok_and(|r| live(&r, now))
        }
        _ => false,
    }
}

/// Whether `token` (from the request's header) is the session's CSRF token.
pub fn csrf_matches(s: &Session, token: &str) -> bool {
    well_formed(token) && same_hash(&s.record.csrf_sha256, &sha256(token))
}

/// End a session (logout).
pub async fn end(state: &AuthState, s: &Session, remote: &str) -> Result<(), Status> {
    let txn = Txn {
        ops: vec![Op::Delete {
            key: s.key.clone(),
            expected_revision: None,
        }],
        audit: vec![audit::event(
            WEB_LOGOUT,
            serde_json::json!({"by": s.actor(), "remote_addr": remote}),
        )],
    };
    match state.store.commit(txn).await {
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(store_err(e)),
    }
}

/// The session's principal as an admin API caller, refused exactly as the
/// admin API refuses a client certificate: another cluster, expired, locked,
/// its bot or instance removed or re-created.
pub async fn caller(state: &AuthState, s: &Session, remote: &str) -> Result<Caller, Status> {
    caller_of(state, &s.record.principal, remote).await
}

pub(super) async fn caller_of(
    state: &AuthState,
    p: &Principal,
    remote: &str,
) -> Result<Caller, Status> {
    let Some(ident) = &p.identity else {
        return Ok(Caller::LocalAdmin);
    };
    // Never an agent's own identity: its generation check would, after two
    // renewals, lock the instance as stolen (login refuses it already).
    if ident.is_agent_identity() {
        return Err(Status::permission_denied(AGENT_IDENTITY_REFUSED));
    }
    let (Some(not_before), Some(not_after)) = (at(p.cert_not_before), at(p.cert_not_after)) else {
        return Err(Status::unauthenticated(
            "the session's certificate dates are invalid",
        ));
    };
    if ident.cluster != state.cluster {
        return Err(Status::unauthenticated(
            "the identity belongs to another cluster",
        ));
    }
    if not_after <= OffsetDateTime::now_utc() {
        return Err(Status::unauthenticated(
            "the certificate this session came from has expired: log in again",
        ));
    }
    // As `authz::caller` checks the connection's issuer: a rotation that
    // drops the client CA ends the sessions its certificates opened.
    if !p
        .client_ca_pin
        .as_deref()
        .is_some_and(|pin| authz::client_ca_trusted(state, pin))
    {
        return Err(Status::unauthenticated(
            "the certificate this session came from was signed by a client CA this cluster no longer trusts: log in again with a fresh identity",
        ));
    }
    state.view_current()?;
    if let Some(lock) = state.cache.lock_for(&authz::lock_targets(ident)) {
        return Err(authz::locked(&lock));
    }
    authz::check_current(state, ident, remote).await?;
    Ok(Caller::Bot(Box::new((
        ident.clone(),
        CertInfo {
            serial_hex: p.cert_serial.clone(),
            not_before,
            not_after,
            spki_sha256_hex: String::new(),
            issuer_spki_pin: None,
        },
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_before_use() {
        let s = new_secret().unwrap();
        assert!(well_formed(&s));
        assert_ne!(s, new_secret().unwrap());
        assert!(!well_formed(""));
        assert!(!well_formed(&s[..42]));
        assert!(!well_formed(&format!("{}=", &s[..42])));
        assert!(!well_formed(&format!("{}/", &s[..42])));
    }

    #[test]
    fn hashes_compare() {
        let h = sha256("a");
        assert!(same_hash(&h, &sha256("a")));
        assert!(!same_hash(&h, &sha256("b")));
        assert!(!same_hash(&h, ""));
    }

    #[test]
    fn idle_end_never_passes_the_absolute_end() {
        let r = SessionRecord {
            principal: Principal::of(&Caller::LocalAdmin, None),
            csrf_sha256: String::new(),
            created_unix: 0,
            ends_unix: 1000,
            last_seen_unix: 0,
        };
        assert_eq!(idle_end(&r, 0), 1000.min(IDLE_TIMEOUT.as_secs() as i64));
        assert_eq!(idle_end(&r, 999), 1000);
    }

    #[test]
    fn a_session_is_live_only_within_its_end_and_idle_timeout() {
        let idle = IDLE_TIMEOUT.as_secs() as i64;
        let r = SessionRecord {
            principal: Principal::of(&Caller::LocalAdmin, None),
            csrf_sha256: String::new(),
            created_unix: 0,
            ends_unix: 10 * idle,
            last_seen_unix: 100,
        };
        assert!(live(&r, 100));
        assert!(live(&r, 100 + idle - 1));
        assert!(!live(&r, 100 + idle), "idle past the timeout");
        let ending = SessionRecord {
            last_seen_unix: 10 * idle - 5,
            ..r.clone()
        };
        assert!(!live(&ending, 10 * idle), "past the absolute end");
    }

    #[test]
    fn a_principal_keeps_its_client_ca_and_old_records_have_none() {
        let p = Principal::of(&Caller::LocalAdmin, Some("pin"));
        assert_eq!(p.client_ca_pin, None, "the local admin has no certificate");
        // A session stored before the pin was kept decodes without one, and
        // `caller_of` refuses a bot principal without one (fail closed).
        let old: Principal = serde_json::from_str(r#"{"identity":null}"#).unwrap();
        assert_eq!(old.client_ca_pin, None);
    }
}
