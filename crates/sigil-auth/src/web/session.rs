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
    pub record: SessionRecord,
}

impl Session {
    /// A name for the session's principal in audit events.
    pub fn actor(&self) -> String {
        self.record.principal.actor()
    }
}

impl Principal {
    fn of(caller: &Caller) -> Principal {
        match caller {
            Caller::LocalAdmin => Principal {
                identity: None,
                cert_serial: String::new(),
                cert_not_before: 0,
                cert_not_after: i64::MAX,
            },
            Caller::Bot(b) => Principal {
                identity: Some(b.0.clone()),
                cert_serial: b.1.serial_hex.clone(),
                cert_not_before: b.1.not_before.unix_timestamp(),
                cert_not_after: b.1.not_after.unix_timestamp(),
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

/// A login link for `caller`: `(url, expires_unix)`. The secret is in the
/// URL's fragment, which browsers never send, so no server log holds it.
pub async fn create_login(state: &AuthState, caller: &Caller) -> Result<(String, i64), Status> {
    let principal = Principal::of(caller);
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
            serde_json::json!({"reason": reason, "remote_addr": remote}),
        );
        state.denials.record(state.store.as_ref(), ev).await;
    }
    result.map_err(|_| ())
}

async fn redeem_inner(state: &AuthState, secret: &str, remote: &str) -> Result<NewSession, String> {
    const UNKNOWN: &str = "unknown, used or expired login link";
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
    let id = new_secret().map_err(|e| e.message().to_string())?;
    let csrf = new_secret().map_err(|e| e.message().to_string())?;
    let ends = (now + SESSION_TTL.as_secs() as i64).min(p.cert_not_after);
    let record = SessionRecord {
        principal: login.principal.clone(),
        csrf_sha256: sha256(&csrf),
        created_unix: now,
        ends_unix: ends,
        last_seen_unix: now,
    };
    let actor = record.principal.actor();
    let txn = Txn {
        ops: vec![
            Op::Delete {
                key,
                expected_revision: Some(item.revision),
            },
            Op::Create {
                key: format!("{SESSIONS}{}", sha256(&id)),
                value: serde_json::to_vec(&record).map_err(|e| e.to_string())?,
                expires: at(idle_end(&record, now)),
            },
        ],
        audit: vec![audit::event(
            WEB_LOGIN,
            serde_json::json!({"by": actor, "remote_addr": remote, "session_ends_unix": ends}),
        )],
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

/// The live session a cookie names, its idle clock moved on; `None` for no,
/// a malformed, an unknown or an ended session.
pub async fn find(state: &AuthState, id: &str) -> Option<Session> {
    if !well_formed(id) {
        return None;
    }
    let key = format!("{SESSIONS}{}", sha256(id));
    let item = state.store.get(&key).await.ok()??;
    let mut record: SessionRecord = serde_json::from_slice(&item.value).ok()?;
    let now = unix(OffsetDateTime::now_utc());
    // The store hides expired records; checked here too, so a store with a
    // late purge or a skewed clock cannot stretch a session.
    if now >= record.ends_unix || now >= record.last_seen_unix + IDLE_TIMEOUT.as_secs() as i64 {
        return None;
    }
    if now - record.last_seen_unix >= TOUCH_EVERY.as_secs() as i64 {
        record.last_seen_unix = now;
        let op = Op::Update {
            key: key.clone(),
            value: serde_json::to_vec(&record).ok()?,
            expires: at(idle_end(&record, now)),
            expected_revision: Some(item.revision),
        };
        // A concurrent request moved it already, or logout removed it:
        // either way this request goes on with what it read.
        let _ = state
            .store
            .commit(Txn {
                ops: vec![op],
                audit: vec![],
            })
            .await;
    }
    Some(Session { key, record })
}

/// Whether the session still exists (not logged out, ended or idle past its
/// timeout), read afresh from the store: what a long-lived stream re-checks.
pub async fn alive(state: &AuthState, s: &Session) -> bool {
    let now = unix(OffsetDateTime::now_utc());
    matches!(state.store.get(&s.key).await, Ok(Some(_))) && now < s.record.ends_unix
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

async fn caller_of(state: &AuthState, p: &Principal, remote: &str) -> Result<Caller, Status> {
    let Some(ident) = &p.identity else {
        return Ok(Caller::LocalAdmin);
    };
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
            principal: Principal::of(&Caller::LocalAdmin),
            csrf_sha256: String::new(),
            created_unix: 0,
            ends_unix: 1000,
            last_seen_unix: 0,
        };
        assert_eq!(idle_end(&r, 0), 1000.min(IDLE_TIMEOUT.as_secs() as i64));
        assert_eq!(idle_end(&r, 999), 1000);
    }
}
