//! Checks of the `database` and `database-server` outputs' fields (and that
//! no other output has them). The auth service checks them again; these
//! catch a typo before any network call, naming the field.

use anyhow::bail;

use super::OutputConfig;

/// At most this many server names (the auth service's limit).
const MAX_NAMES: usize = 64;

pub(super) fn validate(i: usize, o: &OutputConfig) -> anyhow::Result<()> {
    let client = o.kind == "database";
    let server = o.kind == "database-server";
    for (field, set, ok) in [
        ("service", o.service.is_some(), client || server),
        ("username", o.username.is_some(), client),
        ("database", o.database.is_some(), client),
        ("names", !o.names.is_empty(), server),
    ] {
        if set && !ok {
            bail!(
                "outputs[{i}].{field}: {} outputs do not take {field}",
                o.kind
            );
        }
    }
    if !client && !server {
        return Ok(());
    }
    let Some(service) = &o.service else {
        bail!(
            "outputs[{i}].service: required for {}: the name of a `database` resource, e.g. orders",
            o.kind
        );
    };
    if let Err(e) = sigil_types::check_name("database", service) {
        bail!("outputs[{i}].service: {}", e.message);
    }
    if client {
        let Some(user) = &o.username else {
            bail!("outputs[{i}].username: required for database: the database user, e.g. app_ro");
        };
        if let Err(e) = sigil_types::validate_db_user(user) {
            bail!("outputs[{i}].username: {e}");
        }
        let Some(db) = &o.database else {
            bail!("outputs[{i}].database: required for database: the database name, e.g. orders");
        };
        if let Err(e) = sigil_types::validate_db_name(db) {
            bail!("outputs[{i}].database: {e}");
        }
    }
    if server {
        if o.names.is_empty() {
            bail!(
                "outputs[{i}].names: required for database-server: the server's names and addresses, e.g. [db1.example.test, 127.0.0.1]"
            );
        }
        super::ssh_host::check_host_names(&format!("outputs[{i}].names"), &o.names, MAX_NAMES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::parse;

    #[test]
    fn the_issue_shapes_parse() {
        let c = parse(
            "  - type: database\n    service: orders\n    username: app_ro\n    database: orders\n    destination: {type: directory, path: /run/orders-db}\n\
             \x20 - type: database-server\n    service: orders\n    names: [db1.example.test, localhost, 127.0.0.1]\n    reload_command: [pg_ctl, reload, -D, /var/lib/postgresql/15/main]\n    destination: {type: directory, path: /etc/sigil/orders}\n",
        )
        .unwrap();
        assert_eq!(c.outputs[0].username.as_deref(), Some("app_ro"));
        assert_eq!(c.outputs[1].names.len(), 3);
    }

    #[test]
    fn bad_fields_are_named() {
        let d = "    destination: {type: directory, path: /x}\n";
        let cases = [
            (
                format!("  - type: database\n    username: app_ro\n    database: orders\n{d}"),
                "outputs[0].service",
            ),
            (
                format!("  - type: database\n    service: orders\n    database: orders\n{d}"),
                "outputs[0].username",
            ),
            (
                format!(
                    "  - type: database\n    service: orders\n    username: pg_monitor\n    database: orders\n{d}"
                ),
                "outputs[0].username",
            ),
            (
                format!(
                    "  - type: database\n    service: orders\n    username: 'app ro'\n    database: orders\n{d}"
                ),
                "outputs[0].username",
            ),
            (
                format!("  - type: database\n    service: orders\n    username: app_ro\n{d}"),
                "outputs[0].database",
            ),
            (
                format!(
                    "  - type: database\n    service: 'a/b'\n    username: app_ro\n    database: orders\n{d}"
                ),
                "outputs[0].service",
            ),
            (
                format!("  - type: database-server\n    service: orders\n{d}"),
                "outputs[0].names",
            ),
            (
                format!("  - type: database-server\n    service: orders\n    names: ['*.x']\n{d}"),
                "outputs[0].names[0]",
            ),
            (
                format!(
                    "  - type: database-server\n    service: orders\n    names: [a]\n    username: x\n{d}"
                ),
                "outputs[0].username",
            ),
            (
                format!("  - type: identity\n    service: orders\n{d}"),
                "outputs[0].service",
            ),
        ];
        for (yaml, field) in cases {
            let e = format!("{:#}", parse(&yaml).unwrap_err());
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
