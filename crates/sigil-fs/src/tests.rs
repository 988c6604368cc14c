use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::*;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

/// Foreign ownership needs root to set up (CI runs the tests as root).
fn is_root() -> bool {
    let root = sys::geteuid() == 0;
    if !root {
        eprintln!("not root: cannot chown to another user; this check needs root");
    }
    root
}

#[test]
fn writes_are_atomic_with_an_exact_mode_and_leave_no_temp_files() {
    let t = tempfile::tempdir().unwrap();
    let d = SafeDir::create(&t.path().join("a/out"), "test", DirKind::Private).unwrap();
    assert_eq!(mode(&t.path().join("a/out")), 0o700);
    assert_eq!(mode(&t.path().join("a")), 0o755);
    d.write("k", b"one", SECRET).unwrap();
    d.write("k", b"two", SECRET).unwrap();
    d.write("c", b"c", PUBLIC).unwrap();
    assert_eq!(d.read("k").unwrap().unwrap(), b"two");
    assert_eq!(mode(&t.path().join("a/out/k")), 0o600);
    assert_eq!(mode(&t.path().join("a/out/c")), 0o644);
    let mut names: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "k"]);
    assert!(d.read("missing").unwrap().is_none());
    assert!(err(d.write("../x", b"x", SECRET)).contains("not a plain file name"));
}

#[test]
fn a_symlink_at_the_final_name_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let d = SafeDir::create(&t.path().join("out"), "test", DirKind::Shared).unwrap();
    symlink(&victim, t.path().join("out/tls.key")).unwrap();
    // Reading through it is refused too.
    assert!(err(d.read("tls.key")).contains("symbolic link"));
    d.write("tls.key", b"secret", SECRET).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    let m = fs::symlink_metadata(t.path().join("out/tls.key")).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(fs::read(t.path().join("out/tls.key")).unwrap(), b"secret");
}

#[test]
fn temp_files_left_by_a_killed_writer_are_removed_by_the_next_write() {
    let t = tempfile::tempdir().unwrap();
    let d = SafeDir::create(&t.path().join("out"), "test", DirKind::Shared).unwrap();
    let out = t.path().join("out");
    let victim = t.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::write(out.join(".tls.key.0123456789abcdef.tmp"), b"old key").unwrap();
    // Not this writer's pattern, another artifact's, or not a regular file: kept.
    fs::write(out.join(".tls.key.x.tmp"), b"someone's").unwrap();
    fs::write(out.join(".tls.crt.0123456789abcdef.tmp"), b"other artifact").unwrap();
    symlink(&victim, out.join(".tls.key.fedcba9876543210.tmp")).unwrap();
    d.write("tls.key", b"secret", SECRET).unwrap();
    assert!(!out.join(".tls.key.0123456789abcdef.tmp").exists());
    assert!(out.join(".tls.key.x.tmp").exists());
    assert!(out.join(".tls.crt.0123456789abcdef.tmp").exists());
    assert!(fs::symlink_metadata(out.join(".tls.key.fedcba9876543210.tmp")).is_ok());
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(out.join("tls.key")).unwrap(), b"secret");
}

#[test]
fn a_pre_created_temp_name_is_neither_followed_nor_removed() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let d = SafeDir::create(&t.path().join("out"), "test", DirKind::Shared).unwrap();
    symlink(&victim, t.path().join("out/.tls.key.x.tmp")).unwrap();
    let e = err(d.write_via(
        "tls.key",
        ".tls.key.x.tmp",
        b"secret",
        SECRET,
        FileOwner::default(),
    ));
    assert!(e.contains("out/tls.key"), "{e}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(!t.path().join("out/tls.key").exists());
    assert!(d.contains(".tls.key.x.tmp").unwrap());
    // A planted FIFO does not hang a read.
    let fifo = std::ffi::CString::new(t.path().join("out/f").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(err(d.read("f")).contains("not a regular file"));
}

#[test]
fn a_symlinked_destination_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let elsewhere = t.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o700);
    let link = t.path().join("out");
    symlink(&elsewhere, &link).unwrap();
    for e in [
        err(SafeDir::open(&link, "output destination")),
        err(SafeDir::create(
            &link,
            "output destination",
            DirKind::Shared,
        )),
        err(check_writable(&link, "output destination")),
        err(write_atomic(&link.join("x"), b"x", SECRET)),
    ] {
        assert!(e.contains("symbolic link") && e.contains("out"), "{e}");
    }
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A symlink in a parent is resolved and its target checked instead.
    fs::create_dir(elsewhere.join("sub")).unwrap();
    let via = t.path().join("out/sub");
    SafeDir::open(&via, "test").unwrap().unwrap();
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_write_keeps_our_files_inside_it() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let elsewhere = t.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let d = SafeDir::create(&out, "test", DirKind::Shared).unwrap();
    d.write("a", b"1", SECRET).unwrap();
    // Between our check and the next write, the directory is moved away and
    // a symlink to somewhere else takes its name.
    fs::rename(&out, t.path().join("moved")).unwrap();
    symlink(&elsewhere, &out).unwrap();
    d.write("b", b"2", SECRET).unwrap();
    d.remove("a").unwrap();
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(fs::read(t.path().join("moved/b")).unwrap(), b"2");
    assert!(!t.path().join("moved/a").exists());
}

#[test]
fn directories_writable_by_others_are_refused_unless_a_sticky_parent() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    chmod(&out, 0o777);
    let e = err(SafeDir::open(&out, "output destination"));
    assert!(
        e.contains("writable by other users") && e.contains("chmod go-w"),
        "{e}"
    );
    chmod(&out, 0o1777);
    assert!(err(check_writable(&out, "output destination")).contains("chmod go-w"));
    chmod(&out, 0o770);
    assert!(err(SafeDir::open(&out, "x")).contains("mode 0770"));

    // A parent writable by others without the sticky bit could swap `out`.
    chmod(&out, 0o700);
    let parent = t.path();
    chmod(parent, 0o777);
    let e = err(SafeDir::open(&out, "storage"));
    assert!(
        e.contains("parent directory") && e.contains("without the sticky bit"),
        "{e}"
    );
    assert!(err(check_writable(&out.join("missing"), "storage")).contains("sticky"));
    // With the sticky bit (like /tmp), our own 0700 directory in it is fine.
    chmod(parent, 0o1777);
    SafeDir::open(&out, "storage").unwrap().unwrap();
    check_writable(&out, "storage").unwrap();
    chmod(parent, 0o700);
}

#[test]
fn directories_owned_by_another_user_are_refused() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    chmod(&out, 0o700);
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let e = err(SafeDir::open(&out, "storage"));
    assert!(
        e.contains("belongs to uid 65534") && e.contains("chown"),
        "{e}"
    );
    assert!(err(check_writable(&out, "storage")).contains("uid 65534"));
    assert!(err(write_atomic(&out.join("x"), b"x", SECRET)).contains("uid 65534"));
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    // A parent of another user's could swap what is under it.
    let under = out.join("mine");
    fs::create_dir(&under).unwrap();
    let e = err(SafeDir::open(&under, "storage"));
    assert!(
        e.contains("parent directory") && e.contains("uid 65534"),
        "{e}"
    );
    let e = err(check_writable(&under.join("new"), "storage"));
    assert!(e.contains("uid 65534"), "{e}");
    assert!(
        !under.join("new").exists() && fs::read_dir(&under).unwrap().count() == 0,
        "nothing created"
    );
}

#[test]
fn checking_a_missing_directory_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let deep = t.path().join("a/b/c");
    check_writable(&deep, "storage").unwrap();
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    // A file where a parent should be fails at once.
    fs::write(t.path().join("file"), b"").unwrap();
    assert!(check_writable(&t.path().join("file/x"), "storage").is_err());
    // An unwritable parent fails at once too (root writes anywhere but a
    // read-only mount, so this part only runs for other users).
    if sys::geteuid() != 0 {
        fs::create_dir(t.path().join("ro")).unwrap();
        chmod(&t.path().join("ro"), 0o500);
        assert!(
            err(check_writable(&t.path().join("ro/x"), "storage")).contains("cannot be created")
        );
    }
    assert_eq!(fs::metadata(t.path()).unwrap().uid(), sys::geteuid());
}

#[test]
fn the_lock_admits_one_holder_at_a_time() {
    let t = tempfile::tempdir().unwrap();
    let d = SafeDir::create(&t.path().join("data"), "--data-dir", DirKind::Private).unwrap();
    let held = d.lock("sigil.lock").unwrap();
    let again = SafeDir::open(&t.path().join("data"), "--data-dir")
        .unwrap()
        .unwrap();
    let e = err(again.lock("sigil.lock"));
    assert!(
        e.contains("in use") && e.contains(&format!("process {}", std::process::id())),
        "{e}"
    );
    drop(held);
    let _ok = again.lock("sigil.lock").unwrap();
    // A lock file that is a symlink is never opened.
    fs::remove_file(t.path().join("data/sigil.lock")).unwrap();
    symlink("/etc/passwd", t.path().join("data/sigil.lock")).unwrap();
    assert!(again.lock("sigil.lock").is_err());
}

#[test]
fn a_file_is_given_to_its_owner_before_it_appears() {
    let t = tempfile::tempdir().unwrap();
    let d = SafeDir::create(&t.path().join("out"), "test", DirKind::Shared).unwrap();
    // Root gives it to `nobody`; anyone else to its own group (all it may do).
    let owner = if sys::geteuid() == 0 {
        FileOwner {
            uid: Some(65534),
            gid: Some(65534),
        }
    } else {
        // SAFETY: getegid has no arguments and cannot fail.
        FileOwner {
            uid: None,
            gid: Some(unsafe { libc::getegid() }),
        }
    };
    d.write_as("tls.key", b"secret", 0o640, owner).unwrap();
    let m = fs::symlink_metadata(t.path().join("out/tls.key")).unwrap();
    if let Some(uid) = owner.uid {
        assert_eq!(m.uid(), uid);
    }
    assert_eq!(Some(m.gid()), owner.gid);
    assert_eq!(mode(&t.path().join("out/tls.key")), 0o640);
    // No temp file left behind.
    let names: Vec<_> = fs::read_dir(t.path().join("out")).unwrap().collect();
    assert_eq!(names.len(), 1);
}
