//! Checks of a destination's `owner`, `group` and `mode`: who the files an
//! output writes belong to, and how readable its secret files are. The program
//! that reads an output is often not the agent's user (PostgreSQL refuses a key
//! it does not own, or one others can read).

use anyhow::{anyhow, bail};
use serde::Deserialize;
use sigil_fs::FileOwner;

use super::Destination;

/// Modes a secret file (a private key) may have: never anything for others.
const SECRET_MODES: &[u32] = &[0o600, 0o640, 0o400, 0o440];

/// `mode:` as YAML gives it: `"0640"` (a string) or `0640` (which YAML 1.2 reads
/// as the decimal number 640: its digits are taken as octal, as written).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ModeField {
    Number(u64),
    Text(String),
}

impl ModeField {
    fn octal(&self) -> Option<u32> {
        let digits = match self {
            ModeField::Number(n) => n.to_string(),
            ModeField::Text(s) => s.trim().trim_start_matches("0o").to_string(),
        };
        if digits.is_empty() || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
            return None;
        }
        u32::from_str_radix(&digits, 8).ok()
    }
}

/// What a directory destination's files are written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSettings {
    pub owner: FileOwner,
    /// Mode of secret files (keys); public files are always 0644.
    pub secret_mode: u32,
}

/// Resolves and checks `owner`, `group` and `mode` of the destination at `field`
/// (e.g. `outputs[0].destination`).
pub fn settings(field: &str, d: &Destination) -> anyhow::Result<FileSettings> {
    let owner = FileOwner::resolve(d.owner.as_deref(), None)
        .map_err(|e| anyhow!("{field}.owner: {e:#}"))?;
    let group = FileOwner::resolve(None, d.group.as_deref())
        .map_err(|e| anyhow!("{field}.group: {e:#}"))?;
    let secret_mode = match &d.mode {
        None => sigil_fs::SECRET,
        Some(m) => match m.octal() {
            Some(mode) if SECRET_MODES.contains(&mode) => mode,
            _ => bail!(
                "{field}.mode: {m:?} is not allowed for key files; use \"0600\" (the default), \"0640\" (readable by the group), \"0400\" or \"0440\""
            ),
        },
    };
    if secret_mode & 0o040 != 0 && d.group.is_none() && d.owner.is_none() {
        bail!(
            "{field}.mode: a group-readable key needs `group` (or `owner`), or every member of the agent's own group could read it"
        );
    }
    Ok(FileSettings {
        owner: FileOwner {
            uid: owner.uid,
            gid: group.gid,
        },
        secret_mode,
    })
}

/// The agent's own storage keeps its owner and modes.
pub fn check_storage(d: &Destination) -> anyhow::Result<()> {
    for (name, set) in [
        ("owner", d.owner.is_some()),
        ("group", d.group.is_some()),
        ("mode", d.mode.is_some()),
    ] {
        if set {
            bail!("storage.{name}: not supported: the agent's storage is for the agent alone");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(owner: Option<&str>, group: Option<&str>, mode: Option<ModeField>) -> Destination {
        Destination {
            kind: "directory".into(),
            path: "/tmp/x".into(),
            owner: owner.map(Into::into),
            group: group.map(Into::into),
            mode,
        }
    }

    #[test]
    fn modes_are_octal_as_written_and_never_for_others() {
        let ok = |m: ModeField| settings("o", &dest(None, Some("root"), Some(m))).unwrap();
        assert_eq!(ok(ModeField::Number(640)).secret_mode, 0o640);
        assert_eq!(ok(ModeField::Text("0640".into())).secret_mode, 0o640);
        assert_eq!(ok(ModeField::Text("0o440".into())).secret_mode, 0o440);
        assert_eq!(
            settings("o", &dest(None, None, None)).unwrap().secret_mode,
            0o600
        );
        for bad in [
            ModeField::Number(644),
            ModeField::Text("0666".into()),
            ModeField::Text("rw".into()),
            ModeField::Number(1600),
            ModeField::Text("".into()),
        ] {
            let e = settings("outputs[0].destination", &dest(None, None, Some(bad)))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("outputs[0].destination.mode: "), "{e}");
        }
        // Group-readable without naming the group is refused.
        let e = settings("o", &dest(None, None, Some(ModeField::Number(640))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `group`"), "{e}");
    }

    #[test]
    fn owner_and_group_resolve_or_name_the_field() {
        let s = settings("o", &dest(Some("root"), Some("root"), None)).unwrap();
        if sigil_fs::FileOwner::resolve(Some("root"), None).is_ok() {
            assert_eq!(s.owner.uid, Some(0));
            assert_eq!(s.owner.gid, Some(0));
        }
        let e = settings(
            "outputs[1].destination",
            &dest(Some("no-such-user-sigil"), None, None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("outputs[1].destination.owner: "), "{e}");
        let e = settings("o", &dest(None, Some("no-such-group-sigil"), None))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("o.group: "), "{e}");
        assert!(check_storage(&dest(Some("root"), None, None)).is_err());
        assert!(check_storage(&dest(None, None, None)).is_ok());
    }
}
