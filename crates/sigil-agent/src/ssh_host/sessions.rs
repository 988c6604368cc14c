//! Open SSH sessions that logged in with a Sigil certificate. The principals
//! command records each login's sshd process — its own parent, the
//! connection's privileged monitor, which the logged-in user can neither
//! signal nor rename — and the host agent ends every recorded session whose
//! certificate a lock has since revoked, by killing that process tree.
//! OpenSSH's `ExposeAuthInfo` tells the same to the session itself, but a
//! session can delete that file and clear its environment; the monitor's
//! pid it cannot hide.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::access::{Attempt, HostAccess};
use crate::fsutil::{DirKind, SECRET, SafeDir};

/// Under the ssh-host output's directory.
pub const SESSIONS_DIR: &str = "sessions";
const WHAT: &str = "SSH session registry";

/// One login, as recorded by the principals command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The sshd process of the connection.
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a reused pid is never killed.
    pub start_ticks: u64,
    pub user: String,
    pub key_id: String,
    pub serial: u64,
}

/// Record the login of `a` as served by this process's parent, which must
/// be a root-owned sshd (never init or a subreaper this command was
/// re-parented to when sshd died mid-login: a later lock would kill it).
pub fn register(dir: &Path, a: &Attempt<'_>) -> anyhow::Result<()> {
    let pid = i32::try_from(std::os::unix::process::parent_id()).context("parent pid")?;
    check_sshd(pid)?;
    let start_ticks = start_ticks(pid).context("reading sshd's start time")?;
    let rec = SessionRecord {
        pid,
        start_ticks,
        user: a.user.to_string(),
        key_id: a.key_id.to_string(),
        serial: a.serial,
    };
    let sd = SafeDir::create(&dir.join(SESSIONS_DIR), WHAT, DirKind::Private)?;
    let name = format!("{pid}.json");
    sd.write(&name, &serde_json::to_vec(&rec)?, SECRET)?;
    // sshd may have died (and this process been re-parented) meanwhile.
    if std::os::unix::process::parent_id() as i32 != pid {
        sd.remove(&name)?;
        anyhow::bail!("sshd (pid {pid}) went away during the login");
    }
    Ok(())
}

/// `pid` is a root-owned sshd process (`sshd`, or `sshd-session` from 9.8).
fn check_sshd(pid: i32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    anyhow::ensure!(
        pid > 1,
        "the principals command's parent is pid {pid}, not sshd"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("reading /proc/{pid}/exe"))?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let owner = std::fs::metadata(format!("/proc/{pid}"))?.uid();
    anyhow::ensure!(
        name.starts_with("sshd") && owner == 0,
        "the principals command's parent (pid {pid}, {}) is not a root-owned sshd; \
         only sshd should run `sigil ssh principals`",
        exe.display()
    );
    Ok(())
}

/// A session ended by [`sweep`].
#[derive(Debug)]
pub struct Ended {
    pub record: SessionRecord,
    pub reason: String,
}

/// End every recorded session that `access` no longer allows; forget
/// records of sessions that are gone.
pub fn sweep(dir: &Path, access: &HostAccess) -> anyhow::Result<Vec<Ended>> {
    let Some(sd) = SafeDir::open(&dir.join(SESSIONS_DIR), WHAT)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = std::fs::read_dir(sd.path())
        .with_context(|| format!("listing {}", sd.path().display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let mut ended = Vec::new();
    let mut tree: Option<HashMap<i32, Vec<i32>>> = None;
    // One bad record must not stop the others being checked.
    let forget = |name: &str| {
        if let Err(e) = sd.remove(name) {
            tracing::error!(record = name, error = %format!("{e:#}"), "removing an SSH session record failed");
        }
    };
    for name in names {
        let rec: Option<SessionRecord> = match sd.read(&name) {
            Ok(b) => b.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(e) => {
                tracing::error!(record = %name, error = %format!("{e:#}"), "unreadable SSH session record");
                continue;
            }
        };
        let Some(rec) = rec else {
            forget(&name);
            continue;
        };
        if rec.pid <= 1 || start_ticks(rec.pid).ok() != Some(rec.start_ticks) {
            forget(&name);
            continue;
        }
        let attempt = Attempt {
            user: &rec.user,
            key_id: &rec.key_id,
            serial: rec.serial,
        };
        if let Err(reason) = access.allows(&attempt) {
            let children = tree.get_or_insert_with(process_tree);
            // Kept (and retried next sweep) unless sshd's process is gone.
            if let Err(e) = kill_tree(rec.pid, children) {
                tracing::error!(pid = rec.pid, error = %e, "could not end a revoked SSH session");
                continue;
            }
            forget(&name);
            ended.push(Ended {
                record: rec,
                reason,
            });
        }
    }
    Ok(ended)
}

/// Field 22 of `/proc/PID/stat`.
fn start_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(')').context("malformed stat")?;
    // `rest` starts at field 3 (state): field 22 is the 20th after it.
    rest.split_whitespace()
        .nth(19)
        .context("malformed stat")?
        .parse()
        .context("malformed stat")
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Children of every process.
fn process_tree() -> HashMap<i32, Vec<i32>> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return children;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    children
}

/// SIGKILL `root` and everything below it. The root goes first so it
/// cannot start more; the rest were listed before, so they are still
/// found after they are re-parented. Never init, this agent or its
/// ancestors. Fails if the root could not be killed (e.g. EPERM when the
/// agent is not root).
fn kill_tree(root: i32, children: &HashMap<i32, Vec<i32>>) -> std::io::Result<()> {
    let mut protected = vec![1, std::process::id() as i32];
    let mut p = std::process::id() as i32;
    while let Some(parent) = parent_of(p).filter(|q| *q > 1 && !protected.contains(q)) {
        protected.push(parent);
        p = parent;
    }
    if protected.contains(&root) || root <= 1 {
        return Err(std::io::Error::other(format!(
            "refusing to kill pid {root}: init, this agent or its parent"
        )));
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        if let Some(c) = children.get(&all[i]) {
            for p in c {
                if !all.contains(p) {
                    all.push(*p);
                }
            }
        }
        i += 1;
    }
    for (i, pid) in all.into_iter().enumerate() {
        if protected.contains(&pid) {
            continue;
        }
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        if i == 0 && rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_this_process_is_stable() {
        let me = std::process::id() as i32;
        let a = start_ticks(me).unwrap();
        assert_eq!(a, start_ticks(me).unwrap());
        assert!(start_ticks(i32::MAX).is_err());
    }

    #[test]
    fn sweep_kills_a_revoked_session_tree_and_forgets_dead_ones() {
        let tmp = tempfile::tempdir().unwrap();
        // A process tree standing in for an sshd connection: sh → sleep.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sd = SafeDir::create(&tmp.path().join(SESSIONS_DIR), WHAT, DirKind::Private).unwrap();
        let rec = SessionRecord {
            pid,
            start_ticks: start_ticks(pid).unwrap(),
            user: "deploy".into(),
            key_id: "bot:deployer:u1:i1".into(),
            serial: 5,
        };
        sd.write(
            &format!("{pid}.json"),
            &serde_json::to_vec(&rec).unwrap(),
            SECRET,
        )
        .unwrap();
        let dead = SessionRecord {
            pid: i32::MAX,
            ..rec.clone()
        };
        sd.write("dead.json", &serde_json::to_vec(&dead).unwrap(), SECRET)
            .unwrap();
        let allowed = HostAccess {
            version: 1,
            access: vec![super::super::access::BotAccess {
                bot: "deployer".into(),
                bot_uid: "u1".into(),
                logins: vec!["deploy".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(sweep(tmp.path(), &allowed).unwrap().is_empty());
        assert!(!sd.contains("dead.json").unwrap(), "dead session forgotten");
        assert!(child.try_wait().unwrap().is_none(), "allowed session lives");
        let mut locked = allowed.clone();
        locked.revoked_key_ids.push("bot:deployer:u1:i1".into());
        let ended = sweep(tmp.path(), &locked).unwrap();
        assert_eq!(ended.len(), 1);
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!sd.contains(&format!("{pid}.json")).unwrap());
    }
}
