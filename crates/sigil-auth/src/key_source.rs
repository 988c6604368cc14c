//! Where the cluster's CA private keys live, from the auth service's configuration: in the
//! database (software keys, the default), sealed under a key-encryption key (KEK), or on a
//! PKCS#11 token. Also the message a person needs when a cluster is started with another
//! key manager than the one its CAs were created with.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sigil_pki::{EncryptedKeyManager, Kek, KeyManager, SoftwareKeyManager, StoredCa};
use zeroize::Zeroizing;

/// Environment variable holding the KEK (hex or base64) when no `--ca-kek-file` is given.
pub const KEK_ENV: &str = "SIGIL_CA_KEK";
/// Environment variable holding the HSM user PIN when no `--hsm-pin-file` is given.
pub const HSM_PIN_ENV: &str = "SIGIL_HSM_PIN";

/// A secret taken from the environment. Wiped on drop; never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap `value`.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: a file only the service user can read, or an env variable.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// A regular file, mode 0600 or 0400, owned by the service user.
    File(PathBuf),
    /// The value of an environment variable (already read).
    Env(Secret),
}

/// A PKCS#11 token holding the CA keys.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token (as set when it was initialised).
    pub token_label: String,
    /// The token's user PIN.
    pub pin: SecretSource,
}

/// Which key manager holds the cluster's CA keys.
#[derive(Clone, Debug, Default)]
pub enum CaKeySource {
    /// Software keys stored as PKCS#8 in the database (the default; anyone with the
    /// database has the CAs).
    #[default]
    Software,
    /// Software keys stored sealed (AES-256-GCM) under a KEK kept outside the database.
    Kek(SecretSource),
    /// Keys generated and used on a PKCS#11 token; the database holds only references.
    Pkcs11(HsmConfig),
}

/// The key manager for `src`: reads the KEK or PIN, and for an HSM logs in to the token.
pub fn key_manager(src: &CaKeySource) -> anyhow::Result<Box<dyn KeyManager>> {
    match src {
        CaKeySource::Software => Ok(Box::new(SoftwareKeyManager)),
        CaKeySource::Kek(secret) => {
            let kek = match secret {
                SecretSource::File(path) => {
                    let data = read_secret_file(path, "--ca-kek-file")?;
                    Kek::from_file_contents(&data)
                        .with_context(|| format!("--ca-kek-file {}", path.display()))?
                }
                SecretSource::Env(value) => Kek::from_text(&value.0)
                    .with_context(|| format!("{KEK_ENV} (64 hex digits, or base64 of 32 bytes)"))?,
            };
            let km = EncryptedKeyManager::new(&kek)?;
            tracing::info!(kek_id = km.kek_id(), "CA keys are sealed under a KEK");
            Ok(Box::new(km))
        }
        CaKeySource::Pkcs11(hsm) => pkcs11_manager(hsm),
    }
}

#[cfg(feature = "pkcs11")]
fn pkcs11_manager(hsm: &HsmConfig) -> anyhow::Result<Box<dyn KeyManager>> {
    let pin = match &hsm.pin {
        SecretSource::File(path) => {
            let data = read_secret_file(path, "--hsm-pin-file")?;
            std::str::from_utf8(&data)
                .ok()
                .map(|t| Zeroizing::new(t.trim_end_matches(['\n', '\r']).to_string()))
                .with_context(|| format!("--hsm-pin-file {} is not UTF-8 text", path.display()))?
        }
        SecretSource::Env(value) => value.0.clone(),
    };
    let km = sigil_pki::Pkcs11KeyManager::open(&hsm.module, &hsm.token_label, &pin).with_context(
        || {
            format!(
                "opening the HSM token {:?} through --hsm-module {}",
                hsm.token_label,
                hsm.module.display()
            )
        },
    )?;
    // Every cluster has SSH CAs (Ed25519): refuse before a single key is made, rather
    // than leave the X.509 CAs' keys orphaned on the token when the SSH CAs fail.
    if !km.supports_ed25519() {
        bail!(
            "the HSM token {:?} offers no Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA), which the SSH CAs need: use a token that has it, or --ca-kek-file instead of --hsm-module",
            hsm.token_label
        );
    }
    tracing::info!(token = %hsm.token_label, module = %hsm.module.display(), "CA keys are on a PKCS#11 token");
    Ok(Box::new(km))
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_manager(_hsm: &HsmConfig) -> anyhow::Result<Box<dyn KeyManager>> {
    bail!(
        "--hsm-module needs a sigil built with the `pkcs11` cargo feature; rebuild with `--features pkcs11` or use --ca-kek-file"
    )
}

/// Refuses a stored CA whose key belongs to another key manager than `km`, saying what to
/// pass instead (rather than the key manager's generic mismatch error).
pub fn check_manager(stored: &StoredCa, km: &dyn KeyManager) -> anyhow::Result<()> {
    let have = stored.key.manager.as_str();
    if have == km.name() {
        return Ok(());
    }
    let now = match km.name() {
        "encrypted" => "--ca-kek-file / SIGIL_CA_KEK",
        "pkcs11" => "--hsm-module",
        _ => "no key flags (software keys in the database)",
    };
    let what = format!(
        "the {} CA of cluster {:?} was created with {}, but this auth service was started with {now}",
        stored.purpose,
        stored.cluster,
        describe(have)
    );
    match have {
        "software" => bail!(
            "{what}: start it without --ca-kek-file, SIGIL_CA_KEK and --hsm-module. Moving an \
             existing cluster's keys under a KEK or into an HSM is not supported yet"
        ),
        "encrypted" => {
            let id =
                EncryptedKeyManager::sealed_kek_id(&stored.key).unwrap_or_else(|| "unknown".into());
            bail!(
                "{what}: start it with --ca-kek-file PATH (or {KEK_ENV}) holding the KEK with id {id}"
            )
        }
        "pkcs11" => {
            let token = serde_json::from_str::<serde_json::Value>(&stored.key.material)
                .ok()
                .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            bail!(
                "{what}: start it with --hsm-module PATH --hsm-token-label {token:?} and the PIN in \
                 --hsm-pin-file PATH (or {HSM_PIN_ENV})"
            )
        }
        other => bail!(
            "{what}: key manager {other:?} is unknown to this sigil (written by a newer version?)"
        ),
    }
}

fn describe(manager: &str) -> String {
    match manager {
        "software" => "software keys stored in the database".into(),
        "encrypted" => {
            "keys sealed under a key-encryption key (--ca-kek-file / SIGIL_CA_KEK)".into()
        }
        "pkcs11" => "keys on a PKCS#11 token (--hsm-module)".into(),
        other => format!("key manager {other:?}"),
    }
}

/// Reads a secret file: a regular file (not a symlink), owned by this process's user and
/// readable by it alone (0600 or 0400). Checked on the opened file, so it cannot be
/// swapped between the check and the read.
fn read_secret_file(path: &Path, flag: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let shown = path.display();
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{flag} {shown} is a symlink: point {flag} at the file itself (a regular file, mode 0600)"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {flag} {shown}")),
    };
    let m = file
        .metadata()
        .with_context(|| format!("reading {flag} {shown}"))?;
    if !m.file_type().is_file() {
        bail!("{flag} {shown} must be a regular file (it is not)");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid {
        bail!(
            "{flag} {shown} is owned by uid {}, not by the user the auth service runs as (uid {euid}): run `chown {euid} {shown}`",
            m.uid()
        );
    }
    if m.mode() & 0o177 != 0 {
        bail!(
            "{flag} {shown} has mode {:o}; it must be readable by its owner only: run `chmod 600 {shown}`",
            m.mode() & 0o777
        );
    }
    let mut data = Zeroizing::new(Vec::new());
    file.read_to_end(&mut data)
        .with_context(|| format!("reading {flag} {shown}"))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn write(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn kek_file_must_be_private_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let hex_kek = format!("{}\n", "ab".repeat(32));
        let ok = write(dir.path(), "kek", hex_kek.as_bytes(), 0o600);
        let ro = write(dir.path(), "kek-ro", hex_kek.as_bytes(), 0o400);
        for p in [&ok, &ro] {
            let km = key_manager(&CaKeySource::Kek(SecretSource::File(p.clone()))).unwrap();
            assert_eq!(km.name(), "encrypted");
        }
        let open = write(dir.path(), "kek-open", hex_kek.as_bytes(), 0o640);
        let err = key_manager(&CaKeySource::Kek(SecretSource::File(open.clone())))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&open.display().to_string()) && msg.contains("chmod 600"),
            "{msg}"
        );
        let link = dir.path().join("kek-link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let msg = format!(
            "{:#}",
            key_manager(&CaKeySource::Kek(SecretSource::File(link)))
                .err()
                .unwrap()
        );
        assert!(msg.contains("symlink"), "{msg}");
        let msg = format!(
            "{:#}",
            key_manager(&CaKeySource::Kek(SecretSource::File(dir.path().into())))
                .err()
                .unwrap()
        );
        assert!(msg.contains("regular file"), "{msg}");
        let short = write(dir.path(), "kek-short", b"abcd\n", 0o600);
        let msg = format!(
            "{:#}",
            key_manager(&CaKeySource::Kek(SecretSource::File(short.clone())))
                .err()
                .unwrap()
        );
        assert!(msg.contains(&short.display().to_string()), "{msg}");
        assert!(!msg.contains("abcd"), "{msg}");
    }

    #[test]
    fn kek_from_env_text() {
        let km = key_manager(&CaKeySource::Kek(SecretSource::Env(Secret::new(
            "00".repeat(32),
        ))))
        .unwrap();
        assert_eq!(km.name(), "encrypted");
        let msg = format!(
            "{:#}",
            key_manager(&CaKeySource::Kek(SecretSource::Env(Secret::new(
                "not-a-kek".into()
            ))))
            .err()
            .unwrap()
        );
        assert!(msg.contains(KEK_ENV) && !msg.contains("not-a-kek"), "{msg}");
        assert_eq!(format!("{:?}", Secret::new("pin".into())), "[redacted]");
    }

    #[test]
    fn manager_mismatch_names_what_to_pass() {
        let kek = Kek::from_bytes(&[9u8; 32]).unwrap();
        let enc = EncryptedKeyManager::new(&kek).unwrap();
        let (_, sealed) =
            sigil_pki::X509Ca::generate(&enc, sigil_pki::CaPurpose::Host, "prod").unwrap();
        let (_, soft) =
            sigil_pki::X509Ca::generate(&SoftwareKeyManager, sigil_pki::CaPurpose::Host, "prod")
                .unwrap();
        check_manager(&sealed, &enc).unwrap();
        check_manager(&soft, &SoftwareKeyManager).unwrap();
        let msg = check_manager(&sealed, &SoftwareKeyManager)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--ca-kek-file") && msg.contains(kek.id()),
            "{msg}"
        );
        let msg = check_manager(&soft, &enc).unwrap_err().to_string();
        assert!(msg.contains("without --ca-kek-file"), "{msg}");
        let mut hsm = soft.clone();
        hsm.key.manager = "pkcs11".into();
        hsm.key.material = r#"{"v":1,"token":"sigil-ca","id":"00"}"#.into();
        let msg = check_manager(&hsm, &enc).unwrap_err().to_string();
        assert!(
            msg.contains("--hsm-module") && msg.contains("\"sigil-ca\""),
            "{msg}"
        );
    }
}
