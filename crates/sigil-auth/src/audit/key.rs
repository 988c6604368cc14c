//! The audit key: signs checkpoints, and is deliberately kept out of the database, so
//! whoever can write the database cannot sign a checkpoint for a log they rewrote.
//!
//! The file holds a [`StoredKey`] (JSON; for the software key manager, the base64 PKCS#8
//! of an Ed25519 key) and is loaded through a [`KeyManager`], so an HSM manager can hold
//! the key later without changing anything here. Default: `audit-key.json` in the data
//! dir, created 0600 on first start — beside the database but not in it; production
//! should keep it elsewhere (`--audit-key`, another volume or a secret mount).
//!
//! `audit-key.pub` in the data dir holds the public key (what verifiers and agents pin).
//! Once it exists, a missing or different key file is refused at start: silently
//! generating a new key would make every earlier checkpoint unverifiable.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use sigil_pki::{CaSigningKey, KeyAlgorithm, KeyContext, KeyManager, StoredKey, audit_public_key};

/// The audit key's context: it is one per data dir (not per cluster record), and the
/// software manager that holds it binds nothing to the context.
const AUDIT_KEY_CONTEXT: KeyContext<'static> = KeyContext {
    cluster: "",
    purpose: "audit",
};

/// Default key file name (in the data dir).
pub const DEFAULT_KEY_FILE: &str = "audit-key.json";
/// Public key file name (in the data dir).
pub const PUBLIC_KEY_FILE: &str = "audit-key.pub";

/// A loaded audit key and its public key text.
pub struct AuditKey {
    pub signer: Arc<dyn CaSigningKey>,
    pub public_key: String,
    pub path: PathBuf,
}

/// Loads the key at `path`, or creates it when neither it nor `audit-key.pub` exists.
pub fn load_or_create(
    path: &Path,
    data_dir: &Path,
    km: &dyn KeyManager,
) -> anyhow::Result<AuditKey> {
    let pub_path = data_dir.join(PUBLIC_KEY_FILE);
    let pinned = match std::fs::read_to_string(&pub_path) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", pub_path.display())),
    };
    let exists = match std::fs::symlink_metadata(path) {
        Ok(m) => {
            check_key_file(path, &m)?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading --audit-key {}", path.display())),
    };
    let signer = if exists {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --audit-key {}", path.display()))?;
        let stored: StoredKey = serde_json::from_str(&text).with_context(|| {
            format!(
                "--audit-key {} is not an audit key file (a JSON key record)",
                path.display()
            )
        })?;
        km.load(&AUDIT_KEY_CONTEXT, &stored)
            .with_context(|| format!("loading --audit-key {}", path.display()))?
    } else {
        if let Some(p) = &pinned {
            bail!(
                "the audit key {} is missing, but {} says checkpoints are signed with {p}: \
                 restore the key file (or point --audit-key / SIGIL_AUDIT_KEY_FILE at it). \
                 If it is lost for good, remove {} and start once with --new-audit-key; checkpoints signed \
                 by the old key then fail `sigil audit verify`, and agents that pinned it refuse \
                 this server until their audit-witness.json is removed",
                path.display(),
                pub_path.display(),
                pub_path.display()
            );
        }
        let stored = km
            .generate(&AUDIT_KEY_CONTEXT, KeyAlgorithm::Ed25519)
            .context("generating the audit key")?;
        write_new(path, serde_json::to_string(&stored)?.as_bytes())
            .with_context(|| format!("creating the audit key {}", path.display()))?;
        tracing::info!(path = %path.display(), "created the audit checkpoint key");
        km.load(&AUDIT_KEY_CONTEXT, &stored)?
    };
    let public_key = audit_public_key(signer.as_ref());
    match pinned {
        Some(p) if p != public_key => bail!(
            "--audit-key {} holds audit key {public_key}, but {} says checkpoints are signed \
             with {p}: wrong key file? (remove {} and start once with --new-audit-key only if the old key is lost for good)",
            path.display(),
            pub_path.display(),
            pub_path.display()
        ),
        Some(_) => {}
        None => std::fs::write(&pub_path, format!("{public_key}\n"))
            .with_context(|| format!("writing {}", pub_path.display()))?,
    }
    Ok(AuditKey {
        signer,
        public_key,
        path: path.to_path_buf(),
    })
}

/// A key file must be a regular file (not a symlink) readable by its owner only.
fn check_key_file(path: &Path, m: &std::fs::Metadata) -> anyhow::Result<()> {
    if !m.file_type().is_file() {
        bail!(
            "--audit-key {} must be a regular file (not a symlink or directory)",
            path.display()
        );
    }
    if m.mode() & 0o077 != 0 {
        bail!(
            "--audit-key {} is accessible by other users (mode {:o}): run `chmod 600 {}`",
            path.display(),
            m.mode() & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// Creates `path` with mode 0600, refusing to replace anything already there.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Writes `data` to `path` atomically (temp file 0600 in the same directory, then rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let r = write_new(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_pki::SoftwareKeyManager;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_then_loaded_and_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join(DEFAULT_KEY_FILE);
        let a = load_or_create(&key_path, dir.path(), &SoftwareKeyManager).expect("create");
        assert_eq!(
            std::fs::metadata(&key_path).expect("key").mode() & 0o777,
            0o600
        );
        assert!(a.public_key.starts_with("ed25519:"));
        let b = load_or_create(&key_path, dir.path(), &SoftwareKeyManager).expect("load");
        assert_eq!(a.public_key, b.public_key, "the same key is loaded again");

        // A missing key with a pinned public key is refused, not regenerated.
        std::fs::rename(&key_path, dir.path().join("moved")).expect("move");
        let err = load_or_create(&key_path, dir.path(), &SoftwareKeyManager)
            .err()
            .expect("missing key refused");
        assert!(
            format!("{err:#}").contains("restore the key file"),
            "{err:#}"
        );
        assert!(!key_path.exists(), "no new key was generated");

        // Another key than the pinned one is refused.
        let other = dir.path().join("other.json");
        load_or_create(
            &other,
            tempfile::tempdir().expect("t").path(),
            &SoftwareKeyManager,
        )
        .expect("other key");
        let err = load_or_create(&other, dir.path(), &SoftwareKeyManager)
            .err()
            .expect("different key refused");
        assert!(format!("{err:#}").contains("wrong key file"), "{err:#}");
    }

    #[test]
    fn loose_permissions_and_symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("k.json");
        load_or_create(&key_path, dir.path(), &SoftwareKeyManager).expect("create");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create(&key_path, dir.path(), &SoftwareKeyManager)
            .err()
            .expect("0644 refused");
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&key_path, &link).expect("symlink");
        assert!(load_or_create(&link, dir.path(), &SoftwareKeyManager).is_err());
    }
}
