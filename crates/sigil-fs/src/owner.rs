//! Giving written files to another user or group: the program that reads an
//! output is often not the agent's user, and some refuse a key they do not own
//! (PostgreSQL: the server key must belong to the database user, or to root with
//! mode 0640).

use std::ffi::CString;

use anyhow::{Context, bail};

use crate::sys;

/// Who the files written into a directory belong to; `None` keeps the writer's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl FileOwner {
    /// Resolves a user and a group (names, or numeric ids) on this host, and
    /// checks this process may give files to them: only root may give a file to
    /// another user; any process may give its files to a group it is in.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<FileOwner> {
        let uid = user
            .map(|u| user_id(u).with_context(|| format!("owner {u:?}")))
            .transpose()?;
        let gid = group
            .map(|g| group_id(g).with_context(|| format!("group {g:?}")))
            .transpose()?;
        let euid = sys::geteuid();
        if euid != 0 {
            if let (Some(u), Some(name)) = (uid, user)
                && u != euid
            {
                bail!(
                    "owner {name:?}: only root may give files to another user (this process runs as uid {euid}); run the agent as root, or as {name:?}"
                );
            }
            if let (Some(g), Some(name)) = (gid, group)
                && !sys::in_group(g)?
            {
                bail!(
                    "group {name:?}: this process (uid {euid}) is not a member of it, so it may not give files to it"
                );
            }
        }
        Ok(FileOwner { uid, gid })
    }

    /// True when files keep the writer's user and group.
    pub fn is_default(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }
}

/// A user name (or numeric uid) to its uid.
fn user_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(name).context("contains a NUL byte")?;
    sys::getpwnam_uid(&c)?.with_context(|| format!("no user {name:?} on this host"))
}

/// A group name (or numeric gid) to its gid.
fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(name).context("contains a NUL byte")?;
    sys::getgrnam_gid(&c)?.with_context(|| format!("no group {name:?} on this host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        let root = FileOwner::resolve(Some("root"), Some("root")).unwrap();
        assert_eq!(root.uid, Some(0));
        assert_eq!(root.gid, Some(0));
        let me = sys::geteuid();
        let num = FileOwner::resolve(Some(&me.to_string()), None).unwrap();
        assert_eq!(num.uid, Some(me));
        assert!(FileOwner::resolve(None, None).unwrap().is_default());
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let e = FileOwner::resolve(Some("no-such-user-sigil"), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("no user \"no-such-user-sigil\""),
            "{e:#}"
        );
        let e = FileOwner::resolve(None, Some("no-such-group-sigil")).unwrap_err();
        assert!(
            format!("{e:#}").contains("no group \"no-such-group-sigil\""),
            "{e:#}"
        );
    }
}
