//! End to end: SPIFFE workload identity. A real auth service and agent; the
//! agent's Workload API socket called by outside clients (the Rust `spiffe`
//! crate and py-spiffe), its SVID outputs checked with openssl, workload
//! attestation by uid, locks, revocation (CRL) and the public endpoints.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "kind: role
version: v1
metadata: {name: wl-role}
spec:
  allow:
    logins: [svc]
    workload_identity_labels: {env: [prod, agent]}
  options: {max_ttl: 2h}
";

/// Issued to workloads by uid (0 and 1000 only).
const PAYMENTS: &str = "kind: workload_identity
version: v1
metadata: {name: payments, labels: {env: prod}}
spec:
  spiffe:
    id: /svc/payments/{{ workload.unix.uid }}
    hint: payments
    x509: {dns_sans: [payments.internal], ttl: 1h}
    jwt: {ttl: 5m, extra_claims: {team: pay}}
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, in: [\"0\", \"1000\"]}]
";

/// Issued to the agent itself (outputs).
const SELF_ID: &str = "kind: workload_identity
version: v1
metadata: {name: svc-self, labels: {env: agent}}
spec:
  spiffe:
    id: /bot/{{ bot.name }}
";

struct Setup {
    auth: Auth,
    dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Setup {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("run/workload.sock")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("x509")
    }
    fn jwt_out(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }

    fn start() -> Setup {
        let auth = Auth::start();
        auth.create("role.yaml", ROLE);
        auth.create("payments.yaml", PAYMENTS);
        auth.create("self.yaml", SELF_ID);
        let out = auth.ok(&[
            "bots", "add", "wl-bot", "--roles", "wl-role", "--format", "json",
        ]);
        let token = serde_json::from_str::<serde_json::Value>(&out).expect("json")["token"]
            .as_str()
            .expect("token")
            .to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        // Workloads under other uids must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = Setup {
            auth,
            dir,
            agent: None,
        };
        let cfg = format!(
            "version: v1
auth_server: {addr}
ca_pins: [{pin}]
onboarding: {{join_method: token, token: {token}}}
storage: {{type: directory, path: {storage}}}
outputs:
  - type: workload-identity-x509
    selector: {{name: svc-self}}
    destination: {{type: directory, path: {x509}}}
  - type: workload-identity-jwt
    selector: {{name: svc-self}}
    audiences: [vault]
    destination: {{type: directory, path: {jwt}}}
services:
  - type: workload-api
    listen: unix://{sock}
    selector: {{labels: {{env: prod}}}}
",
            addr = s.auth.addr(),
            pin = s.auth.pin,
            storage = s.dir.path().join("storage").display(),
            x509 = s.out().display(),
            jwt = s.jwt_out().display(),
            sock = s.sock().display(),
        );
        let cfg_path = s.dir.path().join("agent.yaml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(s.dir.path().join("agent.log")).unwrap();
        let child = Command::new(sigil_bin())
            .args(["agent", "start", "--config"])
            .arg(&cfg_path)
            .env("SIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        s.agent = Some(child);
        let (sock, svid) = (s.sock(), s.out().join("svid.pem"));
        wait_until(
            "the Workload API socket and outputs",
            Duration::from_secs(60),
            || sock.exists() && svid.exists(),
        );
        std::fs::set_permissions(
            sock.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        s
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The Rust `spiffe` crate client, as `uid` (None: as we are).
    fn rust_client(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut c = Command::new(client_bin(uid.is_some()));
        c.arg("--socket").arg(self.sock()).args(args);
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        c.output().expect("run spiffe_client")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// The example client built next to this test; copied world-readable when it
/// must run under another uid (the build dir may sit under a 0700 home).
fn client_bin(other_uid: bool) -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let debug = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = debug.join("examples/spiffe_client");
    assert!(
        bin.exists(),
        "{} missing: cargo test builds examples",
        bin.display()
    );
    if !other_uid {
        return bin;
    }
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        // Copies left by earlier runs (statics are never dropped) whose
        // process is gone: remove them so /tmp does not fill up.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("sigil-client-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("sigil-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("spiffe_client");
        std::fs::copy(&bin, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    })
    .clone()
}

fn json_line(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "client failed:\n{}", text(o));
    let out = stdout(o);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn cert_serial(pem: &Path) -> String {
    let o = run(
        "openssl",
        &["x509", "-noout", "-serial", "-in", pem.to_str().unwrap()],
    );
    // openssl prints whole bytes; Sigil's form drops leading zero bytes only.
    let mut hex = stdout(&o)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    hex
}

#[test]
fn outputs_are_svids_openssl_accepts() {
    let s = Setup::start();
    let out = s.out();
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&out.join("svid.key")), 0o600);
    assert!(
        !out.join("svid-crl.pem").exists(),
        "no CRL while nothing is revoked"
    );
    let (bundle, svid) = (out.join("bundle.pem"), out.join("svid.pem"));
    for purpose in ["sslclient", "sslserver"] {
        let v = run(
            "openssl",
            &[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                bundle.to_str().unwrap(),
                svid.to_str().unwrap(),
            ],
        );
        assert!(
            v.status.success(),
            "openssl verify ({purpose}):\n{}",
            text(&v)
        );
    }
    let t = stdout(&run(
        "openssl",
        &["x509", "-noout", "-text", "-in", svid.to_str().unwrap()],
    ));
    assert!(t.contains("URI:spiffe://example.test/bot/wl-bot"), "{t}");
    assert_eq!(t.matches("URI:").count(), 1, "exactly one URI SAN:\n{t}");
    assert!(t.contains("CA:FALSE"), "{t}");

    // The JWT-SVID output: ES256 with kid, typ JWT, integer exp, the audience.
    let jwt = std::fs::read_to_string(s.jwt_out().join("jwt_svid")).expect("jwt_svid");
    assert_eq!(mode(&s.jwt_out().join("jwt_svid")), 0o600);
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| -> serde_json::Value {
        let o = Command::new("python3")
            .args(["-c", "import sys,base64;s=sys.argv[1];print(base64.urlsafe_b64decode(s+'='*(-len(s)%4)).decode())", p])
            .output()
            .unwrap();
        serde_json::from_str(&stdout(&o)).expect("json part")
    };
    let (h, c) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(h["alg"], "ES256");
    assert_eq!(h["typ"], "JWT");
    assert!(h["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(c["sub"], "spiffe://example.test/bot/wl-bot");
    assert_eq!(c["aud"], "vault");
    assert!(c["exp"].is_u64() && c["iat"].is_u64(), "{c}");

    // Every issuance is audited with the SPIFFE ID and serial.
    let ev = s.auth.audit("workload_identity.issued");
    let serial = cert_serial(&svid);
    assert!(
        ev.iter().any(
            |e| e["fields"]["spiffe_id"] == "spiffe://example.test/bot/wl-bot"
                && e["fields"]["serial"].as_str() == Some(serial.as_str())
        ),
        "no audit event for serial {serial}: {ev:?}"
    );
}

#[test]
fn rust_client_gets_identities_by_uid_and_sees_rotation() {
    let s = Setup::start();
    let root = json_line(&s.rust_client(None, &["x509"]));
    assert_eq!(
        root["spiffe_id"], "spiffe://example.test/svc/payments/0",
        "{root}"
    );
    assert!(
        root["bundle_trust_domains"]
            .to_string()
            .contains("example.test")
    );

    let other = json_line(&s.rust_client(Some(1000), &["x509"]));
    assert_eq!(
        other["spiffe_id"], "spiffe://example.test/svc/payments/1000",
        "{other}"
    );

    // A uid that matches no rule gets PermissionDenied.
    let denied = s.rust_client(Some(1001), &["x509"]);
    assert_eq!(
        denied.status.code(),
        Some(3),
        "{}\nagent:\n{}",
        text(&denied),
        s.agent_log()
    );
    // ...without the policy: the rules and the reason go to the agent's log.
    let said = text(&denied);
    assert!(said.contains("no workload identity is granted"), "{said}");
    for secret in ["workload.unix.uid", "1001", "rule", "payments"] {
        assert!(
            !said.contains(secret),
            "{secret:?} leaked to the workload: {said}"
        );
    }
    wait_until(
        "the reason in the agent log",
        Duration::from_secs(10),
        || s.agent_log().contains("no allow rule matched"),
    );

    // JWT-SVID fetched and validated by the library against the JWT bundle.
    let tok = s.rust_client(None, &["jwt", "payments-api"]);
    assert!(tok.status.success(), "{}", text(&tok));
    let token = stdout(&tok).trim().to_string();
    let v = json_line(&s.rust_client(None, &["validate", "payments-api", &token]));
    assert_eq!(v["spiffe_id"], "spiffe://example.test/svc/payments/0");

    // A policy change re-issues; the open stream sees the new SVID.
    let mut watch = Command::new(client_bin(false))
        .arg("--socket")
        .arg(s.sock())
        .args(["watch", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.auth.create(
        "extra.yaml",
        "kind: workload_identity\nversion: v1\nmetadata: {name: extra, labels: {env: other}}\nspec:\n  spiffe: {id: /extra}\n",
    );
    let start = Instant::now();
    loop {
        if watch.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watch.kill();
    let o = watch.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "expected two updates:\n{}", text(&o));
    assert_ne!(
        lines[0]["serial"], lines[1]["serial"],
        "rotation must bring a new SVID"
    );
}

#[test]
fn py_spiffe_fetches_and_validates() {
    let s = Setup::start();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pyspiffe_client.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(s.sock())
        .output()
        .expect("python3");
    let v = json_line(&o);
    assert_eq!(
        v["x509_spiffe_id"], "spiffe://example.test/svc/payments/0",
        "{v}"
    );
    assert_eq!(
        v["jwt_spiffe_id"], "spiffe://example.test/svc/payments/0",
        "{v}"
    );
    assert_eq!(v["jwt_validated"], true);
    assert!(
        v["bundle_trust_domains"]
            .to_string()
            .contains("example.test"),
        "{v}"
    );
}

#[test]
fn missing_security_header_is_invalid_argument() {
    let s = Setup::start();
    // A raw gRPC call (grpcio) without `workload.spiffe.io: true`.
    let py = "import grpc,sys
ch = grpc.insecure_channel('unix:' + sys.argv[1])
call = ch.unary_stream('/SpiffeWorkloadAPI/FetchX509SVID', request_serializer=lambda x: x, response_deserializer=lambda b: b)
try:
    for _ in call(b''):
        pass
    print('OK')
except grpc.RpcError as e:
    print(e.code().name)
";
    let o = Command::new("python3")
        .args(["-c", py])
        .arg(s.sock())
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "INVALID_ARGUMENT", "{}", text(&o));
}

#[test]
fn locks_stop_serving() {
    let s = Setup::start();
    assert!(s.rust_client(None, &["x509"]).status.success());
    // A lock on one SPIFFE ID refuses that identity only.
    s.auth.ok(&[
        "locks",
        "add",
        "--spiffe-id",
        "spiffe://example.test/svc/payments/0",
        "--message",
        "rotate",
    ]);
    wait_until(
        "the SPIFFE ID lock to reach the agent",
        Duration::from_secs(10),
        || s.rust_client(None, &["x509"]).status.code() == Some(3),
    );
    assert!(s.rust_client(Some(1000), &["x509"]).status.success());

    // A lock on the bot ends open streams with PermissionDenied.
    let mut watch = Command::new(client_bin(true))
        .arg("--socket")
        .arg(s.sock())
        .args(["watch", "100"])
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the stream should stay open"
    );
    let locked_at = Instant::now();
    s.auth.ok(&[
        "locks",
        "add",
        "--bot",
        "wl-bot",
        "--message",
        "compromised",
    ]);
    let status = loop {
        if let Some(st) = watch.try_wait().unwrap() {
            break st;
        }
        assert!(
            locked_at.elapsed() < Duration::from_secs(15),
            "the stream did not end after the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("stream ended {:?} after the lock", locked_at.elapsed());
    let o = watch.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(3), "{}", text(&o));
    assert_eq!(s.rust_client(Some(1000), &["x509"]).status.code(), Some(3));
}

#[test]
fn revocation_reaches_the_crl_and_the_svid_is_replaced() {
    let s = Setup::start();
    let out = s.out();
    let old = s.dir.path().join("old-svid.pem");
    std::fs::copy(out.join("svid.pem"), &old).unwrap();
    let serial = cert_serial(&old);
    s.auth.ok(&[
        "workload-identity",
        "revocations",
        "add",
        "--serial",
        &serial,
        "--reason",
        "key leaked",
    ]);
    let listed = s.auth.ok(&["workload-identity", "revocations", "ls"]);
    assert!(listed.contains(&serial), "{listed}");
    let crl = out.join("svid-crl.pem");
    let svid = out.join("svid.pem");
    wait_until(
        "the CRL and a replacement SVID",
        Duration::from_secs(10),
        || crl.exists() && svid.exists() && cert_serial(&svid) != serial,
    );
    let verify = |cert: &Path| {
        run(
            "openssl",
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                crl.to_str().unwrap(),
                "-CAfile",
                out.join("bundle.pem").to_str().unwrap(),
                cert.to_str().unwrap(),
            ],
        )
    };
    let v = verify(&old);
    assert!(
        !v.status.success(),
        "the revoked SVID must fail:\n{}",
        text(&v)
    );
    assert!(text(&v).contains("revoked"), "{}", text(&v));
    let v = verify(&svid);
    assert!(
        v.status.success(),
        "the replacement must pass:\n{}",
        text(&v)
    );
    s.auth
        .ok(&["workload-identity", "revocations", "rm", &serial]);
    wait_until("svid-crl.pem removed", Duration::from_secs(10), || {
        !crl.exists()
    });
}

#[test]
fn public_bundle_and_oidc_endpoints() {
    let auth = Auth::start();
    let base = format!("https://127.0.0.1:{}", auth.public_port);
    let get = |path: &str| -> serde_json::Value {
        let o = run("curl", &["-sfk", &format!("{base}{path}")]);
        assert!(o.status.success(), "GET {path}:\n{}", text(&o));
        serde_json::from_str(&stdout(&o)).expect("json")
    };
    let b = get("/.well-known/spiffe-bundle");
    assert!(b["spiffe_sequence"].as_u64().is_some(), "{b}");
    assert!(b["spiffe_refresh_hint"].as_u64().is_some(), "{b}");
    let keys = b["keys"].as_array().expect("keys");
    assert!(
        keys.iter()
            .any(|k| k["use"] == "x509-svid" && k["x5c"].is_array()),
        "{b}"
    );
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string()),
        "{b}"
    );
    let oidc = get("/.well-known/openid-configuration");
    assert_eq!(oidc["issuer"], base);
    assert_eq!(oidc["jwks_uri"], format!("{base}/jwks.json"));
    let jwks = get("/jwks.json");
    let k = &jwks["keys"][0];
    assert_eq!(k["kty"], "EC");
    assert!(k["kid"].is_string() && k.get("use").is_none(), "{jwks}");
}

#[test]
fn admin_test_and_issue() {
    let auth = Auth::start();
    auth.create("payments.yaml", PAYMENTS);
    let ok = auth.ok(&[
        "workload-identity",
        "test",
        "payments",
        "--attr",
        "workload.unix.uid=1000",
    ]);
    assert!(
        ok.contains("spiffe://example.test/svc/payments/1000"),
        "{ok}"
    );
    let denied = auth.admin(&[
        "workload-identity",
        "test",
        "payments",
        "--attr",
        "workload.unix.uid=5",
    ]);
    assert_eq!(denied.status.code(), Some(3), "{}", text(&denied));
    assert!(text(&denied).contains("denied"), "{}", text(&denied));
    // A condition on an attribute that is absent never holds.
    let missing = auth.admin(&[
        "workload-identity",
        "test",
        "payments",
        "--attr",
        "workload.unix.gid=0",
    ]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));

    let out = auth.dir.path().join("minted");
    auth.ok(&[
        "workload-identity",
        "issue",
        "payments",
        "--out",
        out.to_str().unwrap(),
        "--attr",
        "workload.unix.uid=1000",
        "--jwt-audience",
        "aud1",
    ]);
    let v = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            out.join("bundle.pem").to_str().unwrap(),
            out.join("svid.pem").to_str().unwrap(),
        ],
    );
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(mode(&out.join("svid.key")), 0o600);
    assert!(out.join("jwt_svid").exists());
    // Templated values are validated: a path separator is refused, not issued.
    auth.create("self.yaml", SELF_ID);
    let bad = auth.admin(&[
        "workload-identity",
        "issue",
        "svc-self",
        "--out",
        out.to_str().unwrap(),
        "--attr",
        "bot.name=../x",
    ]);
    assert!(!bad.status.success(), "{}", text(&bad));
}

/// Envoy's SDS client is not installable here; this drives the same gRPC
/// service (Envoy's packages, messages and type URLs) the way Envoy does:
/// subscribe to `default` + `ROOTCA`, ACK, and expect a push on rotation.
#[test]
fn envoy_sds_serves_certificates_and_pushes_rotations() {
    use prost::Message;
    use sigil_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use sigil_proto::envoy::service::discovery::v3::DiscoveryRequest;
    use sigil_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

    let s = Setup::start();
    let sock = s.sock();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .expect("connect");
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let request = |nonce: &str, version: &str| DiscoveryRequest {
            resource_names: vec!["default".into(), "ROOTCA".into()],
            type_url: sigil_proto::ENVOY_SECRET_TYPE_URL.into(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            ..Default::default()
        };
        tx.send(request("", "")).await.unwrap();
        let mut stream = client
            .stream_secrets(tokio_stream_of(rx))
            .await
            .expect("StreamSecrets")
            .into_inner();
        let first = stream.message().await.expect("recv").expect("a response");
        assert_eq!(first.type_url, sigil_proto::ENVOY_SECRET_TYPE_URL);
        let secrets: Vec<Secret> = first
            .resources
            .iter()
            .map(|a| {
                assert_eq!(a.type_url, sigil_proto::ENVOY_SECRET_TYPE_URL);
                Secret::decode(a.value.as_slice()).expect("Secret")
            })
            .collect();
        assert_eq!(secrets.len(), 2, "{secrets:?}");
        let cert_serial = |s: &Secret| match &s.r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                let pem = match t.certificate_chain.as_ref().and_then(|d| d.specifier.clone()) {
                    Some(sigil_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(b)) => b,
                    other => panic!("inline PEM expected, got {other:?}"),
                };
                assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
                match t.private_key.as_ref().and_then(|d| d.specifier.clone()) {
                    Some(sigil_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(k)) => {
                        assert!(String::from_utf8_lossy(&k).contains("BEGIN PRIVATE KEY"));
                    }
                    other => panic!("inline private key expected, got {other:?}"),
                }
                pem
            }
            other => panic!("default must be a TLS certificate, got {other:?}"),
        };
        let default = secrets.iter().find(|s| s.name == "default").expect("default");
        let first_pem = cert_serial(default);
        let root = secrets.iter().find(|s| s.name == "ROOTCA").expect("ROOTCA");
        assert!(matches!(root.r#type, Some(secret::Type::ValidationContext(_))), "{root:?}");
        // ACK, then rotate (a policy change re-issues) and expect a push.
        tx.send(request(&first.nonce, &first.version_info)).await.unwrap();
        // Keep the setup (auth + agent) alive until the end of the test.
        let _setup = tokio::task::spawn_blocking(move || {
            s.auth.create(
                "extra.yaml",
                "kind: workload_identity\nversion: v1\nmetadata: {name: extra, labels: {env: other}}\nspec:\n  spiffe: {id: /extra}\n",
            );
            s
        })
        .await
        .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a push after rotation")
            .expect("recv")
            .expect("a response");
        assert_ne!(next.version_info, first.version_info);
        let secrets: Vec<Secret> = next
            .resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).expect("Secret"))
            .collect();
        let default = secrets.iter().find(|s| s.name == "default").expect("default");
        assert_ne!(cert_serial(default), first_pem, "the pushed certificate must be new");
    });
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Waits until the agent closes `s` (EOF or reset); false if still open after `limit`.
fn closed_by_agent(s: &mut std::os::unix::net::UnixStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_workload_clients_are_cut_off() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let s = Setup::start();
    // Connects and says nothing.
    let mut silent = UnixStream::connect(s.sock()).unwrap();
    // Sends half the HTTP/2 preface and stops.
    let mut partial = UnixStream::connect(s.sock()).unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    assert!(
        closed_by_agent(&mut silent, Duration::from_secs(90)),
        "a silent client kept its connection"
    );
    assert!(
        closed_by_agent(&mut partial, Duration::from_secs(90)),
        "a partial preface kept its connection"
    );
    // Real clients are still served.
    let ok = s.rust_client(None, &["x509"]);
    assert!(ok.status.success(), "{}", text(&ok));
}
