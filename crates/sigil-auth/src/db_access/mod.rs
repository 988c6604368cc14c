//! Database access with client certificates, for stock PostgreSQL and its
//! `cert` authentication, with no proxy in the path:
//! - [`issue_client_cert`]: a `db-client` certificate, CN = the database
//!   user, for a `database` the bot's roles allow (the `database` output);
//!   every one is recorded under `/db_certs/<serial>` until it expires, so a
//!   lock can revoke it by serial (X.509 CRLs know nothing else);
//! - [`issue_server_cert`]: a `host` CA server certificate for the machine
//!   running the database (`db_server_labels`);
//! - [`server_state`] / [`watch`]: the database server's client CAs and the
//!   CRLs that locks feed (the `database-server` output).

mod list;
mod records;
mod server_state;

pub use list::list_access;
pub use records::DbCertRecord;
pub use server_state::{server_state, watch};

use std::net::IpAddr;

use sigil_pki::ClientIdentity;
use sigil_proto::v1::{
    DatabaseCert, DatabaseServerCert, IssueDatabaseCertRequest, IssueDatabaseServerCertRequest,
};
use sigil_store::{Op, Txn};
use sigil_types::{Database, LockTarget};
use tonic::Status;

use crate::audit;
use crate::issuance::{self, bot_authority, effective_ttl};
use crate::state::AuthState;

/// At most this many names in one database server certificate.
pub const MAX_SERVER_NAMES: usize = 64;

/// The `database` resource named `service`, or a clear error.
pub fn database(state: &AuthState, service: &str) -> Result<Database, Status> {
    if service.is_empty() {
        return Err(Status::invalid_argument(
            "service: give the name of a `database` resource",
        ));
    }
    sigil_types::check_name("database", service)
        .map_err(|e| Status::invalid_argument(format!("service: {}", e.message)))?;
    state.cache.database(service).ok_or_else(|| {
        Status::not_found(format!(
            "service: no database named {service:?}; `sigil get databases` lists them"
        ))
    })
}

/// Audit a refused request (`cert.denied`, aggregated in a flood).
async fn audit_refusal<T>(
    state: &AuthState,
    result: &Result<T, Status>,
    fields: serde_json::Value,
) {
    let Some(e) = result.as_ref().err().filter(|e| {
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::NotFound
        )
    }) else {
        return;
    };
    let mut fields = fields;
    if let Some(m) = fields.as_object_mut() {
        m.insert("reason".into(), e.message().into());
    }
    state
        .denials
        .record(
            state.store.as_ref(),
            audit::event(audit::CERT_DENIED, fields),
        )
        .await;
}

fn shown(s: &str) -> String {
    sigil_types::text::escape_unsafe(&s.chars().take(64).collect::<String>()).into_owned()
}

/// Issue a database client certificate (see the module docs).
pub async fn issue_client_cert(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueDatabaseCertRequest,
) -> Result<DatabaseCert, Status> {
    let result = issue_client(state, id, req).await;
    audit_refusal(
        state,
        &result,
        serde_json::json!({
            "kind": "database", "bot": id.bot, "bot_instance": id.instance_id,
            "service": shown(&req.service), "db_user": shown(&req.username),
            "database": shown(&req.database),
        }),
    )
    .await;
    result
}

async fn issue_client(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueDatabaseCertRequest,
) -> Result<DatabaseCert, Status> {
    let auth = bot_authority(state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
    sigil_types::validate_db_user(&req.username)
        .map_err(|e| Status::invalid_argument(format!("username: {e}")))?;
    sigil_types::validate_db_name(&req.database)
        .map_err(|e| Status::invalid_argument(format!("database: {e}")))?;
    let db = database(state, &req.service)?;
    let (host, port) = db
        .spec
        .host_port()
        .map_err(|e| Status::failed_precondition(format!("database {:?}: {e}", req.service)))?;
    auth.role_set
        .database_access(&db.metadata.labels, &req.username, &req.database)
        .map_err(|why| {
            Status::permission_denied(format!(
                "bot {:?} may not connect to database {:?} as {:?}: {why}",
                id.bot, req.service, req.username
            ))
        })?;
    let holder = ClientIdentity {
        roles: auth.roles.clone(),
        ..id.clone()
    };
    issuance::check_locks(state, &holder, &[LockTarget::DbUser(req.username.clone())])?;
    let ttl = effective_ttl(req.ttl_seconds, auth.max_ttl);
    let cas = state.cas();
    let cert = crate::telemetry::issue("database", || {
        cas.db_client.signer.issue_db_client(
            &req.tls_public_key_spki,
            &req.username,
            &id.bot,
            &id.instance_id,
            ttl,
        )
    })
    .map_err(issuance::pki_error)?;
    let record = DbCertRecord {
        serial: cert.serial_hex.clone(),
        bot: id.bot.clone(),
        bot_uid: id.bot_uid.clone(),
        instance: id.instance_id.clone(),
        roles: auth.roles.clone(),
        db_user: req.username.clone(),
        database: req.database.clone(),
        service: req.service.clone(),
        not_after: cert.not_after,
    };
    let event = audit::event(
        audit::CERT_ISSUED,
        serde_json::json!({
            "kind": "database", "ca": "db-client", "serial": cert.serial_hex,
            "ttl_seconds": ttl.as_secs(), "bot": id.bot, "bot_instance": id.instance_id,
            "principals": [req.username], "service": req.service, "database": req.database,
        }),
    );
    // The record and the audit event in one transaction: a certificate that
    // a lock could not find is never handed out.
    state
        .store
        .commit(Txn {
            ops: vec![record.op()?],
            audit: vec![event],
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    metrics::counter!("sigil_certs_issued_total", "kind" => "database").increment(1);
    Ok(DatabaseCert {
        tls_cert_pem: cert.pem,
        ca_certs_pem: cas
            .host
            .trusted
            .iter()
            .map(|c| c.cert_pem())
            .collect::<String>(),
        expires_unix: cert.not_after.unix_timestamp(),
        serial: cert.serial_hex,
        protocol: db.spec.protocol.clone(),
        host,
        port: u32::from(port),
    })
}

/// Issue the database server's certificate (see the module docs).
pub async fn issue_server_cert(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueDatabaseServerCertRequest,
) -> Result<DatabaseServerCert, Status> {
    let result = issue_server(state, id, req).await;
    let names: Vec<String> = req
        .names
        .iter()
        .take(MAX_SERVER_NAMES)
        .map(|n| shown(n))
        .collect();
    audit_refusal(
        state,
        &result,
        serde_json::json!({
            "kind": "database_server", "bot": id.bot, "bot_instance": id.instance_id,
            "service": shown(&req.service), "principals": names,
        }),
    )
    .await;
    result
}

/// May the holder of `auth` run database `db`'s server?
pub fn check_server_role(
    bot: &str,
    role_set: &sigil_types::RoleSet,
    db: &Database,
) -> Result<(), Status> {
    if role_set.allows_db_server(&db.metadata.labels) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "bot {bot:?} may not serve database {:?}: no role's db_server_labels match its labels",
        db.metadata.name
    )))
}

async fn issue_server(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueDatabaseServerCertRequest,
) -> Result<DatabaseServerCert, Status> {
    let auth = bot_authority(state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
    let holder = ClientIdentity {
        roles: auth.roles.clone(),
        ..id.clone()
    };
    issuance::check_locks(state, &holder, &[])?;
    let db = database(state, &req.service)?;
    check_server_role(&id.bot, &auth.role_set, &db)?;
    let (uri_host, _) = db
        .spec
        .host_port()
        .map_err(|e| Status::failed_precondition(format!("database {:?}: {e}", req.service)))?;
    if req.names.is_empty() {
        return Err(Status::invalid_argument(
            "names: give the database server's names and addresses (at least one)",
        ));
    }
    if req.names.len() > MAX_SERVER_NAMES {
        return Err(Status::invalid_argument(format!(
            "names: at most {MAX_SERVER_NAMES} names in one server certificate"
        )));
    }
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for (i, n) in req.names.iter().enumerate() {
        sigil_types::validate_host_principal(n, false)
            .map_err(|e| Status::invalid_argument(format!("names[{i}]: {e}")))?;
        // The host CA also certifies the auth service: a name is granted only
        // as the database's own address or by `ssh_host_principals` (the
        // names this bot's machine may be certified for), never any name.
        if !n.eq_ignore_ascii_case(&uri_host) && !auth.role_set.allows_ssh_host_principal(n) {
            return Err(Status::permission_denied(format!(
                "names[{i}]: {n:?} is neither the database's address ({uri_host}) nor allowed by \
                 the roles of bot {:?} (allow.ssh_host_principals)",
                id.bot
            )));
        }
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.to_ascii_lowercase()),
        }
    }
    let ttl = effective_ttl(req.ttl_seconds, auth.max_ttl);
    let cas = state.cas();
    let cn = format!("db:{}", db.metadata.name);
    let cn: String = cn.chars().take(64).collect();
    let cert = crate::telemetry::issue("database_server", || {
        cas.host
            .signer
            .issue_server(&req.tls_public_key_spki, &cn, &dns, &ips, ttl)
    })
    .map_err(issuance::pki_error)?;
    let event = audit::event(
        audit::CERT_ISSUED,
        serde_json::json!({
            "kind": "database_server", "ca": "host", "serial": cert.serial_hex,
            "ttl_seconds": ttl.as_secs(), "bot": id.bot, "bot_instance": id.instance_id,
            "principals": req.names, "service": req.service,
        }),
    );
    state
        .store
        .commit(Txn {
            ops: Vec::<Op>::new(),
            audit: vec![event],
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    metrics::counter!("sigil_certs_issued_total", "kind" => "database_server").increment(1);
    Ok(DatabaseServerCert {
        tls_cert_pem: cert.pem,
        expires_unix: cert.not_after.unix_timestamp(),
        serial: cert.serial_hex,
    })
}
