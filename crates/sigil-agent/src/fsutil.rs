//! Atomic, permission-aware file writes: temp file in the same directory,
//! fsync, rename, fsync the directory. A reader sees the old file or the new
//! one, never a torn write; a crash leaves the last good credential.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Mode for private keys and credentials.
pub const SECRET: u32 = 0o600;
/// Mode for certificates and other public material.
pub const PUBLIC: u32 = 0o644;

/// Write `data` to `path` with exactly `mode`, atomically; the temp file is
/// removed on failure. Shared with the CLI's credential-writing verbs.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path without a directory")?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = path.file_name().context("a file path without a name")?;
    let mut rnd = [0u8; 6];
    aws_lc_rs::rand::fill(&mut rnd).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(rnd)
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Create `dir` if needed (owner-only when `private`), and prove it is
/// writable by creating and removing a probe file. Runs before any network
/// call so a misconfigured path fails at once.
pub fn ensure_writable_dir(dir: &Path, what: &str, private: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("{what} {}: cannot create the directory", dir.display()))?;
        if private {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    if !dir.is_dir() {
        anyhow::bail!("{what} {} is not a directory", dir.display());
    }
    let probe = dir.join(format!(".sigil-write-test-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(SECRET)
        .open(&probe)
        .with_context(|| {
            format!(
                "{what} {} is not writable: fix its permissions or choose another path",
                dir.display()
            )
        })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// One PEM block with LF line endings (the `pem` crate defaults to CRLF).
pub fn pem_lf(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
