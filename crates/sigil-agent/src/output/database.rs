//! Output `database`: a client certificate for one database user, for
//! PostgreSQL's `cert` authentication with any libpq client.
//!
//! Writes `tls.key` (PKCS#8, 0600 — libpq refuses a key others can read),
//! `tls.crt` (from the `db-client` CA, CN = the user), `ca.crt` (the host
//! CAs, to verify the server), `pg_service.conf` (one `[service]` section:
//! `PGSERVICEFILE=DIR/pg_service.conf psql "service=orders"`) and
//! `connection_string` (the same as libpq keywords, for clients without
//! service files). Both say `sslmode=verify-full`. Nothing is written when
//! the auth service refuses (the roles do not allow the user or database).

use anyhow::Context;
use async_trait::async_trait;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::IssueDatabaseCertRequest;

use super::{Output, OutputContext};
use crate::config::OutputConfig;
use crate::destination::{self, Destination};

pub struct DatabaseOutput {
    dest: Box<dyn Destination>,
    dir: std::path::PathBuf,
    service: String,
    username: String,
    database: String,
    reload_command: Vec<String>,
}

impl DatabaseOutput {
    pub fn from_config(o: &OutputConfig) -> anyhow::Result<DatabaseOutput> {
        // Checked by the config's validation; refused here too, not unwrapped.
        let field = |v: &Option<String>, name: &str| {
            v.clone()
                .with_context(|| format!("database output: {name} is required"))
        };
        Ok(DatabaseOutput {
            dest: destination::from_config(&o.destination)?,
            dir: o.destination.path.clone(),
            service: field(&o.service, "service")?,
            username: field(&o.username, "username")?,
            database: field(&o.database, "database")?,
            reload_command: o.reload_command.clone(),
        })
    }
}

/// A libpq keyword value: quoted when it holds anything but plain characters.
fn libpq_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-@:".contains(c))
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The connection's libpq keywords, in order.
fn keywords(
    o: &DatabaseOutput,
    host: &str,
    port: u32,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let d = o.dir.display().to_string();
    // A service file is line-based: a path with a line break cannot be named.
    if d.contains(['\n', '\r']) {
        anyhow::bail!("{d:?}: the output directory's path has a line break; choose another");
    }
    Ok(vec![
        ("host", host.to_string()),
        ("port", port.to_string()),
        ("user", o.username.clone()),
        ("dbname", o.database.clone()),
        ("sslmode", "verify-full".to_string()),
        ("sslcert", format!("{d}/tls.crt")),
        ("sslkey", format!("{d}/tls.key")),
        ("sslrootcert", format!("{d}/ca.crt")),
    ])
}

/// `pg_service.conf` with one section for this service.
pub fn service_file(service: &str, dir: &std::path::Path, kw: &[(&str, String)]) -> String {
    let mut out = format!(
        "# Written by the Sigil agent (database output); rewritten on every renewal.\n\
         # Use: PGSERVICEFILE={}/pg_service.conf psql \"service={service}\"\n\
         [{service}]\n",
        dir.display()
    );
    for (k, v) in kw {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

#[async_trait]
impl Output for DatabaseOutput {
    fn describe(&self) -> String {
        format!(
            "database {} as {} → {}",
            self.service,
            self.username,
            self.dest.describe()
        )
    }

    fn destination(&self) -> &dyn Destination {
        self.dest.as_ref()
    }

    fn reload_command(&self) -> &[String] {
        &self.reload_command
    }

    async fn generate(&self, mut ctx: OutputContext<'_>) -> anyhow::Result<()> {
        let key = TlsKeyPair::generate()?;
        let resp = ctx
            .client
            .issue_database_cert(IssueDatabaseCertRequest {
                service: self.service.clone(),
                username: self.username.clone(),
                database: self.database.clone(),
                tls_public_key_spki: key.spki_der(),
                ttl_seconds: ctx.ttl.as_secs(),
            })
            .await
            .map_err(crate::status_error)
            .with_context(|| {
                format!(
                    "requesting a certificate for database {:?} as user {:?}",
                    self.service, self.username
                )
            })?
            .into_inner();
        let kw = keywords(self, &resp.host, resp.port)?;
        let d = self.dest.as_ref();
        // The key before its certificate: a reader that sees a new
        // certificate always finds its key in place.
        d.write("tls.key", key.to_pkcs8_pem().as_bytes(), true)?;
        d.write("tls.crt", resp.tls_cert_pem.as_bytes(), false)?;
        d.write("ca.crt", resp.ca_certs_pem.as_bytes(), false)?;
        d.write(
            "pg_service.conf",
            service_file(&self.service, &self.dir, &kw).as_bytes(),
            false,
        )?;
        let conn: Vec<String> = kw
            .iter()
            .map(|(k, v)| format!("{k}={}", libpq_value(v)))
            .collect();
        d.write(
            "connection_string",
            format!("{}\n", conn.join(" ")).as_bytes(),
            false,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_values_are_quoted_when_needed() {
        assert_eq!(
            libpq_value("/run/orders-db/tls.crt"),
            "/run/orders-db/tls.crt"
        );
        assert_eq!(libpq_value("/a b/it's"), "'/a b/it\\'s'");
        assert_eq!(libpq_value(""), "''");
    }
}
