//! Writing credential files from admin verbs: PEM encoding, an owner-only output
//! directory and atomic writes (temp file in the same directory, fsync, rename,
//! fsync the directory), so a reader never sees a torn file.

use anyhow::Context;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode for private keys and tokens.
pub const SECRET: u32 = 0o600;
/// Mode for certificates, bundles and CRLs.
pub const PUBLIC: u32 = 0o644;

/// One PEM block (`-----BEGIN {label}-----`, base64 in 64-column lines, LF).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Creates `dir` (and missing parents) mode 0700 if it does not exist; an existing
/// directory keeps its mode.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    // The umask may have narrowed the mode; set it exactly.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to mode 0700", dir.display()))
}

/// Writes `data` to `path` with exactly `mode`, atomically: a reader sees the old
/// file or the new one. The temp file is removed on failure.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().context("a file path without a directory")?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = path.file_name().context("a file path without a name")?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

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
