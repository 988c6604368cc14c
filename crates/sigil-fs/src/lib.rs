//! Files written without symlink games or foreign owners.
//!
//! Every directory Sigil writes into (the agent's storage and output
//! destinations, the CLI's output directories, the auth service's data dir)
//! is opened once as a [`SafeDir`]: the path is resolved from `/` one
//! component at a time with `O_NOFOLLOW`, each component is checked, and every
//! later operation is relative to the final directory's descriptor. So a
//! directory swapped for a symlink after the check cannot make us write
//! anywhere else, and a file is never opened through a name we did not create.
//!
//! The rules ([`SafeDir::open`]):
//! - the directory itself belongs to us (our effective uid) and is not
//!   writable by group or others — anyone else who could write in it could
//!   replace the files we write (or read the ones we keep);
//! - every parent directory belongs to root or to us, and is not writable by
//!   group or others unless it has the sticky bit (like `/tmp`): without it,
//!   another user could rename our directory away and put theirs in its place.
//!   Under a sticky parent another user can still take the *name* first (create
//!   it before we do); we then refuse it as theirs, so that is denial of
//!   service, never a write of ours into their directory.
//!
//! Files are written atomically ([`SafeDir::write`]): a temp file created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` and an exact mode, fsync, `renameat` over the
//! final name (which replaces a symlink there rather than following it), fsync
//! of the directory. Nothing is ever opened with `O_TRUNC`.

mod lock;
mod owner;
mod sys;
#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

pub use lock::DirLock;
pub use owner::FileOwner;

/// Mode for private keys and credentials.
pub const SECRET: u32 = 0o600;
/// Mode for certificates and other public material.
pub const PUBLIC: u32 = 0o644;

/// What a directory holds; decides the mode it is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    /// Read by its owner only (agent storage, auth data dir): created 0700.
    Private,
    /// Read by other local users too (an output destination): created 0755.
    Shared,
}

impl DirKind {
    fn mode(self) -> u32 {
        match self {
            DirKind::Private => 0o700,
            DirKind::Shared => 0o755,
        }
    }
}

/// An open directory that passed the ownership and mode checks.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

const PATH_DIR: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
const READ_DIR: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

impl SafeDir {
    /// Open an existing directory; `None` if it does not exist. `what` names
    /// it in errors ("storage", "output destination", "--data-dir").
    pub fn open(path: &Path, what: &str) -> anyhow::Result<Option<SafeDir>> {
        open_dir(path, what, None)
    }

    /// Open the directory, creating it (and missing parents, 0755) if needed.
    pub fn create(path: &Path, what: &str, kind: DirKind) -> anyhow::Result<SafeDir> {
        open_dir(path, what, Some(kind))?
            .with_context(|| format!("{what} {}: could not be created", path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set the directory's mode exactly (through its descriptor, not its path).
    pub fn set_mode(&self, mode: u32) -> anyhow::Result<()> {
        sys::fchmod(self.fd.as_fd(), mode)
            .with_context(|| format!("setting the mode of {}", self.path.display()))
    }

    /// Write `data` to `name` with exactly `mode`, atomically; the temp file
    /// is removed on failure.
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        self.write_as(name, data, mode, FileOwner::default())
    }

    /// [`SafeDir::write`], the file given to `owner` before it appears under its
    /// name (a reader never sees it with the writer's owner).
    pub fn write_as(
        &self,
        name: &str,
        data: &[u8],
        mode: u32,
        owner: FileOwner,
    ) -> anyhow::Result<()> {
        self.remove_stale_temps(name);
        let tmp = format!(".{name}.{}.tmp", sys::random_hex()?);
        self.write_via(name, &tmp, data, mode, owner)
    }

    /// Remove the temp files of `name` that a writer killed mid-write left
    /// behind (`.NAME.<16 hex>.tmp`, a regular file of this user's): they may
    /// hold key material. Best effort; anything else is not ours to remove.
    fn remove_stale_temps(&self, name: &str) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        let prefix = format!(".{name}.");
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(random) = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .and_then(|r| r.strip_suffix(".tmp"))
            else {
                continue;
            };
            if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            // Through the directory's descriptor, and only a regular file of ours.
            let Ok(st) = sys::lstatat(self.fd.as_fd(), &file) else {
                continue;
            };
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == sys::geteuid() {
                let _ = sys::unlinkat(self.fd.as_fd(), &file, 0);
            }
        }
    }

    /// [`SafeDir::write_as`] through the temp name `tmp`.
    fn write_via(
        &self,
        name: &str,
        tmp: &str,
        data: &[u8],
        mode: u32,
        owner: FileOwner,
    ) -> anyhow::Result<()> {
        let final_name = entry(name)?;
        let tmp = entry(tmp)?;
        let what = || format!("writing {}", self.path.join(name).display());
        // O_EXCL|O_NOFOLLOW: a file or symlink already at the temp name is an
        // error, never opened; and it is not ours to remove.
        // Created owner-only: group and other bits are set below, after the file
        // has its final group (a member of the writer's group must not open it
        // meanwhile and read what is written later).
        let fd = sys::openat(
            Some(self.fd.as_fd()),
            tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode & 0o700,
        )
        .with_context(what)?;
        let result = (|| -> io::Result<()> {
            if !owner.is_default() {
                sys::fchown(fd.as_fd(), owner.uid, owner.gid)?;
            }
            // The umask may have narrowed the mode (and a chown may clear bits);
            // set it exactly.
            sys::fchmod(fd.as_fd(), mode)?;
            let mut f = File::from(fd);
            f.write_all(data)?;
            f.sync_all()?;
            sys::renameat(self.fd.as_fd(), tmp, final_name)?;
            sys::fsync(self.fd.as_fd())
        })();
        if result.is_err() {
            let _ = sys::unlinkat(self.fd.as_fd(), tmp, 0);
        }
        result.with_context(what)
    }

    /// Read a regular file; `None` if absent. A symlink or special file is an error.
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        // O_NONBLOCK: a FIFO planted here must not hang the open.
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let fd = match sys::openat(Some(self.fd.as_fd()), entry(name)?, flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                bail!(
                    "{} is a symbolic link; refusing to follow it: remove it",
                    path.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            bail!("{} is not a regular file: remove it", path.display());
        }
        let mut buf = Vec::new();
        File::from(fd)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(buf))
    }

    /// Whether `name` exists (as anything, a symlink included).
    pub fn contains(&self, name: &str) -> anyhow::Result<bool> {
        match sys::lstatat(self.fd.as_fd(), entry(name)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("{}", self.path.join(name).display())),
        }
    }

    /// Remove `name` (a symlink itself, never its target); absent is fine.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        match sys::unlinkat(self.fd.as_fd(), entry(name)?, 0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("removing {}", self.path.join(name).display()))
            }
        }
    }

    /// Rename `from` to `to` inside this directory, then fsync it.
    pub fn rename(&self, from: &str, to: &str) -> anyhow::Result<()> {
        sys::renameat(self.fd.as_fd(), entry(from)?, entry(to)?)
            .and_then(|()| sys::fsync(self.fd.as_fd()))
            .with_context(|| {
                format!(
                    "renaming {} to {}",
                    self.path.join(from).display(),
                    self.path.join(to).display()
                )
            })
    }

    /// Create and remove a probe file: proves we can write here now.
    pub fn probe_writable(&self, what: &str) -> anyhow::Result<()> {
        probe(self.fd.as_fd()).with_context(|| {
            format!(
                "{what} {} is not writable: fix its permissions or choose another path",
                self.path.display()
            )
        })
    }
}

/// Fail fast, creating nothing: an existing directory must pass the checks and
/// be writable; a missing one needs its nearest existing parent to be safe and
/// writable (it is created on the first write, so a refused join leaves no
/// empty directory behind).
pub fn check_writable(path: &Path, what: &str) -> anyhow::Result<()> {
    if let Some(d) = SafeDir::open(path, what)? {
        return d.probe_writable(what);
    }
    let mut anc = path;
    let existing = loop {
        anc = match anc.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => bail!("{what} {}: no parent directory exists", path.display()),
        };
        if std::fs::symlink_metadata(anc).is_ok() {
            break anc;
        }
    };
    let canon = std::fs::canonicalize(existing).with_context(|| {
        format!(
            "{what} {}: resolving {}",
            path.display(),
            existing.display()
        )
    })?;
    let fd = walk(&canon, what, path)?;
    probe(fd.as_fd()).with_context(|| {
        format!(
            "{what} {} does not exist and cannot be created in {}: fix its permissions or choose another path",
            path.display(),
            existing.display()
        )
    })
}

/// Check that `dir` and every directory above it belongs to root or us and
/// is writable by nobody else unless sticky: then no other user can swap an
/// entry we make in it (for a Unix socket, bound and chmod-ed by path).
pub fn check_parents(dir: &Path, what: &str) -> anyhow::Result<()> {
    let canon = std::fs::canonicalize(dir)
        .with_context(|| format!("{what} {}: resolving it", dir.display()))?;
    walk(&canon, what, dir).map(drop)
}

/// Write one file atomically into its (existing, checked) parent directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let (dir, name) = split(path).with_context(|| format!("writing {}", path.display()))?;
    let name = name
        .to_str()
        .with_context(|| format!("{}: the file name is not UTF-8", path.display()))?;
    let d = SafeDir::open(&dir, "directory")?.with_context(|| {
        format!(
            "writing {}: {} does not exist",
            path.display(),
            dir.display()
        )
    })?;
    d.write(name, data, mode)
}

/// Read one regular file through its checked parent directory; `None` if
/// the file or the directory is absent. A symlink is an error.
pub fn read_file(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let (dir, name) = split(path).with_context(|| format!("reading {}", path.display()))?;
    let name = name
        .to_str()
        .with_context(|| format!("{}: the file name is not UTF-8", path.display()))?;
    match SafeDir::open(&dir, "directory")? {
        Some(d) => d.read(name),
        None => Ok(None),
    }
}

/// One directory entry name: no separators, not `.`/`..`.
fn entry(name: &str) -> anyhow::Result<&OsStr> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("{name:?} is not a plain file name");
    }
    Ok(OsStr::new(name))
}

/// The parent directory and the last component of `path`.
fn split(path: &Path) -> anyhow::Result<(PathBuf, OsString)> {
    match path.components().next_back() {
        Some(Component::Normal(n)) => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Ok((parent, n.to_os_string()))
        }
        // `.`, `..` or `/`: resolve it to a real name first.
        _ => {
            let canon = std::fs::canonicalize(path)
                .with_context(|| format!("resolving {}", path.display()))?;
            match (canon.parent(), canon.file_name()) {
                (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_os_string())),
                _ => bail!("{} is not a directory Sigil can write into", path.display()),
            }
        }
    }
}

fn open_dir(path: &Path, what: &str, create: Option<DirKind>) -> anyhow::Result<Option<SafeDir>> {
    let shown = path.display();
    let (parent, name) = split(path).with_context(|| format!("{what} {shown}"))?;
    let parent_fd = match std::fs::canonicalize(&parent) {
        Ok(canon) => walk(&canon, what, path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create {
            // Missing parents are ours to create, and then checked as such.
            Some(_) => SafeDir::create(&parent, what, DirKind::Shared)?.fd,
            None => return Ok(None),
        },
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{what} {shown}: resolving {}", parent.display()));
        }
    };
    let pfd = parent_fd.as_fd();
    let mut created = false;
    let fd = match sys::openat(Some(pfd), &name, READ_DIR, 0) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(kind) = create else {
                return Ok(None);
            };
            match sys::mkdirat(pfd, &name, kind.mode()) {
                Ok(()) => created = true,
                // Someone made it meanwhile: it is checked below like any other.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("{what} {shown}: cannot create the directory"));
                }
            }
            sys::openat(Some(pfd), &name, READ_DIR, 0)
                .map_err(|e| open_error(pfd, &name, e, what, path))?
        }
        Err(e) => return Err(open_error(pfd, &name, e, what, path)),
    };
    if created {
        // The umask may have narrowed the mode; set it exactly.
        sys::fchmod(fd.as_fd(), create.map_or(0o700, DirKind::mode))?;
    }
    check_own(&sys::fstat(fd.as_fd())?, what, path)?;
    Ok(Some(SafeDir {
        fd,
        path: path.to_path_buf(),
    }))
}

fn open_error(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    e: io::Error,
    what: &str,
    path: &Path,
) -> anyhow::Error {
    let shown = path.display();
    match sys::lstatat(parent, name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => anyhow::anyhow!(
            "{what} {shown} is a symbolic link; refusing to follow it (whoever can change the link could redirect our files): use the real directory's path"
        ),
        Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
            anyhow::anyhow!("{what} {shown} exists and is not a directory")
        }
        _ => anyhow::Error::new(e).context(format!(
            "{what} {shown} cannot be opened: fix its permissions or choose another path"
        )),
    }
}

/// Open the canonical directory `canon` from `/` one component at a time,
/// never following a symlink, checking each as a parent of `target`.
fn walk(canon: &Path, what: &str, target: &Path) -> anyhow::Result<OwnedFd> {
    let mut fd = sys::openat(None, OsStr::new("/"), PATH_DIR, 0).context("opening /")?;
    let mut cur = PathBuf::from("/");
    check_parent(&sys::fstat(fd.as_fd())?, &cur, what, target)?;
    for c in canon.components() {
        let Component::Normal(n) = c else { continue };
        cur.push(n);
        fd = sys::openat(Some(fd.as_fd()), n, PATH_DIR, 0).with_context(|| {
            format!(
                "{what} {}: {} changed while it was being checked (or is not a directory); try again",
                target.display(),
                cur.display()
            )
        })?;
        check_parent(&sys::fstat(fd.as_fd())?, &cur, what, target)?;
    }
    Ok(fd)
}

/// A parent must belong to root or us, and be writable by nobody else unless sticky.
fn check_parent(st: &libc::stat, dir: &Path, what: &str, target: &Path) -> anyhow::Result<()> {
    let euid = sys::geteuid();
    let (t, d) = (target.display(), dir.display());
    if st.st_uid != 0 && st.st_uid != euid {
        bail!(
            "{what} {t}: its parent directory {d} belongs to uid {}, who could replace {t} with a directory of their own; use a path whose parent directories belong to root or to uid {euid}",
            st.st_uid
        );
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        bail!(
            "{what} {t}: its parent directory {d} is writable by other users (mode {:04o}) without the sticky bit, so they could replace {t}: `chmod go-w {d}` (or `chmod +t {d}`), or use another path",
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// The directory itself must be ours and writable by nobody else.
fn check_own(st: &libc::stat, what: &str, path: &Path) -> anyhow::Result<()> {
    let euid = sys::geteuid();
    let p = path.display();
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        bail!("{what} {p} is not a directory");
    }
    if st.st_uid != euid {
        bail!(
            "{what} {p} belongs to uid {}, not to this process (uid {euid}): its owner could change the files in it; `chown {euid} {p}` or use a directory of your own",
            st.st_uid
        );
    }
    if st.st_mode & 0o022 != 0 {
        bail!(
            "{what} {p} is writable by other users (mode {:04o}), who could replace its files: `chmod go-w {p}`",
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// Create and remove an unpredictable probe file in `dir`.
fn probe(dir: BorrowedFd<'_>) -> io::Result<()> {
    let name = OsString::from(format!(".sigil-probe-{}", sys::random_hex()?));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    drop(sys::openat(Some(dir), &name, flags, SECRET)?);
    sys::unlinkat(dir, &name, 0)
}
