//! The Sigil auth service: an automated CA per purpose with roles, join
//! methods, bot instances, locks and a hash-chained audit log.
//!
//! [`run`] starts three listeners: the control plane (gRPC over TLS 1.3, mTLS
//! after joining), the public HTTPS endpoints, and the owner-only admin Unix
//! socket in the data dir.

mod api;
mod app_access;
mod audit;
mod authz;
mod ca_rotation;
mod cache;
mod cluster;
mod db_access;
mod escalation;
mod federation;
mod issuance;
mod join;
mod key_exchange;
mod key_source;
mod keys;
mod kube_access;
mod migrate;
mod outbound;
mod public_http;
mod renewal;
mod ssh_access;
mod state;
mod telemetry;
mod tls;
mod trust;
mod web;
mod workload;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sigil_pki::SoftwareKeyManager;
use sigil_proto::v1::admin_service_server::AdminServiceServer;
use sigil_proto::v1::auth_service_server::AuthServiceServer;
use sigil_store::{PostgresStore, SqliteStore, Store, Txn};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use key_source::{CaKeySource, HsmConfig, Secret, SecretSource};
pub use migrate::migrate;
pub use tls::provider;

/// How to run the auth service. `Debug` shows the store URL without its password.
#[derive(Clone)]
pub struct AuthConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub public_listen: SocketAddr,
    /// Only used when the cluster is created (first start).
    pub cluster_name: Option<String>,
    /// Extra DNS names / IPs for the server certificate.
    pub server_names: Vec<String>,
    /// The public HTTPS base URL (`https://host[:port]`): the JWT-SVID issuer
    /// and OIDC discovery address. Default `https://<public listen address>`.
    pub public_url: Option<String>,
    /// Extra PEM roots for outbound HTTPS (OIDC issuers, STS endpoints).
    pub outbound_ca_file: Option<PathBuf>,
    /// STS endpoints the `iam` join method may forward to (`https://host`);
    /// empty means AWS's own (`sts.amazonaws.com`, `sts.<region>.amazonaws.com`).
    pub sts_endpoints: Vec<String>,
    /// The audit checkpoint signing key file; default `audit-key.json` in the data
    /// dir (created on first start). Keep it off the database's volume in production.
    pub audit_key_file: Option<PathBuf>,
    /// A shared PostgreSQL store (`postgres://…`); `None` = SQLite in the data dir.
    pub store_url: Option<String>,
    /// The audit key is lost for good: record this server's (new) key as the
    /// cluster's, over the one recorded in the store.
    pub new_audit_key: bool,
    /// Where the CA private keys live (database, sealed under a KEK, or an HSM).
    pub ca_keys: CaKeySource,
    /// How long a bot instance's record is kept after its last credential
    /// expired; then it is removed (its history stays in the audit log).
    pub instance_retention: Duration,
    /// The `https_spiffe` bundle endpoint's listen address (federation/endpoint.rs).
    pub spiffe_bundle_endpoint_listen: Option<SocketAddr>,
    /// The public listener asks browsers for an (optional) client certificate,
    /// for the web console's certificate login (web/client_cert.rs).
    pub web_client_certificates: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("public_listen", &self.public_listen)
            .field("cluster_name", &self.cluster_name)
            .field("server_names", &self.server_names)
            .field("public_url", &self.public_url)
            .field("outbound_ca_file", &self.outbound_ca_file)
            .field("sts_endpoints", &self.sts_endpoints)
            .field("audit_key_file", &self.audit_key_file)
            .field(
                "store_url",
                &self.store_url.as_deref().map(sigil_store::redacted_url),
            )
            .field("new_audit_key", &self.new_audit_key)
            .field("ca_keys", &self.ca_keys)
            .field("instance_retention", &self.instance_retention)
            .field(
                "spiffe_bundle_endpoint_listen",
                &self.spiffe_bundle_endpoint_listen,
            )
            .field("web_client_certificates", &self.web_client_certificates)
            .finish()
    }
}

/// File names inside the data dir.
pub const DB_FILE: &str = "sigil.db";
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Held (flock) by the running auth service; see [`prepare_data_dir`].
pub const LOCK_FILE: &str = "sigil.lock";

/// Remove what has expired (tokens, spent records, bot instances past their
/// retention), a bounded batch per transaction with a pause between batches,
/// so renewals never queue behind a long purge.
async fn purge_expired(store: &dyn sigil_store::Store) {
    let mut total = 0;
    loop {
        match store.purge_expired().await {
            Ok(n) => {
                total += n;
                if n < sigil_store::PURGE_BATCH {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging expired resources failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(removed = total, "purged expired resources");
    }
}

/// Run until SIGINT or SIGTERM.
pub async fn run(cfg: AuthConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    serve(cfg, stop_rx).await
}

/// Run until `stop` turns true.
pub async fn serve(cfg: AuthConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let metrics = telemetry::install();
    // Held until `serve` returns (the process's lifetime for `sigil auth start`).
    let _lock = prepare_data_dir(&cfg.data_dir)?;
    let store = open_store(&cfg).await?;
    let km = SoftwareKeyManager;
    let ca_km: Arc<dyn sigil_pki::KeyManager> = Arc::from(key_source::key_manager(&cfg.ca_keys)?);
    // Before and after: a migration may claim the store meanwhile (migrate.rs).
    migrate::refuse_if_migrating(store.as_ref()).await?;
    let loaded =
        cluster::load_or_create(store.as_ref(), ca_km.as_ref(), cfg.cluster_name.as_deref()).await;
    migrate::refuse_if_migrating(store.as_ref()).await?;
    let (cluster, cas) = loaded?;
    let cas = Arc::new(cas);
    let cache = cache::Cache::start(store.clone()).await?;
    let ca_pin = cas.server_pin();
    let audit_key_path = cfg
        .audit_key_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join(audit::key::DEFAULT_KEY_FILE));
    // Servers sharing a store must sign with one key: agents pin it.
    let pinned = audit::key_pin::store_pin(store.as_ref()).await?;
    audit::key_pin::require_copy_if_pinned(&audit_key_path, pinned.as_deref(), cfg.new_audit_key)?;
    let audit_key = audit::key::load_or_create(&audit_key_path, &cfg.data_dir, &km)?;
    let head_file = cfg.data_dir.join(audit::checkpoint::HEAD_FILE);
    audit::key_pin::pin_in_store(
        store.as_ref(),
        &audit_key,
        pinned,
        cfg.new_audit_key,
        Some(&head_file),
    )
    .await?;
    let checkpoints = Arc::new(
        audit::checkpoint::Checkpoints::open(store.clone(), audit_key, &cluster, &cfg.data_dir)
            .await?,
    );
    let audit_public_key = checkpoints.public_key().to_string();

    // Bind everything before announcing readiness, so a port clash fails fast.
    let grpc_listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding --listen {}", cfg.listen))?;
    let public_listener = TcpListener::bind(cfg.public_listen)
        .await
        .with_context(|| format!("binding --public-listen {}", cfg.public_listen))?;
    let bundle_listener = match cfg.spiffe_bundle_endpoint_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding --spiffe-bundle-endpoint-listen {a}"))?,
        ),
        None => None,
    };
    let listen = grpc_listener.local_addr()?;
    let public = public_listener.local_addr()?;
    let sock_path = cfg.data_dir.join(ADMIN_SOCKET);
    let _ = std::fs::remove_file(&sock_path);
    let admin_listener = UnixListener::bind(&sock_path)
        .with_context(|| format!("binding the admin socket {}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;

    let (dns, ips) = tls::server_names(&cluster, &cfg.server_names, &[listen, public]);
    let server_cert = Arc::new(tls::ServerCert::issue(
        &cas.host.server,
        &cluster,
        &dns,
        &ips,
    )?);
    let client_roots = Arc::new(tls::ClientRoots::new(&cas.client.trusted)?);
    let grpc_tls = tls::server_config(server_cert.clone(), Some(client_roots.clone()))?;
    // The console's certificate login (web/client_cert.rs), when configured.
    let public_tls = tls::server_config(
        server_cert.clone(),
        cfg.web_client_certificates
            .then(|| web::client_cert::RequestClientCert::new() as _),
    )?;

    let jwt_issuer = match &cfg.public_url {
        Some(u) => check_public_url(u)?,
        None => format!("https://{public}"),
    };
    let trust = trust::Trust::new(&cas, &cache.revocations())
        .context("building the SPIFFE trust bundle and CRL")?;
    let state = Arc::new(state::AuthState {
        trust,
        jwt_issuer,
        store: store.clone(),
        cluster: cluster.clone(),
        ca_epoch: watch::channel(cas.epoch.clone()).0,
        cas: std::sync::RwLock::new(cas),
        ca_km,
        cas_reload: tokio::sync::Mutex::new(()),
        cas_stale: std::sync::RwLock::new(None),
        key_exchanges: Arc::default(),
        server_cert: server_cert.clone(),
        client_roots,
        cache,
        joins: join::JoinRegistry::standard(),
        outbound: outbound::Outbound::new(cfg.outbound_ca_file.as_deref())?,
        sts_endpoints: cfg.sts_endpoints.clone(),
        advertise_addr: listen.to_string(),
        public_addr: public.to_string(),
        data_dir: cfg.data_dir.clone(),
        started: Instant::now(),
        checkpoints: checkpoints.clone(),
        denials: audit::aggregate::Denials::default(),
        instance_retention: cfg.instance_retention,
    });
    store
        .commit(Txn {
            ops: vec![],
            audit: vec![audit::event(
                audit::AUTH_STARTED,
                serde_json::json!({"cluster": cluster, "listen": listen.to_string(), "version": env!("CARGO_PKG_VERSION")}),
            )],
        })
        .await?;

    tracing::info!(cluster = %cluster, listen = %listen, public = %public, ca_pin = %ca_pin,
        audit_key = %audit_public_key, audit_key_file = %checkpoints.key_path().display(), "auth service ready");
    // A stable line for scripts and humans: the pin agents need.
    println!(
        "sigil auth service ready: cluster={cluster} listen={listen} public={public} ca_pin={ca_pin} audit_key={audit_public_key}"
    );
    if let Some(handle) = metrics.clone() {
        telemetry::spawn(handle, state.clone());
    }
    // Start-up verification, then batched checkpoint signing.
    let checkpointer = tokio::spawn(checkpoints.clone().run(stop.clone()));
    let denial_flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                state.denials.flush(state.store.as_ref(), false).await;
            }
        })
    };

    let grpc = {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let incoming = tls_incoming(grpc_listener, grpc_tls, state.clone());
            tonic::transport::Server::builder()
                .add_service(auth_server(state.clone()))
                .add_service(admin_server(state))
                .serve_with_incoming_shutdown(incoming, wait(stop))
                .await
        })
    };
    let admin = {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let incoming = async_stream_unix(admin_listener);
            tonic::transport::Server::builder()
                .add_service(admin_server(state))
                .serve_with_incoming_shutdown(incoming, wait(stop))
                .await
        })
    };
    let public_srv = tokio::spawn(public_http::serve(
        public_listener,
        public_tls,
        state.clone(),
        metrics,
        stop.clone(),
    ));
    let trust_follower = tokio::spawn(follow_trust(state.clone()));
    let federation = tokio::spawn(federation::run(state.clone()));
    let bundle_endpoint = bundle_listener.map(|l| {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = federation::serve_bundle_endpoint(l, state, stop).await {
                tracing::error!(error = %format!("{e:#}"), "the https_spiffe bundle endpoint stopped");
            }
        })
    });
    let ca_follower = tokio::spawn(ca_rotation::follow(state.clone()));
    let janitor = {
        let store = store.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let mut purge = tokio::time::interval(Duration::from_secs(30));
            let mut refresh = tokio::time::interval(tls::SERVER_CERT_REFRESH);
            refresh.tick().await; // the first tick is immediate; the cert is fresh
            loop {
                tokio::select! {
                    _ = purge.tick() => purge_expired(store.as_ref()).await,
                    _ = refresh.tick() => {
                        // Under the CA reload lock: a reload between reading the CAs
                        // and installing would be undone by an older certificate.
                        let _one = state.cas_reload.lock().await;
                        match server_cert.refresh(&state.cas().host.server) {
                            Ok(()) => tracing::info!("auth service TLS certificate renewed"),
                            Err(e) => tracing::error!(error = %e, "renewing the auth service TLS certificate failed"),
                        }
                    }
                }
            }
        })
    };

    let _ = stop.wait_for(|s| *s).await;
    tracing::info!("shutting down");
    janitor.abort();
    trust_follower.abort();
    federation.abort();
    if let Some(b) = bundle_endpoint {
        b.abort();
    }
    ca_follower.abort();
    let _ = grpc.await;
    let _ = admin.await;
    let _ = public_srv.await;
    // Last writes: every counted denial, then a checkpoint covering everything.
    denial_flusher.abort();
    state.denials.flush(store.as_ref(), true).await;
    let _ = checkpointer.await;
    if checkpoints.integrity() == audit::checkpoint::Integrity::Intact {
        match checkpoints.sign().await {
            Ok(_) => tracing::info!("final audit checkpoint signed"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "signing the final audit checkpoint failed")
            }
        }
    }
    let _ = std::fs::remove_file(&sock_path);
    Ok(())
}

/// The store named by the configuration: SQLite in the data dir, or a shared PostgreSQL.
async fn open_store(cfg: &AuthConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &cfg.store_url {
        None => {
            let marker = cfg.data_dir.join(migrate::MIGRATED_MARKER);
            if let Ok(text) = std::fs::read_to_string(&marker) {
                anyhow::bail!(
                    "this data dir's cluster was {}: start with --store (or SIGIL_STORE); \
                     remove {} only to run the old SQLite copy on purpose",
                    text.trim().trim_end_matches("; start with --store"),
                    marker.display()
                );
            }
            let db = cfg.data_dir.join(DB_FILE);
            Arc::new(
                SqliteStore::open(&db)
                    .await
                    .with_context(|| format!("opening the database {}", db.display()))?,
            )
        }
        Some(url) => {
            let store = PostgresStore::connect(url).await.with_context(|| {
                format!(
                    "opening the PostgreSQL store {}",
                    sigil_store::redacted_url(url)
                )
            })?;
            tracing::info!(store = %store.target(), "using the PostgreSQL store");
            Arc::new(store)
        }
    })
}

/// Largest request the auth API decodes: joins, renewals and issuance
/// carry keys, CSRs and attestation documents of a few KiB.
pub const AUTH_MAX_REQUEST: usize = 1024 * 1024;
/// Largest request the admin API decodes: one resource document at its
/// limit, JSON-encoded, with room for the envelope.
pub const ADMIN_MAX_REQUEST: usize = sigil_types::limits::MAX_DOCUMENT_BYTES + 64 * 1024;

fn auth_server(state: state::SharedState) -> AuthServiceServer<api::auth_api::AuthApi> {
    AuthServiceServer::new(api::auth_api::AuthApi { state })
        .max_decoding_message_size(AUTH_MAX_REQUEST)
}

fn admin_server(state: state::SharedState) -> AdminServiceServer<api::admin_api::AdminApi> {
    AdminServiceServer::new(api::admin_api::AdminApi { state })
        .max_decoding_message_size(ADMIN_MAX_REQUEST)
}

/// Re-sign the CRL when revocations change, and periodically before it expires.
async fn follow_trust(state: state::SharedState) {
    let mut changes = state.cache.subscribe();
    let mut resign = tokio::time::interval(trust::CRL_RESIGN_EVERY);
    resign.tick().await; // the first tick is immediate; the CRL is fresh
    let mut seen = changes.borrow_and_update().revocations;
    loop {
        let force = tokio::select! {
            r = changes.changed() => {
                if r.is_err() { return; }
                let now = changes.borrow_and_update().revocations;
                if now == seen { continue; }
                seen = now;
                false
            }
            _ = resign.tick() => true,
        };
        // Under the CA reload lock, like the TLS certificate's renewal.
        let _one = state.cas_reload.lock().await;
        match state
            .trust
            .refresh(&state.cas(), &state.cache.revocations(), force)
        {
            Ok(true) => {
                tracing::info!(sequence = state.trust.current().sequence, "SVID CRL signed")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "signing the SVID CRL failed"),
        }
    }
}

/// `--public-url` must be an https URL with a host and no path, query or fragment
/// (OIDC issuers are compared as strings by relying parties).
fn check_public_url(u: &str) -> anyhow::Result<String> {
    let trimmed = u.trim_end_matches('/');
    let rest = trimmed.strip_prefix("https://").with_context(|| {
        format!("--public-url {u:?} must start with https:// (OIDC issuers are HTTPS URLs)")
    })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        anyhow::bail!("--public-url {u:?} must be https://HOST[:PORT] with no path, query or user");
    }
    Ok(trimmed.to_string())
}

pub(crate) async fn wait(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The data dir: opened without following symlinks, ours and writable by
/// nobody else (refused otherwise, see `sigil_fs`), created or restricted to
/// 0700; then locked for this process's lifetime, so a second `sigil auth
/// start` on it refuses to start instead of both running and diverging.
fn prepare_data_dir(dir: &std::path::Path) -> anyhow::Result<sigil_fs::DirLock> {
    let d = sigil_fs::SafeDir::create(dir, "--data-dir", sigil_fs::DirKind::Private)?;
    d.set_mode(0o700)?;
    d.lock(LOCK_FILE).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: another `sigil auth start` is using --data-dir {}; stop it first, or give this one its own --data-dir",
            dir.display()
        )
    })
}

/// Accept TCP connections and complete TLS handshakes concurrently, so one
/// slow client cannot stall the accept loop.
fn tls_incoming(
    listener: TcpListener,
    cfg: rustls::ServerConfig,
    state: state::SharedState,
) -> impl futures::Stream<Item = Result<tls::TlsConn, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let tcp = tokio::io::BufWriter::with_capacity(tls::WRITE_BUFFER, tcp);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = tls.get_ref().1;
                        state
                            .key_exchanges
                            .record("control", &key_exchange::group_of(conn));
                        // Which trusted client CA signed the certificate: the
                        // handshake verified the chain; this names the CA.
                        let client_ca_pin = conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| {
                                state
                                    .cas()
                                    .client
                                    .trusted
                                    .iter()
                                    .find(|ca| sigil_pki::issued_by(leaf, ca.cert_der()))
                                    .map(|ca| ca.spki_pin())
                            });
                        let _ = tx
                            .send(Ok(tls::TlsConn::new(tls, remote, client_ca_pin)))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn async_stream_unix(
    listener: UnixListener,
) -> impl futures::Stream<Item = Result<tls::AdminConn, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| tls::AdminConn::new(s));
        Some((r, l))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
