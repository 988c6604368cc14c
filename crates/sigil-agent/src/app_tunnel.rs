//! `application-tunnel`: plain HTTP on a loopback port, forwarded to
//! `sigil proxy` over mTLS with the agent's own (current) identity, so a tool
//! that cannot do mTLS can reach an app. Each local connection gets its own
//! proxy connection, made with the credential stored at that moment.

use std::sync::Arc;

use anyhow::Context;
use http::header::{HOST, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::config::app_tunnel::TunnelConfig;
use crate::storage::Storage;

/// Serve `listener` for the agent's life.
pub async fn serve(listener: TcpListener, cfg: TunnelConfig, storage: Storage) {
    let cfg = Arc::new(cfg);
    let storage = Arc::new(storage);
    loop {
        let Ok((local, _)) = listener.accept().await else {
            continue;
        };
        let (cfg, storage) = (cfg.clone(), storage.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(local, &cfg, &storage).await {
                tracing::warn!(app = %cfg.app, error = %format!("{e:#}"), "application tunnel connection failed");
            }
        });
    }
}

fn tls_config(cfg: &TunnelConfig, storage: &Storage) -> anyhow::Result<rustls::ClientConfig> {
    let cred = storage
        .load()?
        .context("the agent has no credential yet (not joined)")?;
    let ca = std::fs::read(&cfg.proxy_ca_file)
        .with_context(|| format!("proxy_ca_file: reading {}", cfg.proxy_ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.context("proxy_ca_file: not PEM")?)?;
    }
    let chain = rustls_pemfile::certs(&mut cred.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the agent's certificate")?;
    let key = rustls_pemfile::private_key(&mut cred.key_pem.as_bytes())
        .ok()
        .flatten()
        .context("the agent's key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

async fn connection(local: TcpStream, cfg: &TunnelConfig, storage: &Storage) -> anyhow::Result<()> {
    let tls = tls_config(cfg, storage)?;
    let name = rustls_pki_types::ServerName::try_from(cfg.app.clone())?;
    let tcp = TcpStream::connect(&cfg.proxy)
        .await
        .with_context(|| format!("connecting to the proxy at {}", cfg.proxy))?;
    let _ = tcp.set_nodelay(true);
    let upstream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .context("TLS to the proxy")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let host = HeaderValue::from_str(&cfg.app)?;
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let sender = sender.clone();
        let host = host.clone();
        async move {
            req.headers_mut().insert(HOST, host);
            sender.lock().await.send_request(req).await
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(local), svc)
        .await?;
    Ok(())
}
