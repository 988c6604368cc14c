//! `sigil auth start`'s flags for where CA private keys live, turned into a
//! [`sigil_auth::CaKeySource`]. Secrets come from files or the environment, never from a
//! flag's value (which any user can read in the process list).

use std::path::PathBuf;

use clap::Args;
use sigil_auth::{CaKeySource, HsmConfig, Secret, SecretSource};

use crate::error::CliError;

/// Environment variable with the KEK itself (64 hex digits or base64 of 32 bytes).
pub const KEK_ENV: &str = "SIGIL_CA_KEK";
/// Environment variable with the HSM user PIN.
pub const HSM_PIN_ENV: &str = "SIGIL_HSM_PIN";

/// CA key storage flags of `sigil auth start` (default: software keys in the database).
#[derive(Args, Debug, Clone, Default)]
pub struct CaKeyArgs {
    /// Seal the CA private keys with this key-encryption key (32 random bytes, raw or as
    /// 64 hex digits / base64; a regular file, mode 0600 or 0400, owned by the service
    /// user). Or give the KEK itself in SIGIL_CA_KEK. Needed on every start.
    #[arg(long, value_name = "PATH", env = "SIGIL_CA_KEK_FILE")]
    pub ca_kek_file: Option<PathBuf>,
    /// Keep the CA private keys on a PKCS#11 token: path of the module (shared library),
    /// e.g. /usr/lib/softhsm/libsofthsm2.so. Needs --hsm-token-label and a PIN.
    #[arg(long, value_name = "PATH", env = "SIGIL_HSM_MODULE")]
    pub hsm_module: Option<PathBuf>,
    /// Label of the PKCS#11 token holding the CA keys.
    #[arg(long, value_name = "LABEL", env = "SIGIL_HSM_TOKEN_LABEL")]
    pub hsm_token_label: Option<String>,
    /// File holding the token's user PIN (mode 0600 or 0400). Or set SIGIL_HSM_PIN.
    #[arg(long, value_name = "PATH", env = "SIGIL_HSM_PIN_FILE")]
    pub hsm_pin_file: Option<PathBuf>,
}

impl CaKeyArgs {
    /// The key source, reading secret env variables through `env` (std::env::var in the
    /// binary; a map in tests).
    pub fn source(&self, env: impl Fn(&str) -> Option<String>) -> Result<CaKeySource, CliError> {
        let kek_env = env(KEK_ENV).filter(|v| !v.is_empty());
        let pin_env = env(HSM_PIN_ENV).filter(|v| !v.is_empty());
        let kek = match (&self.ca_kek_file, kek_env) {
            (Some(_), Some(_)) => {
                return Err(CliError::usage(format!(
                    "both --ca-kek-file and {KEK_ENV} are set: give the KEK one way only"
                )));
            }
            (Some(path), None) => Some(SecretSource::File(path.clone())),
            (None, Some(value)) => Some(SecretSource::Env(Secret::new(value))),
            (None, None) => None,
        };
        let Some(module) = &self.hsm_module else {
            if self.hsm_token_label.is_some() || self.hsm_pin_file.is_some() {
                return Err(CliError::usage(
                    "--hsm-token-label and --hsm-pin-file need --hsm-module PATH (the PKCS#11 module)",
                ));
            }
            return Ok(kek.map_or(CaKeySource::Software, CaKeySource::Kek));
        };
        if kek.is_some() {
            return Err(CliError::usage(format!(
                "--hsm-module and a KEK (--ca-kek-file or {KEK_ENV}) were both given: CA keys live \
                 either on the token or sealed under the KEK; give one"
            )));
        }
        let token_label = self.hsm_token_label.clone().ok_or_else(|| {
            CliError::usage("--hsm-module needs --hsm-token-label LABEL (the token's label)")
        })?;
        let pin = match (&self.hsm_pin_file, pin_env) {
            (Some(_), Some(_)) => {
                return Err(CliError::usage(format!(
                    "both --hsm-pin-file and {HSM_PIN_ENV} are set: give the PIN one way only"
                )));
            }
            (Some(path), None) => SecretSource::File(path.clone()),
            (None, Some(value)) => SecretSource::Env(Secret::new(value)),
            (None, None) => {
                return Err(CliError::usage(format!(
                    "--hsm-module needs the token's user PIN: --hsm-pin-file PATH or {HSM_PIN_ENV}"
                )));
            }
        };
        Ok(CaKeySource::Pkcs11(HsmConfig {
            module: module.clone(),
            token_label,
            pin,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn default_is_software_and_env_or_file_gives_a_kek() {
        let a = CaKeyArgs::default();
        assert!(matches!(a.source(none), Ok(CaKeySource::Software)));
        let file = CaKeyArgs {
            ca_kek_file: Some("/k".into()),
            ..Default::default()
        };
        assert!(matches!(
            file.source(none),
            Ok(CaKeySource::Kek(SecretSource::File(_)))
        ));
        let env = |k: &str| (k == KEK_ENV).then(|| "00".repeat(32));
        assert!(matches!(
            a.source(env),
            Ok(CaKeySource::Kek(SecretSource::Env(_)))
        ));
        assert!(file.source(env).unwrap_err().message.contains(KEK_ENV));
    }

    #[test]
    fn hsm_needs_label_and_pin_and_excludes_a_kek() {
        let hsm = CaKeyArgs {
            hsm_module: Some("/m.so".into()),
            ..Default::default()
        };
        assert!(
            hsm.source(none)
                .unwrap_err()
                .message
                .contains("--hsm-token-label")
        );
        let labelled = CaKeyArgs {
            hsm_token_label: Some("t".into()),
            ..hsm.clone()
        };
        assert!(
            labelled
                .source(none)
                .unwrap_err()
                .message
                .contains(HSM_PIN_ENV)
        );
        let pin = |k: &str| (k == HSM_PIN_ENV).then(|| "1234".to_string());
        match labelled.source(pin) {
            Ok(CaKeySource::Pkcs11(h)) => {
                assert_eq!(h.token_label, "t");
                assert!(!format!("{h:?}").contains("1234"));
            }
            other => panic!("{other:?}"),
        }
        let both = CaKeyArgs {
            ca_kek_file: Some("/k".into()),
            ..labelled.clone()
        };
        assert!(both.source(pin).unwrap_err().message.contains("one"));
        let orphan = CaKeyArgs {
            hsm_pin_file: Some("/p".into()),
            ..Default::default()
        };
        assert!(
            orphan
                .source(none)
                .unwrap_err()
                .message
                .contains("--hsm-module")
        );
    }
}
