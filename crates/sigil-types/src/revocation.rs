//! `workload_identity_x509_revocation`: revokes one X.509-SVID by serial.
//!
//! The resource name is the certificate serial number as lowercase hex
//! without leading zero bytes, e.g. `1f3a9c` (at most 20 bytes, so 1..=40
//! hex characters). Validation does not rewrite names: callers normalise
//! user input first, e.g. with [`normalize_serial_hex`].

use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Maximum length of a serial number in hex (20 bytes, RFC 5280).
pub const MAX_SERIAL_HEX_LEN: usize = 40;
/// Maximum length of a revocation reason.
pub const MAX_REASON_LEN: usize = 256;

/// Body of a `workload_identity_x509_revocation`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentityX509RevocationSpec {
    /// Why the certificate was revoked (non-empty, at most 256 characters).
    pub reason: String,
    /// When it was revoked (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

/// Normalises a serial typed by a person or taken from a certificate
/// (`01:A2:ff`, `0x01a2ff`, `1A2FF`) into the resource-name form: lowercase
/// hex, whole bytes (even length), no leading zero bytes. `None` if it is not
/// hex, is zero, or is longer than 20 bytes.
pub fn normalize_serial_hex(input: &str) -> Option<String> {
    let s = input.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return None;
    }
    let out = if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_string()
    };
    (out.len() <= MAX_SERIAL_HEX_LEN).then_some(out)
}

/// Checks a serial used as a resource name: 1..=40 lowercase hex characters,
/// not zero, no leading zero byte (`00`).
pub fn validate_serial_hex(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERIAL_HEX_LEN {
        return Err(format!(
            "a revocation is named by the certificate serial in hex: 1 to {MAX_SERIAL_HEX_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, 'a'..='f')))
    {
        return Err(format!(
            "serial {name:?} contains {c:?}: use lowercase hex digits only (no ':' or \"0x\")"
        ));
    }
    if name.starts_with("00") || name.chars().all(|c| c == '0') {
        return Err(format!(
            "serial {name:?} has leading zero bytes or is zero: drop the leading \"00\""
        ));
    }
    Ok(())
}

impl Kind for WorkloadIdentityX509RevocationSpec {
    const KIND: &'static str = "workload_identity_x509_revocation";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_serial_hex(&res.metadata.name)
            .map_err(|m| ValidationError::new("metadata.name", m))?;
        let reason = &res.spec.reason;
        if reason.trim().is_empty() {
            return Err(ValidationError::new(
                "spec.reason",
                "must say why the certificate is revoked",
            ));
        }
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(ValidationError::new(
                "spec.reason",
                format!("longer than {MAX_REASON_LEN} characters"),
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "spec.reason",
                "must not contain control characters (including newlines)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Metadata;

    fn revocation(name: &str, reason: &str) -> Resource<WorkloadIdentityX509RevocationSpec> {
        Resource::new(
            Metadata::named(name),
            WorkloadIdentityX509RevocationSpec {
                reason: reason.into(),
                revoked_at: OffsetDateTime::UNIX_EPOCH,
            },
        )
    }

    #[test]
    fn serial_names() {
        for ok in ["1", "01", "1f3a9c", "0a", &"f".repeat(40)] {
            assert!(revocation(ok, "key leaked").validate().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "00",
            "0",
            "001f",
            "1F3A",
            "01:a2",
            "0x1f",
            "xyz",
            &"f".repeat(41),
        ] {
            let err = revocation(bad, "key leaked").validate().unwrap_err();
            assert_eq!(err.field, "metadata.name", "{bad}: {err}");
        }
    }

    #[test]
    fn reasons() {
        let long = "x".repeat(257);
        for bad in ["", "  ", "a\nb", "a\u{7}", long.as_str()] {
            let err = revocation("1f", bad).validate().unwrap_err();
            assert_eq!(err.field, "spec.reason", "{bad:?}");
        }
        assert!(revocation("1f", &"x".repeat(256)).validate().is_ok());
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_serial_hex("01:A2:FF").as_deref(), Some("01a2ff"));
        assert_eq!(normalize_serial_hex("0x00001f").as_deref(), Some("1f"));
        assert_eq!(normalize_serial_hex("abc").as_deref(), Some("0abc"));
        assert_eq!(normalize_serial_hex(" 7 ").as_deref(), Some("07"));
        for bad in ["", "0", "00:00", "xyz", "0x", &"f".repeat(41)] {
            assert_eq!(normalize_serial_hex(bad), None, "{bad}");
        }
        for s in ["01:A2:FF", "abc", "123456"] {
            let n = normalize_serial_hex(s).unwrap();
            assert!(validate_serial_hex(&n).is_ok(), "{n}");
        }
    }

    #[test]
    fn serde_rfc3339() {
        let r = revocation("1f", "leaked");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["spec"]["revoked_at"], "1970-01-01T00:00:00Z");
        let back: Resource<WorkloadIdentityX509RevocationSpec> = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
