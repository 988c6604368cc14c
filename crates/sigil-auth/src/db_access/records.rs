//! The record of one issued database client certificate, and which records
//! the CRL lists.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sigil_store::Op;
use time::OffsetDateTime;
use tonic::Status;

use crate::keys;

/// Who holds a database client certificate, stored under
/// `/db_certs/<serial>` and expiring (purged by the store) with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DbCertRecord {
    /// Lowercase hex, as on the CRL.
    pub serial: String,
    pub bot: String,
    pub bot_uid: String,
    pub instance: String,
    /// The bot's roles when it was issued.
    pub roles: Vec<String>,
    pub db_user: String,
    pub database: String,
    pub service: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl DbCertRecord {
    pub fn op(&self) -> Result<Op, Status> {
        Ok(Op::Put {
            key: keys::db_cert(&self.serial),
            value: serde_json::to_vec(self).map_err(|e| Status::internal(e.to_string()))?,
            expires: Some(self.not_after),
        })
    }
}

/// What is locked, by target kind (`bot`, `bot_instance`, `role`, `db_user`).
#[derive(Default, Debug)]
pub struct Locked {
    pub bots: BTreeSet<String>,
    pub instances: BTreeSet<String>,
    pub roles: BTreeSet<String>,
    pub db_users: BTreeSet<String>,
}

impl Locked {
    pub fn from_locks(locks: &[sigil_types::Lock]) -> Locked {
        let mut l = Locked::default();
        for lock in locks {
            let v = lock.spec.target.value().to_string();
            match lock.spec.target.kind_str() {
                "bot" => l.bots.insert(v),
                "bot_instance" => l.instances.insert(v),
                "role" => l.roles.insert(v),
                "db_user" => l.db_users.insert(v),
                _ => false,
            };
        }
        l
    }
}

/// The serials a database's CRL lists: still-valid certificates whose bot,
/// instance, one of whose roles, or whose database user is locked, or whose
/// bot was removed (or re-created: `bot_uids` maps a bot's name to its
/// current uid). Every database gets the same list: PostgreSQL trusts any
/// db-client certificate with the right CN, whichever database it was
/// issued for. Sorted.
pub fn revoked(
    records: &[DbCertRecord],
    locked: &Locked,
    bot_uids: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for r in records.iter().filter(|r| r.not_after > now) {
        let gone = bot_uids.get(&r.bot) != Some(&r.bot_uid);
        if gone
            || locked.bots.contains(&r.bot)
            || locked.instances.contains(&r.instance)
            || locked.db_users.contains(&r.db_user)
            || r.roles.iter().any(|x| locked.roles.contains(x))
        {
            out.insert(r.serial.clone());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(serial: &str, bot: &str, instance: &str, role: &str, user: &str) -> DbCertRecord {
        DbCertRecord {
            serial: serial.into(),
            bot: bot.into(),
            bot_uid: format!("uid-{bot}"),
            instance: instance.into(),
            roles: vec![role.into()],
            db_user: user.into(),
            database: "orders".into(),
            service: "orders".into(),
            not_after: OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    #[test]
    fn crl_membership() {
        let records = vec![
            rec("01", "ci", "i1", "db-ro", "app_ro"),
            rec("02", "ci", "i2", "db-ro", "app_ro"),
            rec("03", "web", "i3", "db-rw", "app_rw"),
            rec("04", "etl", "i4", "db-etl", "etl"),
        ];
        let uids: HashMap<String, String> = ["ci", "web", "etl"]
            .iter()
            .map(|b| (b.to_string(), format!("uid-{b}")))
            .collect();
        let now = OffsetDateTime::now_utc();
        let none = Locked::default();
        assert!(revoked(&records, &none, &uids, now).is_empty());
        let by = |f: fn(&mut Locked)| {
            let mut l = Locked::default();
            f(&mut l);
            revoked(&records, &l, &uids, now)
        };
        assert_eq!(
            by(|l| {
                l.bots.insert("ci".into());
            }),
            ["01", "02"]
        );
        assert_eq!(
            by(|l| {
                l.instances.insert("i2".into());
            }),
            ["02"]
        );
        assert_eq!(
            by(|l| {
                l.roles.insert("db-rw".into());
            }),
            ["03"]
        );
        assert_eq!(
            by(|l| {
                l.db_users.insert("etl".into());
            }),
            ["04"]
        );
        // A removed or re-created bot's certificates are revoked too.
        let mut recreated = uids.clone();
        recreated.insert("web".into(), "uid-new".into());
        recreated.remove("etl");
        assert_eq!(revoked(&records, &none, &recreated, now), ["03", "04"]);
        // Expired certificates need no entry.
        let mut old = records.clone();
        old[0].not_after = now - time::Duration::seconds(1);
        let mut l = Locked::default();
        l.bots.insert("ci".into());
        assert_eq!(revoked(&old, &l, &uids, now), ["02"]);
    }

    #[test]
    fn locks_by_kind() {
        let lock = |t: sigil_types::LockTarget| {
            sigil_types::Lock::new(
                sigil_types::Metadata::named("l"),
                sigil_types::LockSpec {
                    target: t,
                    message: String::new(),
                    created_by: String::new(),
                    created_at: None,
                },
            )
        };
        let l = Locked::from_locks(&[
            lock(sigil_types::LockTarget::DbUser("app_ro".into())),
            lock(sigil_types::LockTarget::Login("root".into())),
            lock(sigil_types::LockTarget::Bot("ci".into())),
        ]);
        assert!(l.db_users.contains("app_ro") && l.bots.contains("ci"));
        assert!(l.roles.is_empty() && l.instances.is_empty());
    }
}
