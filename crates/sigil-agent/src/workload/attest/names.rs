//! User and group names for ids, through NSS (getpwuid_r / getgrgid_r).
//!
//! NSS may go to LDAP or sssd and take milliseconds, so answers (including
//! "no such id") are cached briefly and lookups run off the async workers.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name (or its absence) is trusted.
const TTL: Duration = Duration::from_secs(60);
/// Entries per cache before it is emptied and refilled.
const MAX_ENTRIES: usize = 1024;
/// Largest NSS buffer we grow to on ERANGE.
const MAX_BUFFER: usize = 1 << 20;

/// Which database to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    User,
    Group,
}

/// A name (or its absence) and when it was looked up.
type Answer = (Option<String>, Instant);

/// Cached id-to-name answers.
#[derive(Default)]
pub(super) struct NameCache {
    entries: Mutex<HashMap<(Kind, u32), Answer>>,
}

impl NameCache {
    /// The name of `id`, or `None` if NSS does not know it.
    pub async fn name(&self, kind: Kind, id: u32) -> Option<String> {
        if let Some(hit) = self.cached(kind, id) {
            return hit;
        }
        let name = tokio::task::spawn_blocking(move || lookup(kind, id))
            .await
            .ok()
            .flatten();
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= MAX_ENTRIES {
            e.clear();
        }
        e.insert((kind, id), (name.clone(), Instant::now()));
        name
    }

    fn cached(&self, kind: Kind, id: u32) -> Option<Option<String>> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.get(&(kind, id))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(n, _)| n.clone())
    }
}

fn lookup(kind: Kind, id: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        let rc = match kind {
            Kind::User => user(id, &mut buf),
            Kind::Group => group(id, &mut buf),
        };
        match rc {
            Err(libc::ERANGE) if buf.len() < MAX_BUFFER => buf.resize(buf.len() * 2, 0),
            Err(_) => return None,
            Ok(name) => return name,
        }
    }
}

fn user(uid: u32, buf: &mut [u8]) -> Result<Option<String>, libc::c_int> {
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the given length; on success the
    // strings in `pwd` point into `buf`, which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    if found.is_null() || pwd.pw_name.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, NUL-terminated, inside `buf`.
    Ok(Some(
        unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned(),
    ))
}

fn group(gid: u32, buf: &mut [u8]) -> Result<Option<String>, libc::c_int> {
    // SAFETY: all-zero is a valid `group` (null pointers, zero id).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user`.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    if found.is_null() || grp.gr_name.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, NUL-terminated, inside `buf`.
    Ok(Some(
        unsafe { CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn root_resolves_and_unknown_ids_do_not() {
        let c = NameCache::default();
        assert_eq!(c.name(Kind::User, 0).await.as_deref(), Some("root"));
        assert_eq!(c.name(Kind::Group, 0).await.as_deref(), Some("root"));
        assert_eq!(c.name(Kind::User, 3_999_999_999).await, None);
        // Cached answers, including the negative one.
        assert_eq!(c.cached(Kind::User, 3_999_999_999), Some(None));
    }
}
