//! Output destinations an attacker on the machine prepared: a symlink where
//! a credential file goes, a symlinked or world-writable directory, and a
//! directory swapped for a symlink while the agent runs. Nothing may land
//! outside the destination, and no file the attacker points at changes.

use crate::common::*;
use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

static AUTH: Slot = Slot::new(None);

fn auth() -> Arc<Auth> {
    shared(&AUTH, Auth::start)
}

/// A file the attacker wants overwritten, and its content.
fn victim(dir: &std::path::Path) -> (std::path::PathBuf, &'static str) {
    let v = dir.join("victim");
    std::fs::create_dir_all(&v).unwrap();
    let f = v.join("passwd");
    std::fs::write(&f, "root:x:0:0\n").unwrap();
    (f, "root:x:0:0\n")
}

/// attack: outputs | the `identity` output file pre-placed as a symlink to another file | the symlink is replaced by a regular file; its target unchanged
#[test]
fn symlink_at_the_output_file() {
    let auth = auth();
    let t = auth.bot("out-link", &["ubuntu"]);
    let agent = AgentDirs::new();
    let (target, content) = victim(agent.dir.path());
    std::fs::create_dir_all(&agent.out).unwrap();
    std::fs::set_permissions(&agent.out, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&target, agent.out.join("identity")).unwrap();
    let o = agent.oneshot(&auth, Some(&t));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), content);
    let meta = std::fs::symlink_metadata(agent.out.join("identity")).unwrap();
    assert!(meta.file_type().is_file(), "still a symlink");
    assert_eq!(mode(&agent.out.join("identity")), 0o600);
}

/// attack: outputs | the output directory itself a symlink to the attacker's choice | refused, exit 1, "is a symbolic link; refusing to follow it"; nothing written there
#[test]
fn output_directory_is_a_symlink() {
    let auth = auth();
    let t = auth.bot("out-dirlink", &["ubuntu"]);
    let agent = AgentDirs::new();
    let (target, content) = victim(agent.dir.path());
    let victim_dir = target.parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(&victim_dir, &agent.out).unwrap();
    let o = agent.oneshot(&auth, Some(&t));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is a symbolic link; refusing to follow it"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), content);
    assert_eq!(
        std::fs::read_dir(&victim_dir).unwrap().count(),
        1,
        "something landed there"
    );
}

/// attack: outputs | the output directory world-writable without the sticky bit (another user could swap files) | refused, exit 1, "writable"; no credential written
#[test]
fn world_writable_output_directory() {
    let auth = auth();
    let t = auth.bot("out-0777", &["ubuntu"]);
    let agent = AgentDirs::new();
    std::fs::create_dir_all(&agent.out).unwrap();
    std::fs::set_permissions(&agent.out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = agent.oneshot(&auth, Some(&t));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writable"),
        "{}",
        text(&o)
    );
    assert!(!agent.out.join("identity").exists());
}

/// attack: outputs | the output directory swapped for a symlink to another directory while the agent runs, then a renewal | the write is refused ("is a symbolic link; refusing to follow it"), the agent keeps its credentials; the symlink's target unchanged
#[test]
fn output_directory_swapped_mid_run() {
    let auth = auth();
    let t = auth.bot("out-swap", &["ubuntu"]);
    let agent = AgentDirs::new();
    let (target, content) = victim(agent.dir.path());
    let victim_dir = target.parent().unwrap().to_path_buf();
    let log_path = agent.dir.path().join("agent.log");
    let mut child = agent
        .command(&auth, Some(&t), false)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("agent");
    let id = agent.out.join("identity");
    wait_until("the first identity", Duration::from_secs(30), || {
        id.exists()
    });
    let first = std::fs::read_to_string(&id).unwrap();
    let moved = agent.dir.path().join("moved-out");
    std::fs::rename(&agent.out, &moved).unwrap();
    std::os::unix::fs::symlink(&victim_dir, &agent.out).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let refused = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("is a symbolic link; refusing to follow it"))
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(refused, "no refusal logged:\n{log}");
    assert!(log.contains("keeping the current credentials"), "{log}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), content);
    assert_eq!(
        std::fs::read_dir(&victim_dir).unwrap().count(),
        1,
        "a file landed in the symlink's target"
    );
    assert_eq!(
        std::fs::read_to_string(moved.join("identity")).unwrap(),
        first
    );
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
