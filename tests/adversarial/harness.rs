//! Shared pieces of the adversarial suite: one auth service per module
//! (stopped when the test binary exits), raw gRPC clients presenting any
//! certificate, and the real client CA's key read from the service's
//! database, to sign certificates the service must still refuse.

use crate::common::*;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{Credentials, JoinClientMessage, JoinInit, RenewRequest};
use std::sync::{Arc, Mutex, Once};
use tonic::transport::Channel;

/// A module's shared auth service: started on first use, stopped at exit.
pub type Slot = Mutex<Option<Arc<Auth>>>;

static SLOTS: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());
/// Processes a module keeps running for all its cases (an agent), killed at exit.
static CHILDREN: Mutex<Vec<std::process::Child>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

extern "C" fn stop_shared() {
    if let Ok(mut kids) = CHILDREN.lock() {
        for mut c in kids.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let slots = SLOTS.lock().map(|s| s.clone()).unwrap_or_default();
    for slot in slots {
        // Every test thread is done: this is the last reference.
        if let Some(a) = slot.lock().ok().and_then(|mut s| s.take()) {
            drop(a);
        }
    }
}

fn register_exit() {
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(stop_shared);
    });
}

/// Keeps `child` running until the test binary exits.
pub fn keep_child(child: std::process::Child) {
    register_exit();
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child);
}

pub fn shared(slot: &'static Slot, start: impl FnOnce() -> Auth) -> Arc<Auth> {
    register_exit();
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = s.as_ref() {
        return a.clone();
    }
    let a = Arc::new(start());
    *s = Some(a.clone());
    SLOTS.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
    a
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A certificate chain and key, PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// An auth-service client presenting `cert` (or none).
pub fn auth_client(auth: &Auth, cert: Option<&Pem>) -> AuthServiceClient<Channel> {
    let c = cert.map(|c| sigil_agent::client::ClientCert {
        cert_pem: &c.cert,
        key_pem: &c.key,
    });
    let tls = sigil_agent::client::tls_config(std::slice::from_ref(&auth.pin), c).expect("tls");
    AuthServiceClient::new(sigil_agent::client::channel(&auth.addr(), tls).expect("channel"))
}

/// The admin API on the owner-only socket.
pub async fn admin_socket(auth: &Auth) -> AdminServiceClient<Channel> {
    let ch = sigil_cli::admin::connect::local_channel(&auth.data)
        .await
        .expect("admin socket");
    AdminServiceClient::new(ch).max_decoding_message_size(64 << 20)
}

/// Renew as the holder of `cert`, asking for a fresh key.
pub fn renew(auth: &Auth, cert: Option<&Pem>) -> Result<Credentials, tonic::Status> {
    let spki = sigil_pki::TlsKeyPair::generate().expect("key").spki_der();
    rt().block_on(async {
        auth_client(auth, cert)
            .renew(RenewRequest {
                public_key_spki: spki,
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    })
}

/// The Join RPC: `init`, then `answers` to the challenges in turn.
pub fn join_raw(
    auth: &Auth,
    cert: Option<&Pem>,
    init: JoinInit,
    answers: Vec<JoinClientMessage>,
) -> Result<Credentials, tonic::Status> {
    let mut msgs = vec![JoinClientMessage {
        message: Some(ClientMsg::Init(init)),
    }];
    msgs.extend(answers);
    join_messages(auth, cert, msgs)
}

/// The Join RPC with exactly `msgs` as the client stream.
pub fn join_messages(
    auth: &Auth,
    cert: Option<&Pem>,
    msgs: Vec<JoinClientMessage>,
) -> Result<Credentials, tonic::Status> {
    rt().block_on(async {
        let mut s = auth_client(auth, cert)
            .join(tokio_stream::iter(msgs))
            .await?
            .into_inner();
        while let Some(m) = s.message().await? {
            if let Some(ServerMsg::Result(r)) = m.message {
                return Ok(r);
            }
        }
        Err(tonic::Status::internal("join ended without a result"))
    })
}

/// A token join with a fresh P-256 key.
pub fn token_init(token: &str) -> JoinInit {
    JoinInit {
        join_method: "token".into(),
        token: token.into(),
        public_key_spki: sigil_pki::TlsKeyPair::generate().expect("key").spki_der(),
        ttl_seconds: 3600,
        ..Default::default()
    }
}

/// Asserts a refusal: the status code and a stable part of the message.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    says: &str,
) -> tonic::Status {
    let e = match r {
        Ok(v) => panic!("ACCEPTED (expected {code:?} {says:?}): {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().to_lowercase().contains(&says.to_lowercase()),
        "{says:?} not in {e:?}"
    );
    e
}

/// A certificate the TLS handshake must refuse: the call never reaches the
/// service (the client sees only a transport error; the server sends no
/// alert, it closes the connection), and the service's debug log gives the
/// verifier's reason for a bare TLS connection presenting it: `reason`
/// (e.g. `UnknownIssuer`, `Expired`, `BadSignature`). The service must run
/// with `SIGIL_LOG=info,sigil_auth=debug`.
#[track_caller]
pub fn refused_at_handshake<T: std::fmt::Debug>(
    auth: &Auth,
    cert: &Pem,
    r: Result<T, tonic::Status>,
    reason: &str,
) {
    let e = match r {
        Ok(v) => panic!("ACCEPTED a certificate the handshake must refuse: {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), tonic::Code::Unknown, "{e:?}");
    assert_eq!(e.message(), "transport error", "{e:?}");
    let (got, port) = handshake_alert(auth, cert);
    assert!(
        got.contains("UnexpectedEof"),
        "closed without an alert expected, got {got}"
    );
    let needle = format!("remote=127.0.0.1:{port}");
    let mut line = String::new();
    wait_until(
        "the handshake failure in the log",
        std::time::Duration::from_secs(10),
        || {
            // Whole lines only: the service may be writing this one still.
            let log = auth.log();
            let whole = log.rsplit_once('\n').map_or("", |(done, _)| done);
            line = whole
                .lines()
                .find(|l| l.contains("TLS handshake failed") && l.contains(&needle))
                .unwrap_or_default()
                .to_string();
            !line.is_empty()
        },
    );
    assert!(
        line.contains(reason),
        "{reason:?} not in the service's reason: {line}"
    );
}

/// What a TLS connection presenting `cert` gets once the server has looked
/// at it: the error, or "accepted"; and the connection's local port.
pub fn handshake_alert(auth: &Auth, cert: &Pem) -> (String, u16) {
    use std::io::{Read, Write};
    let c = sigil_agent::client::ClientCert {
        cert_pem: &cert.cert,
        key_pem: &cert.key,
    };
    let cfg = sigil_agent::client::tls_config(std::slice::from_ref(&auth.pin), Some(c))
        .expect("tls config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", auth.port)).expect("connect");
    let port = tcp.local_addr().expect("local addr").port();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        return (format!("{e:?}"), port);
    }
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(n) => (format!("accepted ({n} bytes)"), port),
        Err(e) => (format!("{e:?}"), port),
    }
}

/// Joins bot `bot` (made with `logins`) through a one-shot agent; returns
/// the agent's dirs and its stored credential.
pub fn joined(auth: &Auth, bot: &str) -> (AgentDirs, Pem) {
    let token = auth.bot(bot, &["ubuntu"]);
    let agent = AgentDirs::new();
    let o = agent.oneshot(auth, Some(&token));
    assert!(o.status.success(), "join failed:\n{}", text(&o));
    let cred = stored_credential(&agent);
    (agent, cred)
}

pub fn stored_credential(agent: &AgentDirs) -> Pem {
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.storage.join("credential.json")).expect("credential"),
    )
    .expect("json");
    Pem {
        cert: c["cert_pem"].as_str().expect("cert_pem").to_string(),
        key: c["key_pem"].as_str().expect("key_pem").to_string(),
    }
}

/// Events of `event_type` that name `bot`.
pub fn events_for(auth: &Auth, event_type: &str, bot: &str) -> usize {
    auth.audit(event_type)
        .iter()
        .filter(|e| e["fields"]["bot"] == bot)
        .count()
}

/// Instances of `bot` the server holds, with their generations.
pub fn generations(auth: &Auth, bot: &str) -> Vec<u64> {
    auth.instances()
        .iter()
        .filter(|i| i["spec"]["bot_name"] == bot || i["bot_name"] == bot)
        .map(|i| {
            i["spec"]["generation"]
                .as_u64()
                .or_else(|| i["generation"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

/// The service's client CA (certificate DER and its key), read from the
/// database as someone who stole it would; used to sign certificates whose
/// only flaw is the one under test.
pub struct ClientCa {
    pub cert_der: Vec<u8>,
    pub key: rcgen::KeyPair,
}

pub fn client_ca(auth: &Auth) -> ClientCa {
    use base64::Engine as _;
    let db = auth.data.join("sigil.db");
    let o = run(
        "sqlite3",
        &[
            db.to_str().expect("utf8"),
            "SELECT CAST(value AS TEXT) FROM kv WHERE key = '/cas/client'",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("stored CA");
    let der = base64::engine::general_purpose::STANDARD
        .decode(v["key"]["material"].as_str().expect("software key"))
        .expect("base64");
    let key = rcgen::KeyPair::try_from(der.as_slice()).expect("CA key");
    let cert_der = sigil_pki::pem_to_ders(v["cert_pem"].as_str().expect("pem"), "CERTIFICATE")
        .expect("CA pem")
        .remove(0);
    ClientCa { cert_der, key }
}

/// The identity JSON of a certificate's Sigil extension.
pub fn identity_of(cert_pem: &str) -> sigil_pki::ClientIdentity {
    let der = sigil_pki::pem_to_ders(cert_pem, "CERTIFICATE").expect("pem")[0].clone();
    sigil_pki::read_client_identity(&der).expect("identity").0
}

/// How a forged client certificate differs from a good one.
#[derive(Default)]
pub struct Forge {
    pub not_before: Option<time::OffsetDateTime>,
    pub not_after: Option<time::OffsetDateTime>,
    pub is_ca: bool,
    pub ekus: Option<Vec<rcgen::ExtendedKeyUsagePurpose>>,
    /// How many identity extensions (default one).
    pub identity_extensions: Option<usize>,
}

/// A leaf carrying `id` in Sigil's extension, signed by `issuer` (cert DER,
/// key), shaped by `f`. Returns the PEM of the leaf and its fresh key.
pub fn forge_leaf(
    issuer: (&[u8], &rcgen::KeyPair),
    id: &sigil_pki::ClientIdentity,
    f: Forge,
) -> Pem {
    let now = time::OffsetDateTime::now_utc();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::new(vec![]).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, id.bot.clone());
    p.subject_alt_names = vec![rcgen::SanType::URI(
        format!("sigil://{}/bot/{}/{}", id.cluster, id.bot, id.instance_id)
            .try_into()
            .expect("uri"),
    )];
    p.not_before = f.not_before.unwrap_or(now - time::Duration::minutes(1));
    p.not_after = f.not_after.unwrap_or(now + time::Duration::hours(1));
    if f.is_ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    p.extended_key_usages = f
        .ekus
        .unwrap_or(vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
    let json = serde_json::to_vec(id).expect("json");
    let mut value = vec![0x0c];
    der_len(&mut value, json.len());
    value.extend_from_slice(&json);
    let oid: Vec<u64> = sigil_pki::IDENTITY_EXTENSION_OID
        .split('.')
        .map(|a| a.parse().expect("arc"))
        .collect();
    p.custom_extensions = (0..f.identity_extensions.unwrap_or(1))
        .map(|_| rcgen::CustomExtension::from_oid_content(&oid, value.clone()))
        .collect();
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&issuer.0.to_vec().into(), issuer.1).expect("issuer");
    let cert = p.signed_by(&key, &issuer).expect("sign");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// An attacker's own CA whose subject copies `like` (a real CA's DER).
pub fn lookalike_ca(like: &[u8]) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (_, real) = x509_parser::parse_x509_certificate(like).expect("CA cert");
    let mut p = rcgen::CertificateParams::new(vec![]).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    for attr in real.subject().iter_attributes() {
        let value = attr.as_str().expect("printable").to_string();
        let t = match attr.attr_type().to_id_string().as_str() {
            "2.5.4.10" => rcgen::DnType::OrganizationName,
            "2.5.4.3" => rcgen::DnType::CommonName,
            other => rcgen::DnType::CustomDnType(
                other.split('.').map(|a| a.parse().expect("arc")).collect(),
            ),
        };
        p.distinguished_name.push(t, value);
    }
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-signed");
    (cert.der().to_vec(), key)
}
