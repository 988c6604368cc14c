//! A plain directory: each artifact is a file written atomically.

use std::path::{Path, PathBuf};

use super::Destination;
use crate::fsutil;

pub struct DirectoryDestination {
    path: PathBuf,
}

impl DirectoryDestination {
    pub fn new(path: &Path) -> Self {
        DirectoryDestination {
            path: path.to_path_buf(),
        }
    }
}

impl Destination for DirectoryDestination {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn check_writable(&self) -> anyhow::Result<()> {
        fsutil::ensure_writable_dir(&self.path, "output destination", false)
    }

    fn write(&self, name: &str, data: &[u8], secret: bool) -> anyhow::Result<()> {
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("invalid artifact name {name:?}");
        }
        let mode = if secret {
            fsutil::SECRET
        } else {
            fsutil::PUBLIC
        };
        fsutil::write_atomic(&self.path.join(name), data, mode)
    }

    fn remove(&self, name: &str) -> anyhow::Result<()> {
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("invalid artifact name {name:?}");
        }
        let p = self.path.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!("removing {}: {e}", p.display())),
        }
    }
}
