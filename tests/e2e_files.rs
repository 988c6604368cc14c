//! End to end, issue 10 classes 6, 7 and 9 (files): no symlink games, no
//! foreign owners, no empty directories after a refused join, one auth
//! service per data dir, an admin socket that checks its peer's uid; output
//! files given to another owner and group with a key mode, and reload_command.
//! The tests chown to uid 65534 and run the CLI as it, so they need root
//! (as CI runs them).

mod common;

use common::*;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown (run as root)");
}

fn empty(p: &Path) -> bool {
    std::fs::read_dir(p).expect("dir").next().is_none()
}

#[test]
fn a_refused_join_leaves_no_storage_or_output_directories_behind() {
    let auth = Auth::start();
    let token = auth.bot("files", &["x"]);
    let base = tempfile::tempdir().expect("tempdir");
    let agent = AgentDirs {
        storage: base.path().join("var/lib/sigil"),
        out: base.path().join("srv/out"),
        dir: base,
    };
    let o = agent.oneshot(&auth, Some("0123456789abcdef0123456789abcdef"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    assert!(
        empty(agent.dir.path()),
        "a refused join left directories: {:?}",
        std::fs::read_dir(agent.dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect::<Vec<_>>()
    );
    // The same paths work once the token is good: created on the first write.
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&agent.storage), 0o700);
    assert!(agent.storage.join("credential.json").exists());
    assert_eq!(mode(&agent.out.join("tls.key")), 0o600);
}

#[test]
fn the_agent_refuses_foreign_and_shared_directories_before_joining() {
    let auth = Auth::start();
    let token = auth.bot("strict", &["x"]);
    let agent = AgentDirs::new();

    // Storage owned by another user: they could swap our credential.
    std::fs::create_dir(&agent.storage).expect("mkdir");
    chmod(&agent.storage, 0o700);
    chown_nobody(&agent.storage);
    let o = agent.oneshot(&auth, Some(&token));
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("storage") && t.contains("belongs to uid 65534") && t.contains("chown"),
        "{t}"
    );
    assert!(empty(&agent.storage));
    std::fs::remove_dir(&agent.storage).expect("rmdir");

    // A destination other users may write in, without the sticky bit or with it.
    std::fs::create_dir(&agent.out).expect("mkdir");
    for m in [0o777, 0o1777, 0o775] {
        chmod(&agent.out, m);
        let o = agent.oneshot(&auth, Some(&token));
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("output destination") && t.contains("chmod go-w"),
            "{m:o}: {t}"
        );
    }

    // A destination that is a symlink is not followed.
    std::fs::remove_dir(&agent.out).expect("rmdir");
    let elsewhere = agent.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, &agent.out).expect("symlink");
    let o = agent.oneshot(&auth, Some(&token));
    assert!(!o.status.success());
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    assert!(empty(&elsewhere));

    // All refused locally: the single-use token was never spent.
    assert!(auth.audit("bot.join").is_empty() && auth.audit("bot.join.denied").is_empty());
    std::fs::remove_file(&agent.out).expect("rm");
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_destination_swapped_for_a_symlink_between_renewals_gets_nothing_written() {
    let auth = Auth::start();
    let token = auth.bot("swap", &["x"]);
    let agent = AgentDirs::new();
    let log_path = agent.dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = agent
        .command(&auth, Some(&token), false)
        .env("SIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent");
    let crt = agent.out.join("tls.crt");
    wait_until("first credentials", Duration::from_secs(30), || {
        crt.exists()
    });
    let elsewhere = agent.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::rename(&agent.out, agent.dir.path().join("moved")).expect("mv");
    symlink(&elsewhere, &agent.out).expect("symlink");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until(
        "the renewal to refuse the symlink",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("symbolic link")),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(empty(&elsewhere), "wrote through the symlink");
}

/// `sigil auth start` on DATA with fresh ports; the child.
fn start_auth(data: &Path, log: &Path) -> std::process::Child {
    Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--public-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--cluster-name", "example.test"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start sigil auth")
}

/// Wait for a child that must exit by itself; kill it if it does not.
fn exits(mut c: std::process::Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, Duration::from_secs(30), || {
            status = c.try_wait().expect("wait");
            status.is_some()
        })
    }));
    if done.is_err() {
        let _ = c.kill();
        let _ = c.wait();
        panic!("{what}: it kept running");
    }
    status.expect("exited")
}

#[test]
fn a_second_auth_service_on_a_data_dir_in_use_refuses_to_start() {
    let mut auth = Auth::start();
    let log = auth.dir.path().join("second.log");
    let second = start_auth(&auth.data, &log);
    let st = exits(second, "the second auth service to refuse");
    let msg = std::fs::read_to_string(&log).expect("log");
    assert!(!st.success(), "{msg}");
    assert!(
        msg.contains("is in use")
            && msg.contains("sigil.lock")
            && msg.contains("another `sigil auth start`"),
        "{msg}"
    );
    // The first is untouched: its socket is still there and answers.
    auth.ok(&["status"]);
    // Once it stops, the data dir is free again.
    auth.stop();
    auth.spawn();
    auth.ok(&["status"]);
}

#[test]
fn the_auth_service_refuses_a_data_dir_of_another_user_or_open_to_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let log = dir.path().join("auth.log");
    chown_nobody(&data);
    let st = exits(start_auth(&data, &log), "refusal");
    let msg = std::fs::read_to_string(&log).expect("log");
    assert!(
        !st.success() && msg.contains("--data-dir") && msg.contains("uid 65534"),
        "{msg}"
    );
    std::os::unix::fs::chown(&data, Some(0), Some(0)).expect("chown");
    chmod(&data, 0o777);
    let st = exits(start_auth(&data, &log), "refusal");
    let msg = std::fs::read_to_string(&log).expect("log");
    assert!(!st.success() && msg.contains("chmod go-w"), "{msg}");
    assert!(empty(&data), "nothing created in a refused data dir");
}

#[test]
fn the_admin_socket_refuses_other_uids_even_when_modes_let_them_in() {
    let auth = Auth::start();
    auth.bot("target", &["x"]);
    // A copy of the binary another user can run (ours is under /root).
    let bin_dir = tempfile::tempdir().expect("tempdir");
    chmod(bin_dir.path(), 0o755);
    let bin = bin_dir.path().join("sigil");
    std::fs::copy(sigil_bin(), &bin).expect("copy sigil");
    chmod(&bin, 0o755);
    // Loosen every mode on the way, so only the uid check stands.
    chmod(auth.dir.path(), 0o755);
    chmod(&auth.data, 0o755);
    chmod(&auth.data.join("admin.sock"), 0o777);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--data-dir")
            .arg(&auth.data)
            .args(args)
            .env("HOME", "/")
            .output()
            .expect("setpriv")
    };
    for args in [
        &["status"][..],
        &["bots", "add", "intruder", "--roles", "target-role"][..],
    ] {
        let o = as_nobody(args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("uid 65534 may not use the admin socket"),
            "{}",
            text(&o)
        );
    }
    // The owner, with the same binary, is served, and nothing changed.
    let o = Command::new(&bin)
        .arg("--data-dir")
        .arg(&auth.data)
        .args(["bots", "ls", "--format", "json"])
        .output()
        .expect("sigil");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("target") && !stdout(&o).contains("intruder"),
        "{}",
        text(&o)
    );
    assert!(
        auth.log()
            .contains("refusing a connection from another user")
    );
}

/// An agent config with one identity output into `out` with `extra` lines in its
/// destination and `reload` as its reload_command.
fn owned_output_config(
    auth: &Auth,
    dirs: &AgentDirs,
    token: &str,
    extra: &str,
    reload: &str,
) -> std::path::PathBuf {
    let cfg = dirs.dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: token, token: {token}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 1h\nrenewal_interval: 20m\noutputs:\n  - type: identity\n    reload_command: {reload}\n    destination:\n      type: directory\n      path: {}\n{extra}",
            auth.addr(),
            auth.pin,
            dirs.storage.display(),
            dirs.out.display()
        ),
    )
    .expect("config");
    cfg
}

#[test]
fn an_output_is_written_for_its_owner_and_group_and_its_reload_command_runs() {
    use std::os::unix::fs::MetadataExt;
    let auth = Auth::start();
    let token = auth.bot("owned", &["x"]);
    let dirs = AgentDirs::new();
    let marker = dirs.dir.path().join("reloaded");
    let reload = format!("[sh, -c, 'echo reloaded >> {}']", marker.display());

    // A user that does not exist: refused before anything happens, naming the
    // file, line and field; nothing written, no token spent.
    let cfg = owned_output_config(
        &auth,
        &dirs,
        &token,
        "      owner: no-such-user-sigil\n",
        &reload,
    );
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("agent.yaml:")
            && text(&o).contains("outputs[0].destination.owner: ")
            && text(&o).contains("no user \"no-such-user-sigil\""),
        "{}",
        text(&o)
    );
    assert!(!dirs.out.exists() && !marker.exists());

    // The key group-readable by `nogroup` (as PostgreSQL allows for a root-owned
    // key), every file given to nobody: written so before it appears.
    let cfg = owned_output_config(
        &auth,
        &dirs,
        &token,
        "      owner: nobody\n      group: nogroup\n      mode: \"0640\"\n",
        &reload,
    );
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert!(o.status.success(), "{}", text(&o));
    for (file, mode) in [("tls.key", 0o640), ("tls.crt", 0o644), ("ca.crt", 0o644)] {
        let m = std::fs::metadata(dirs.out.join(file)).expect(file);
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{file}");
        assert_eq!(m.mode() & 0o7777, mode, "{file}");
    }
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the reload command ran"),
        "reloaded\n"
    );
    // A renewal rewrites them the same way and reloads again.
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker"),
        "reloaded\nreloaded\n"
    );
    assert_eq!(
        std::fs::metadata(dirs.out.join("tls.key"))
            .expect("key")
            .uid(),
        NOBODY
    );

    // A world-readable key is never allowed.
    let cfg = owned_output_config(&auth, &dirs, &token, "      mode: \"0644\"\n", &reload);
    let o = Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("outputs[0].destination.mode: "),
        "{}",
        text(&o)
    );
}
