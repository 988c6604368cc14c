//! Writing credential files from admin verbs: PEM encoding, an owner-only output
//! directory and atomic writes (temp file in the same directory, fsync, rename,
//! fsync the directory), so a reader never sees a torn file. The directory is
//! opened without following symlinks and must be ours (see the `sigil-fs` crate).

use std::path::Path;

use sigil_fs::{DirKind, SafeDir};

// Credential files are written the way the agent writes its outputs.
pub use sigil_agent::fsutil::{PUBLIC, SECRET, pem_lf as pem, write_atomic};

/// Opens `dir`, creating it (and missing parents) mode 0700 if it does not exist;
/// an existing directory keeps its mode but must belong to us and be writable by
/// nobody else.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<SafeDir> {
    SafeDir::create(dir, "output directory", DirKind::Private)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_round_trips_through_the_pki_parser() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = pem("X509 CRL", &der);
        assert!(text.starts_with("-----BEGIN X509 CRL-----\n"), "{text}");
        assert!(text.ends_with("-----END X509 CRL-----\n"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        let back = sigil_pki::pem_to_ders(&text, "X509 CRL").unwrap();
        assert_eq!(back, vec![der]);
    }

    #[test]
    fn atomic_writes_set_the_mode_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        ensure_private_dir(&out).unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key = out.join("svid.key");
        write_atomic(&key, b"one", SECRET).unwrap();
        write_atomic(&key, b"two", SECRET).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"two");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&out.join("svid.pem"), b"c", PUBLIC).unwrap();
        let mode = fs::metadata(out.join("svid.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // An existing directory keeps its mode.
        fs::set_permissions(&out, fs::Permissions::from_mode(0o750)).unwrap();
        ensure_private_dir(&out).unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        // Writing into a missing directory fails and says where.
        let err = write_atomic(&dir.path().join("missing/x"), b"x", PUBLIC).unwrap_err();
        assert!(format!("{err:#}").contains("missing/x"), "{err:#}");
    }
}
