//! SPIFFE IDs and the Workload API: IDs with dot segments, percent-encoding,
//! bad trust domains, over-long paths; template attributes that would inject
//! `/` or `..` into an issued ID; Workload API calls without the security
//! header and floods of streams. Refused with the reason; nothing issued.

use crate::common::*;
use crate::harness::*;
use sigil_proto::v1::{AdminIssueWorkloadIdentityRequest, CreateResourceRequest};
use sigil_proto::workload::X509svidRequest;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tonic::Code;

static AUTH: Slot = Slot::new(None);
static SOCKET: OnceLock<PathBuf> = OnceLock::new();
/// The template cases count `workload_identity.issued` events: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `by-user`: `/svc/{{ workload.unix.user }}`, issued when the attribute
/// `workload.unix.user` is present (the admin API supplies it directly).
const BY_USER: &str = "kind: workload_identity\nversion: v1\nmetadata: {name: by-user, labels: {env: prod}}\nspec:\n  spiffe:\n    id: /svc/{{ workload.unix.user }}\n";

/// `by-uid`: what the Workload API serves to uid 0 (this test process).
const BY_UID: &str = "kind: workload_identity\nversion: v1\nmetadata: {name: by-uid, labels: {env: prod}}\nspec:\n  spiffe:\n    id: /uid/{{ workload.unix.uid }}\n  rules:\n    allow:\n      - conditions: [{attribute: workload.unix.uid, in: [\"0\"]}]\n";

const ROLE: &str = "kind: role\nversion: v1\nmetadata: {name: wl-role}\nspec:\n  allow:\n    logins: [svc]\n    workload_identity_labels: {env: [prod]}\n";

fn auth() -> Arc<Auth> {
    shared(&AUTH, || {
        let a = Auth::start();
        a.create("role.yaml", ROLE);
        a.create("by-user.yaml", BY_USER);
        a.create("by-uid.yaml", BY_UID);
        a
    })
}

/// `doc` (JSON) must be refused by CreateResource with `says`, and not stored.
#[track_caller]
fn create_refused(doc: String, says: &str) {
    let auth = auth();
    let r = rt().block_on(async {
        admin_socket(&auth)
            .await
            .create_resource(CreateResourceRequest {
                json: doc,
                upsert: false,
            })
            .await
    });
    refused(r, Code::InvalidArgument, says);
    let o = auth.admin(&["get", "workload_identity/evil"]);
    assert!(!o.status.success(), "stored: {}", text(&o));
}

fn wid(id: &str) -> String {
    serde_json::json!({
        "kind": "workload_identity", "version": "v1",
        "metadata": {"name": "evil"},
        "spec": {"spiffe": {"id": id}},
    })
    .to_string()
}

/// attack: SPIFFE | ID path with a `..` segment (`/svc/../admin`) | InvalidArgument "spiffe.id"
#[test]
fn id_with_dot_dot() {
    create_refused(wid("/svc/../admin"), "spiffe.id");
}

/// attack: SPIFFE | ID path with a `.` segment (`/svc/./admin`) | InvalidArgument "spiffe.id"
#[test]
fn id_with_single_dot() {
    create_refused(wid("/svc/./admin"), "spiffe.id");
}

/// attack: SPIFFE | percent-encoded dot segment (`/svc/%2e%2e/admin`) | InvalidArgument "spiffe.id"
#[test]
fn id_percent_encoded() {
    create_refused(wid("/svc/%2e%2e/admin"), "spiffe.id");
}

/// attack: SPIFFE | an encoded slash inside a segment (`/svc/a%2Fb`) | InvalidArgument "spiffe.id"
#[test]
fn id_encoded_slash() {
    create_refused(wid("/svc/a%2Fb"), "spiffe.id");
}

/// attack: SPIFFE | an empty segment (`/svc//admin`) | InvalidArgument "spiffe.id"
#[test]
fn id_empty_segment() {
    create_refused(wid("/svc//admin"), "spiffe.id");
}

/// attack: SPIFFE | a trailing slash (`/svc/`) | InvalidArgument "spiffe.id"
#[test]
fn id_trailing_slash() {
    create_refused(wid("/svc/"), "spiffe.id");
}

/// attack: SPIFFE | a full ID of another trust domain in upper case (`spiffe://EXAMPLE.TEST/x`) | InvalidArgument "spiffe.id"
#[test]
fn id_uppercase_trust_domain() {
    create_refused(wid("spiffe://EXAMPLE.TEST/x"), "spiffe.id");
}

/// attack: SPIFFE | an over-long path (3 000 bytes) | InvalidArgument "spiffe.id"
#[test]
fn id_over_long() {
    create_refused(
        wid(&format!("/{}", "a/".repeat(1500).trim_end_matches('/'))),
        "spiffe.id",
    );
}

/// attack: SPIFFE | a template naming an attribute namespace that does not exist (`{{ evil.x }}`) | InvalidArgument "spiffe.id"
#[test]
fn template_unknown_namespace() {
    create_refused(wid("/svc/{{ evil.x }}"), "spiffe.id");
}

/// attack: SPIFFE | a federation with an upper-case trust domain name | InvalidArgument "invalid trust domain"
#[test]
fn federation_uppercase_trust_domain() {
    let auth = auth();
    let doc = r#"{"kind":"spiffe_federation","version":"v1","metadata":{"name":"EVIL.TEST"},"spec":{"bundle_source":{"https_web":{"bundle_endpoint_url":"https://127.0.0.1:1/b"}}}}"#;
    let r = rt().block_on(async {
        admin_socket(&auth)
            .await
            .create_resource(CreateResourceRequest {
                json: doc.into(),
                upsert: false,
            })
            .await
    });
    refused(
        r,
        Code::InvalidArgument,
        "invalid trust domain in \"EVIL.TEST\"",
    );
}

/// Issues `by-user` with `workload.unix.user = user` on the admin API.
fn issue_by_user(
    auth: &Auth,
    user: &str,
) -> Result<sigil_proto::v1::IssueWorkloadIdentitiesResponse, tonic::Status> {
    rt().block_on(async {
        admin_socket(auth)
            .await
            .issue_workload_identity(AdminIssueWorkloadIdentityRequest {
                name: "by-user".into(),
                attributes: [("workload.unix.user".to_string(), user.to_string())].into(),
                x509_public_key_spki: sigil_pki::TlsKeyPair::generate().unwrap().spki_der(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    })
}

/// `user` as the template's attribute: the answer is a denial saying
/// `says`, no SVID, nothing audited as issued.
#[track_caller]
fn template_refuses(user: &str, says: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let auth = auth();
    let issued = auth.audit("workload_identity.issued").len();
    let r = issue_by_user(&auth, user).expect("an answer");
    assert!(
        r.x509_svids.is_empty() && r.jwt_svids.is_empty(),
        "ACCEPTED: {r:?}"
    );
    assert_eq!(r.denials.len(), 1, "{r:?}");
    assert!(r.denials[0].reason.contains(says), "{says:?} not in {r:?}");
    assert_eq!(auth.audit("workload_identity.issued").len(), issued);
}

/// Control, not a case: a plain attribute value is issued.
#[test]
fn template_control_issues() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let r = issue_by_user(&auth(), "alice").expect("issued");
    assert_eq!(r.x509_svids.len(), 1, "{r:?}");
}

/// attack: SPIFFE | template attribute injecting `/` (`workload.unix.user = a/admin`) | denied: "contains '/', which would add path segments"; no SVID
#[test]
fn template_attribute_injects_a_slash() {
    template_refuses("a/admin", "contains '/', which would add path segments");
}

/// attack: SPIFFE | template attribute `..` (climbing out of `/svc/`) | denied: "'.' and '..' are not allowed as path segments"; no SVID
#[test]
fn template_attribute_is_dot_dot() {
    template_refuses("..", "'.' and '..' are not allowed as path segments");
}

/// attack: SPIFFE | template attribute percent-encoding a slash (`a%2Fadmin`) | denied: "character '%' is not allowed in a SPIFFE ID path"; no SVID
#[test]
fn template_attribute_percent_encoded() {
    template_refuses(
        "a%2Fadmin",
        "character '%' is not allowed in a SPIFFE ID path",
    );
}

/// attack: SPIFFE | template attribute empty (an empty segment) | denied: "an empty value would leave an empty path segment"; no SVID
#[test]
fn template_attribute_empty() {
    template_refuses("", "an empty value would leave an empty path segment");
}

/// attack: SPIFFE | template attribute with a NUL byte | denied: "is not allowed in a SPIFFE ID path"; no SVID
#[test]
fn template_attribute_with_nul() {
    template_refuses("a\0b", "is not allowed in a SPIFFE ID path");
}

/// The shared agent's Workload API socket (uid 0 gets `by-uid`).
fn socket() -> PathBuf {
    SOCKET
        .get_or_init(|| {
            let auth = auth();
            let out = auth.ok(&["bots", "add", "wl-bot", "--roles", "wl-role", "--format", "json"]);
            let token = serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string();
            let dir = auth.dir.path().join("agent");
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("workload.sock");
            let cfg = format!(
                "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: token, token: {token}}}\nstorage: {{type: directory, path: {}}}\nservices:\n  - type: workload-api\n    listen: unix://{}\n    selector: {{labels: {{env: prod}}}}\n",
                auth.addr(),
                auth.pin,
                dir.join("storage").display(),
                sock.display()
            );
            let cfg_path = dir.join("agent.yaml");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.join("agent.log")).unwrap();
            let child = std::process::Command::new(sigil_bin())
                .args(["agent", "start", "--config"])
                .arg(&cfg_path)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent");
            keep_child(child);
            wait_until("the Workload API socket", Duration::from_secs(60), || sock.exists());
            sock
        })
        .clone()
}

async fn workload_client(sock: PathBuf) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
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
    SpiffeWorkloadApiClient::new(ch)
}

/// FetchX509SVID's first answer, with the security header set to `header`.
async fn fetch_first(
    c: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>,
    header: Option<&str>,
) -> Result<usize, tonic::Status> {
    let mut req = tonic::Request::new(X509svidRequest {});
    if let Some(h) = header {
        req.metadata_mut()
            .insert("workload.spiffe.io", h.parse().expect("ascii"));
    }
    let mut s = c.fetch_x509svid(req).await?.into_inner();
    let first = s
        .message()
        .await?
        .ok_or_else(|| tonic::Status::internal("no message"))?;
    Ok(first.svids.len())
}

/// attack: SPIFFE | Workload API call without the `workload.spiffe.io` header | InvalidArgument "workload.spiffe.io"; control call with it gets an SVID
#[test]
fn workload_api_without_the_header() {
    let sock = socket();
    rt().block_on(async {
        let mut c = workload_client(sock).await;
        refused(
            fetch_first(&mut c, None).await,
            Code::InvalidArgument,
            "workload.spiffe.io",
        );
        assert!(fetch_first(&mut c, Some("true")).await.expect("control") > 0);
    });
}

/// attack: SPIFFE | Workload API header present but not `true` (`workload.spiffe.io: yes`) | InvalidArgument "workload.spiffe.io"
#[test]
fn workload_api_header_not_true() {
    let sock = socket();
    rt().block_on(async {
        let mut c = workload_client(sock).await;
        refused(
            fetch_first(&mut c, Some("yes")).await,
            Code::InvalidArgument,
            "workload.spiffe.io",
        );
    });
}

/// attack: SPIFFE | 1 000 concurrent FetchX509SVID streams on one connection | the agent stays up and a fresh client still gets its SVID
#[test]
fn workload_api_stream_flood() {
    let sock = socket();
    rt().block_on(async {
        let mut c = workload_client(sock.clone()).await;
        let want = fetch_first(&mut c, Some("true")).await.expect("first");
        assert!(want > 0);
        let mut held = Vec::new();
        for _ in 0..1000 {
            let mut req = tonic::Request::new(X509svidRequest {});
            req.metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            let mut c2 = c.clone();
            held.push(tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(20), c2.fetch_x509svid(req)).await;
                match r {
                    Ok(Ok(s)) => Some(s.into_inner()),
                    _ => None,
                }
            }));
        }
        let mut streams = Vec::new();
        for h in held {
            streams.push(h.await.expect("task"));
        }
        let mut fresh = workload_client(sock).await;
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            fetch_first(&mut fresh, Some("true")),
        )
        .await
        .expect("a fresh client is answered while the flood is held")
        .expect("SVID");
        assert_eq!(n, want);
        drop(streams);
    });
}

/// Receives one file descriptor sent with SCM_RIGHTS on `sock`.
fn receive_fd(sock: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u8; 64];
    // SAFETY: msghdr is plain data; every pointer in it outlives recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = space.len() as _;
    // SAFETY: a valid socket and a msghdr set up above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled the control buffer; walk it with its macros.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null(), "no file descriptor received");
        assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

/// A process connects to the Workload API socket, hands the connection to
/// this one and exits: calls on that connection come from a pid whose
/// process is gone (and could be reused by anyone).
const HAND_OVER: &str = "import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b'x'], [s.fileno()])
";

/// attack: SPIFFE | spoofed peer: the process that connected to the Workload API exits (its pid free for reuse) and another uses the connection | PermissionDenied "the peer process exited or its pid was reused"; no SVID
#[test]
fn workload_api_connection_of_an_exited_process() {
    use std::os::fd::AsRawFd;
    let sock = socket();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    // The child inherits its end.
    // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
    unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) };
    let o = std::process::Command::new("python3")
        .args(["-c", HAND_OVER])
        .arg(&sock)
        .arg(theirs.as_raw_fd().to_string())
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    drop(theirs);
    let conn = std::os::unix::net::UnixStream::from(receive_fd(&ours));
    conn.set_nonblocking(true).expect("nonblocking");
    rt().block_on(async {
        let conn = std::sync::Mutex::new(Some(conn));
        let ch = tonic::transport::Endpoint::try_from("http://localhost")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let c = conn.lock().unwrap().take();
                async move {
                    let c = c.ok_or_else(|| std::io::Error::other("one connection only"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::from_std(c)?,
                    ))
                }
            }))
            .await
            .expect("connect");
        let mut c = SpiffeWorkloadApiClient::new(ch);
        refused(
            fetch_first(&mut c, Some("true")).await,
            Code::PermissionDenied,
            "the peer process exited or its pid was reused",
        );
    });
}
