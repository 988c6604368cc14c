//! `access.json`: what the auth service last said about logins on this
//! host, kept by the host agent so that sshd's principals command decides
//! every login offline, from this file alone.

use serde::{Deserialize, Serialize};
use sigil_proto::v1::SshHostState;
use sigil_types::glob_match;

/// The file the host agent writes and the principals command reads.
pub const ACCESS_FILE: &str = "access.json";

/// One bot that may log in here, and as whom.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BotAccess {
    pub bot: String,
    /// The bot's uid: a certificate of an earlier bot of the same name
    /// (removed and created again) carries another and is refused.
    #[serde(default)]
    pub bot_uid: String,
    /// Exact logins.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Globs of template logins; the certificate's principal was rendered
    /// by the auth service from the instance's verified join attributes.
    #[serde(default)]
    pub login_patterns: Vec<String>,
    #[serde(default)]
    pub deny_patterns: Vec<String>,
}

/// The whole file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HostAccess {
    pub version: u32,
    pub access: Vec<BotAccess>,
    #[serde(default)]
    pub locked_logins: Vec<String>,
    /// Key IDs and serials the KRL revokes (the same set, readable).
    #[serde(default)]
    pub revoked_key_ids: Vec<String>,
    #[serde(default)]
    pub revoked_serials: Vec<u64>,
}

/// A login attempt as sshd describes it to the principals command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// `%u`: the local account.
    pub user: &'a str,
    /// `%i`: the certificate's key ID, `bot:BOT:UID:INSTANCE` for Sigil's.
    pub key_id: &'a str,
    /// `%s`: the certificate's serial.
    pub serial: u64,
}

impl Attempt<'_> {
    /// The bot, bot uid and instance of a Sigil user certificate.
    pub fn bot_instance(&self) -> Option<(&str, &str, &str)> {
        let rest = self.key_id.strip_prefix("bot:")?;
        let (bot, rest) = rest.split_once(':')?;
        let (uid, instance) = rest.split_once(':')?;
        (!bot.is_empty() && !instance.is_empty() && !instance.contains(':'))
            .then_some((bot, uid, instance))
    }
}

impl HostAccess {
    pub fn from_state(s: &SshHostState) -> HostAccess {
        HostAccess {
            version: 1,
            access: s
                .access
                .iter()
                .map(|a| BotAccess {
                    bot: a.bot.clone(),
                    bot_uid: a.bot_uid.clone(),
                    logins: a.logins.clone(),
                    login_patterns: a.login_patterns.clone(),
                    deny_patterns: a.deny_patterns.clone(),
                })
                .collect(),
            locked_logins: s.locked_logins.clone(),
            revoked_key_ids: s.revoked_key_ids.clone(),
            revoked_serials: s.revoked_serials.clone(),
        }
    }

    /// Whether the certificate of `a` may log in as `a.user` here. The
    /// certificate's own principals are checked by sshd afterwards (the
    /// command prints the user; sshd accepts only if it is a principal).
    pub fn allows(&self, a: &Attempt<'_>) -> Result<(), String> {
        sigil_types::validate_login(a.user).map_err(|e| format!("login {:?}: {e}", a.user))?;
        let (bot, uid, _) = a
            .bot_instance()
            .ok_or_else(|| "not a Sigil bot certificate".to_string())?;
        if self.revoked_key_ids.iter().any(|k| k == a.key_id)
            || self.revoked_serials.contains(&a.serial)
        {
            return Err("the certificate is revoked (locked)".into());
        }
        if self.locked_logins.iter().any(|l| l == a.user) {
            return Err(format!("login {:?} is locked", a.user));
        }
        let entry = self
            .access
            .iter()
            .find(|e| e.bot == bot && e.bot_uid == uid)
            .ok_or_else(|| format!("bot {bot:?} may not log in to this host"))?;
        if entry.deny_patterns.iter().any(|p| glob_match(p, a.user)) {
            return Err(format!("login {:?} is denied to bot {bot:?}", a.user));
        }
        let allowed = entry.logins.iter().any(|l| l == a.user)
            || entry.login_patterns.iter().any(|p| glob_match(p, a.user));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "bot {bot:?} may not log in as {:?} on this host",
                a.user
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> HostAccess {
        HostAccess {
            version: 1,
            access: vec![BotAccess {
                bot: "deployer".into(),
                bot_uid: "u1".into(),
                logins: vec!["deploy".into()],
                login_patterns: vec!["ci-*".into()],
                deny_patterns: vec!["ci-root".into()],
            }],
            locked_logins: vec!["ops".into()],
            revoked_key_ids: vec!["bot:deployer:u1:bad".into()],
            revoked_serials: vec![7],
        }
    }

    fn attempt<'a>(user: &'a str, key_id: &'a str) -> Attempt<'a> {
        Attempt {
            user,
            key_id,
            serial: 1,
        }
    }

    #[test]
    fn allows_exact_and_pattern_logins_of_listed_bots() {
        let a = access();
        assert!(a.allows(&attempt("deploy", "bot:deployer:u1:i1")).is_ok());
        assert!(a.allows(&attempt("ci-alice", "bot:deployer:u1:i1")).is_ok());
        assert!(a.allows(&attempt("root", "bot:deployer:u1:i1")).is_err());
        assert!(a.allows(&attempt("ci-root", "bot:deployer:u1:i1")).is_err());
        assert!(a.allows(&attempt("deploy", "bot:other:u1:i1")).is_err());
    }

    #[test]
    fn refuses_revoked_locked_and_foreign_certificates() {
        let a = access();
        assert!(a.allows(&attempt("deploy", "bot:deployer:u1:bad")).is_err());
        let by_serial = Attempt {
            serial: 7,
            ..attempt("deploy", "bot:deployer:u1:i1")
        };
        assert!(a.allows(&by_serial).is_err());
        let mut b = a.clone();
        b.access[0].logins.push("ops".into());
        assert!(b.allows(&attempt("ops", "bot:deployer:u1:i1")).is_err());
        for foreign in [
            "",
            "deployer",
            "host:deployer:i1",
            "bot::i1",
            "bot:deployer:",
        ] {
            assert!(a.allows(&attempt("deploy", foreign)).is_err(), "{foreign}");
        }
    }
}
