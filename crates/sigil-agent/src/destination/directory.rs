//! A plain directory: each artifact is a file written atomically. The
//! directory is created on the first write (the start-up check creates
//! nothing), and reopened and re-checked for every write.

use std::path::{Path, PathBuf};

use super::Destination;
use crate::config::destination::FileSettings;
use crate::fsutil::{self, DirKind, SafeDir};

const WHAT: &str = "output destination";

pub struct DirectoryDestination {
    path: PathBuf,
    files: FileSettings,
}

impl DirectoryDestination {
    pub fn new(path: &Path, files: FileSettings) -> Self {
        DirectoryDestination {
            path: path.to_path_buf(),
            files,
        }
    }
}

impl Destination for DirectoryDestination {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn check_writable(&self) -> anyhow::Result<()> {
        fsutil::check_writable(&self.path, WHAT)
    }

    fn write(&self, name: &str, data: &[u8], secret: bool) -> anyhow::Result<()> {
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("invalid artifact name {name:?}");
        }
        let mode = if secret {
            self.files.secret_mode
        } else {
            fsutil::PUBLIC
        };
        SafeDir::create(&self.path, WHAT, DirKind::Shared)?.write_as(
            name,
            data,
            mode,
            self.files.owner,
        )
    }

    fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("invalid artifact name {name:?}");
        }
        match SafeDir::open(&self.path, WHAT)? {
            Some(d) => d.read(name),
            None => Ok(None),
        }
    }

    fn remove(&self, name: &str) -> anyhow::Result<()> {
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("invalid artifact name {name:?}");
        }
        match SafeDir::open(&self.path, WHAT)? {
            Some(d) => d.remove(name),
            None => Ok(()),
        }
    }
}
