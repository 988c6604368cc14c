//! `database`: a database Sigil issues client certificates for.
//!
//! ```yaml
//! kind: database
//! version: v1
//! metadata: {name: orders, labels: {env: prod}}
//! spec: {protocol: postgres, uri: "127.0.0.1:5432"}
//! ```
//!
//! Roles reach it by its labels (`db_labels`), with `db_users` and
//! `db_names`; the machine running it by `db_server_labels`.

use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use serde::{Deserialize, Serialize};

/// Protocols Sigil knows how to configure.
pub const DB_PROTOCOLS: &[&str] = &["postgres"];
/// PostgreSQL's `NAMEDATALEN - 1`: longer identifiers are truncated, so a
/// certificate's CN would never equal the role name.
pub const MAX_PG_IDENTIFIER: usize = 63;

/// Body of a `database`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    /// `postgres`.
    pub protocol: String,
    /// `HOST:PORT` clients connect to (`[v6]:port` for IPv6).
    pub uri: String,
}

impl DatabaseSpec {
    /// Host and port of `uri` (validated).
    pub fn host_port(&self) -> Result<(String, u16), String> {
        split_host_port(&self.uri)
    }
}

/// `host:port` or `[v6]:port` → (host, port).
pub fn split_host_port(uri: &str) -> Result<(String, u16), String> {
    let shown = crate::text::escape_unsafe(uri);
    let (host, port) = uri
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{shown}\" must be HOST:PORT, e.g. db1.example.test:5432"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or(host, |h| h);
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("\"{shown}\": the port must be a number from 1 to 65535"))?;
    if host.parse::<std::net::IpAddr>().is_err() {
        crate::role::validate_host_principal(host, false)
            .map_err(|e| format!("\"{shown}\": {e}"))?;
    }
    Ok((host.to_string(), port))
}

impl Kind for DatabaseSpec {
    const KIND: &'static str = "database";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        // libpq's service file names the service in `[brackets]`.
        if res.metadata.name.len() > MAX_PG_IDENTIFIER {
            return Err(ValidationError::new(
                "metadata.name",
                format!("a database's name is at most {MAX_PG_IDENTIFIER} characters"),
            ));
        }
        if !DB_PROTOCOLS.contains(&res.spec.protocol.as_str()) {
            return Err(ValidationError::new(
                "spec.protocol",
                format!(
                    "\"{}\" is not supported; use {}",
                    crate::text::escape_unsafe(&res.spec.protocol),
                    DB_PROTOCOLS.join(", ")
                ),
            ));
        }
        split_host_port(&res.spec.uri).map_err(|m| ValidationError::new("spec.uri", m))?;
        Ok(())
    }
}

/// Checks a database user name: what the certificate's CN says and
/// PostgreSQL's `cert` method compares with the role connected as. Refused
/// (a superset of what PostgreSQL refuses): empty, longer than 63 bytes
/// (PostgreSQL truncates), starting with `pg_` (reserved for built-in
/// roles), and anything but ASCII letters, digits and `_ $ . - @`, starting
/// with a letter or `_` (no quoting, no look-alike Unicode).
pub fn validate_db_user(user: &str) -> Result<(), String> {
    check_identifier("database user", user, false)?;
    if user.to_ascii_lowercase().starts_with("pg_") {
        return Err(format!(
            "database user \"{user}\": names starting with pg_ are reserved by PostgreSQL"
        ));
    }
    Ok(())
}

/// Checks a database name (the same character rules as a user).
pub fn validate_db_name(name: &str) -> Result<(), String> {
    check_identifier("database name", name, false)
}

/// Checks a role's `db_users`/`db_names` entry: a name, or a glob (`*`, `?`).
pub fn validate_db_pattern(what: &str, pattern: &str) -> Result<(), String> {
    check_identifier(what, pattern, true)
}

fn check_identifier(what: &str, v: &str, glob: bool) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let shown = crate::text::escape_unsafe(v);
    if v.len() > MAX_PG_IDENTIFIER {
        return Err(format!(
            "{what} \"{shown}\" is longer than {MAX_PG_IDENTIFIER} bytes (PostgreSQL would truncate it)"
        ));
    }
    let ok = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '_' | '$' | '.' | '-' | '@')
            || (glob && matches!(c, '*' | '?'))
    };
    if let Some(c) = v.chars().find(|c| !ok(*c)) {
        let c = if crate::text::is_unsafe_char(c) {
            format!("U+{:04X}", c as u32)
        } else {
            format!("{c:?}")
        };
        return Err(format!(
            "{what} \"{shown}\" contains {c}: use letters, digits and _ $ . - @"
        ));
    }
    let first_ok =
        |c: char| c.is_ascii_alphabetic() || c == '_' || (glob && matches!(c, '*' | '?'));
    if !v.starts_with(first_ok) {
        return Err(format!("{what} \"{shown}\" must start with a letter or _"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Metadata, Resource};

    fn db(protocol: &str, uri: &str) -> Resource<DatabaseSpec> {
        Resource::new(
            Metadata::named("orders"),
            DatabaseSpec {
                protocol: protocol.into(),
                uri: uri.into(),
            },
        )
    }

    #[test]
    fn validation_names_the_field() {
        db("postgres", "127.0.0.1:5432").validate().unwrap();
        db("postgres", "db1.example.test:5432").validate().unwrap();
        db("postgres", "[::1]:5432").validate().unwrap();
        assert_eq!(
            db("mysql", "127.0.0.1:3306").validate().unwrap_err().field,
            "spec.protocol"
        );
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:99999",
            "bad host:5432",
            ":5432",
            "",
        ] {
            let e = db("postgres", bad).validate().unwrap_err();
            assert_eq!(e.field, "spec.uri", "{bad}");
        }
        let mut long = db("postgres", "127.0.0.1:5432");
        long.metadata.name = "a".repeat(64);
        assert_eq!(long.validate().unwrap_err().field, "metadata.name");
    }

    #[test]
    fn user_names_postgres_would_refuse_are_errors() {
        for ok in [
            "app_ro",
            "_svc",
            "alice@example.com",
            "a.b-c$",
            &"a".repeat(63),
        ] {
            validate_db_user(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "pg_monitor",
            "PG_x",
            &"a".repeat(64),
            "a b",
            "a\"b",
            "a\0b",
            "rööt",
            "x\u{202E}",
            "1abc",
            "-x",
            "a*",
        ] {
            let e = validate_db_user(bad).unwrap_err();
            assert!(!e.contains('\u{202E}'), "{e}");
        }
        validate_db_pattern("db_users", "app_*").unwrap();
        validate_db_pattern("db_users", "*").unwrap();
        assert!(validate_db_pattern("db_users", "app ro").is_err());
    }
}
