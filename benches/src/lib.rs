//! Shared harness for the load generators in `benches/*.rs` (see README.md):
//! knobs from the environment, the `sigil` binary under test, free ports and
//! CPU accounting.

pub mod cfssl;
pub mod open_loop;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{JoinClientMessage, JoinInit, RenewRequest, StatusRequest};
use tokio::sync::Mutex;

/// A joined bot instance's current credential.
pub struct Instance {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A numeric knob from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SIGIL_BIN`, else `sigil` next to this benchmark in its own target dir
/// (`target/release/deps/workload_api-*` → `target/release/sigil`), else
/// `$CARGO_TARGET_DIR/release/sigil` or the workspace's `target/release/sigil`.
pub fn sigil_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SIGIL_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.exists(), "SIGIL_BIN={} not found", p.display());
        return Ok(p);
    }
    let mut tried = Vec::new();
    if let Some(release) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
    {
        tried.push(release.join("sigil"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    tried.push(target.join("release/sigil"));
    tried
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!(
                "sigil not found at {tried:?}: run `cargo build --release -p sigil-cli` with the same CARGO_TARGET_DIR first, or set SIGIL_BIN"
            )
        })
}

/// User + system CPU seconds of another process, from /proc.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// User + system CPU seconds of this process (the load generator).
pub fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Run `concurrency` workers, each calling `job` until it returns None.
pub async fn run_workers<F, Fut>(concurrency: usize, job: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<Duration>>> + Send,
{
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut lats = Vec::new();
                while let Some(l) = job().await? {
                    lats.push(l);
                }
                anyhow::Ok(lats)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok(all)
}

pub async fn renew(
    mut c: AuthServiceClient<tonic::transport::Channel>,
    inst: &Mutex<Instance>,
) -> anyhow::Result<()> {
    let mut i = inst.lock().await;
    let next = TlsKeyPair::generate()?;
    let r = c
        .renew(RenewRequest {
            public_key_spki: next.spki_der(),
            ttl_seconds: 3600,
            heartbeat: None,
        })
        .await
        .context("renew")?
        .into_inner();
    i.cert_pem = r.tls_cert_pem;
    i.key_pem = next.to_pkcs8_pem();
    Ok(())
}

pub async fn join(
    c: &mut AuthServiceClient<tonic::transport::Channel>,
    token: &str,
) -> anyhow::Result<Instance> {
    let key = TlsKeyPair::generate()?;
    Ok(Instance {
        cert_pem: join_with_key(c, token, key.spki_der()).await?,
        key_pem: key.to_pkcs8_pem(),
    })
}

/// A `token` join for the key with this SPKI; returns the certificate PEM.
pub async fn join_with_key(
    c: &mut AuthServiceClient<tonic::transport::Channel>,
    token: &str,
    public_key_spki: Vec<u8>,
) -> anyhow::Result<String> {
    let init = JoinInit {
        join_method: "token".into(),
        token: token.into(),
        public_key_spki,
        ttl_seconds: 3600,
        ..Default::default()
    };
    let msgs = tokio_stream::iter(vec![JoinClientMessage {
        message: Some(ClientMsg::Init(init)),
    }]);
    let mut s = c.join(msgs).await.context("join")?.into_inner();
    while let Some(m) = s.message().await? {
        if let Some(ServerMsg::Result(r)) = m.message {
            return Ok(r.tls_cert_pem);
        }
    }
    anyhow::bail!("join ended without a result")
}

/// Creates role `name` (allowing login `name`) through the admin API; returns
/// the cluster's CA pin, which agents and load generators dial with.
pub async fn bench_role(
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
    name: &str,
) -> anyhow::Result<String> {
    let role = serde_json::json!({"kind":"role","version":"v1","metadata":{"name":name},"spec":{"allow":{"logins":[name]}}});
    admin
        .create_resource(sigil_proto::v1::CreateResourceRequest {
            json: role.to_string(),
            upsert: true,
        })
        .await?;
    Ok(admin
        .status(StatusRequest::default())
        .await?
        .into_inner()
        .ca_pin)
}

pub async fn admin_client(
    sock: std::path::PathBuf,
) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await?;
    Ok(AdminServiceClient::new(ch))
}

/// One running `sigil auth start`.
pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    pub addr: String,
}

impl Server {
    pub fn start(
        dir: &Path,
        name: &str,
        store: Option<&str>,
        key: &Path,
    ) -> anyhow::Result<Server> {
        let data = dir.join(name);
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut c = Command::new(sigil_binary()?);
        c.args(["auth", "start", "--data-dir"])
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--public-listen",
                "127.0.0.1:0",
            ])
            .args(["--cluster-name", "bench.test", "--audit-key"])
            .arg(key)
            .env("SIGIL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = store {
            c.args(["--store", url]);
        }
        Ok(Server {
            child: c.spawn().context("starting sigil")?,
            data,
            addr: format!("127.0.0.1:{port}"),
        })
    }

    /// [`Server::start`] with the audit key in `dir` (the same on every start).
    pub fn start_on(dir: &Path, name: &str, store: Option<&str>) -> anyhow::Result<Server> {
        Server::start(dir, name, store, &dir.join("audit-key.json"))
    }

    /// Waits until the admin API answers; returns how long that took from `since`.
    pub async fn ready(&self, since: Instant) -> anyhow::Result<Duration> {
        let sock = self.data.join("admin.sock");
        loop {
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(300),
                "{} did not start",
                self.addr
            );
            if sock.exists()
                && let Ok(mut a) = admin_client(sock.clone()).await
                && a.status(StatusRequest::default()).await.is_ok()
            {
                return Ok(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn cpu(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
