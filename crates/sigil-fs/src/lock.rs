//! An exclusive lock file in a [`SafeDir`], held for as long as the value lives.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::{SafeDir, entry, sys};

/// A held `flock(LOCK_EX)`. Dropping it (or the process ending, even by a
/// crash) releases the lock; the file stays, so there is no unlink race.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl SafeDir {
    /// Take the exclusive lock `name` (created 0600 if missing) without
    /// waiting. Refused when another open file holds it; the error names the
    /// process id the holder wrote into the file.
    pub fn lock(&self, name: &str) -> anyhow::Result<DirLock> {
        let path = self.path.join(name);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW;
        let fd = sys::openat(Some(self.fd.as_fd()), entry(name)?, flags, crate::SECRET)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_uid != sys::geteuid()
            || st.st_nlink != 1
        {
            bail!(
                "the lock file {} is not a plain file of ours (a link, or another owner): remove it",
                path.display()
            );
        }
        if !sys::try_lock_exclusive(fd.as_fd())
            .with_context(|| format!("locking {}", path.display()))?
        {
            let mut holder = String::new();
            let _ = File::from(fd).read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                format!("process {holder}")
            } else {
                "another process".to_string()
            };
            bail!(
                "{} is in use: {who} holds {}",
                self.path.display(),
                path.display()
            );
        }
        let file = File::from(fd);
        // Ours now: record who holds it, for the next one's error message.
        file.set_len(0)
            .and_then(|()| file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(DirLock { _file: file, path })
    }
}
