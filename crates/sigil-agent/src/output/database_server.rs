//! Output `database-server`: what the machine running a database needs for
//! certificate authentication, for stock PostgreSQL.
//!
//! Writes `tls.key` (kept across renewals, so a reload never pairs a new key
//! with an old certificate) and `tls.crt` (a server certificate from the
//! `host` CA for `names`), `client_ca.crt` (every trusted `db-client` CA:
//! `ssl_ca_file`) and `crl.pem` (one CRL per such CA: `ssl_crl_file`).
//! The CRL follows every lock between renewals ([`follow`]): it is rewritten
//! and `reload_command` (e.g. `pg_ctl reload`) runs after each rewrite.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::{
    DatabaseServerState, IssueDatabaseServerCertRequest, WatchDatabaseServerRequest,
};
use tokio::sync::watch;

use super::{Output, OutputContext};
use crate::client::AuthChannel as Channel;
use crate::config::OutputConfig;
use crate::destination::{self, Destination};

pub const KEY: &str = "tls.key";
pub const CERT: &str = "tls.crt";
pub const CLIENT_CA: &str = "client_ca.crt";
pub const CRL: &str = "crl.pem";

pub struct DatabaseServerOutput {
    dest: Box<dyn Destination>,
    service: String,
    names: Vec<String>,
    reload_command: Vec<String>,
}

impl DatabaseServerOutput {
    pub fn from_config(o: &OutputConfig) -> anyhow::Result<DatabaseServerOutput> {
        Ok(DatabaseServerOutput {
            dest: destination::from_config(&o.destination)?,
            service: o
                .service
                .clone()
                .context("database-server output: service is required")?,
            names: o.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            reload_command: o.reload_command.clone(),
        })
    }

    /// The server key: the one already written, else a new one.
    fn key(&self) -> anyhow::Result<(TlsKeyPair, bool)> {
        if let Some(b) = self.dest.read(KEY)? {
            let text = String::from_utf8(b).context("the server key is not text")?;
            if let Ok(k) = TlsKeyPair::from_pkcs8_pem(&text) {
                return Ok((k, false));
            }
            tracing::warn!(service = %self.service, "the database server key is unreadable; making a new one");
        }
        Ok((TlsKeyPair::generate()?, true))
    }
}

#[async_trait]
impl Output for DatabaseServerOutput {
    fn describe(&self) -> String {
        format!(
            "database-server {} → {}",
            self.service,
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
        let (key, new_key) = self.key()?;
        let cert = ctx
            .client
            .issue_database_server_cert(IssueDatabaseServerCertRequest {
                service: self.service.clone(),
                names: self.names.clone(),
                tls_public_key_spki: key.spki_der(),
                ttl_seconds: ctx.ttl.as_secs(),
            })
            .await
            .map_err(crate::status_error)
            .with_context(|| {
                format!(
                    "requesting the server certificate of database {:?}",
                    self.service
                )
            })?
            .into_inner();
        let state = first_state(&mut ctx.client, &self.service).await?;
        let d = self.dest.as_ref();
        if new_key {
            d.write(KEY, key.to_pkcs8_pem().as_bytes(), true)?;
        }
        d.write(CERT, cert.tls_cert_pem.as_bytes(), false)?;
        write_state(d, &state)?;
        Ok(())
    }
}

async fn first_state(
    client: &mut AuthServiceClient<Channel>,
    service: &str,
) -> anyhow::Result<DatabaseServerState> {
    let what = || format!("fetching the client CAs and CRL of database {service:?}");
    let mut stream = client
        .watch_database_server(WatchDatabaseServerRequest {
            service: service.to_string(),
        })
        .await
        .map_err(crate::status_error)
        .with_context(what)?
        .into_inner();
    stream
        .message()
        .await
        .map_err(crate::status_error)
        .with_context(what)?
        .context("the auth service ended the database server stream")
}

/// The client CAs, then the CRL (a CRL whose CA is not yet trusted is
/// ignored; the other order could refuse everyone for a moment).
fn write_state(d: &dyn Destination, s: &DatabaseServerState) -> anyhow::Result<()> {
    d.write(CLIENT_CA, s.client_ca_pem.as_bytes(), false)?;
    d.write(CRL, s.crl_pem.as_bytes(), false)?;
    Ok(())
}

/// Follow `WatchDatabaseServer` until the agent stops: rewrite the CRL (and
/// client CAs) on every change and run `reload_command`.
pub async fn follow(
    dest: Box<dyn Destination>,
    service: String,
    reload_command: Vec<String>,
    mut client: watch::Receiver<Option<AuthServiceClient<Channel>>>,
) {
    let dest = dest.as_ref();
    let mut last: Option<DatabaseServerState> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(mut c) = client.borrow_and_update().clone() else {
            if client.changed().await.is_err() {
                return;
            }
            continue;
        };
        let req = WatchDatabaseServerRequest {
            service: service.clone(),
        };
        let mut stream = match c.watch_database_server(req).await {
            Ok(s) => {
                failures = 0;
                s.into_inner()
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(service = %service, error = %e.message(), "database server stream refused; retrying");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(state)) => {
                        if last.as_ref() == Some(&state) {
                            continue;
                        }
                        match write_state(dest, &state) {
                            Ok(()) => {
                                tracing::info!(service = %service, revoked = state.revoked_serials.len(), "database CRL written");
                                last = Some(state);
                                super::reload::run(&reload_command).await;
                            }
                            Err(e) => {
                                tracing::error!(service = %service, error = %format!("{e:#}"),
                                    "writing the database CRL failed; retrying");
                                failures += 1;
                                tokio::time::sleep(backoff(failures)).await;
                                break;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        failures += 1;
                        tracing::warn!(service = %service, "database server stream ended; reconnecting");
                        tokio::time::sleep(backoff(failures)).await;
                        break;
                    }
                },
                r = client.changed() => {
                    if r.is_err() { return }
                    // A renewed credential: reconnect with it.
                    break;
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64 << failures.min(7)).min(Duration::from_secs(30))
}
