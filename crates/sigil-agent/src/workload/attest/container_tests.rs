//! Container id parsing and the engine lookup against a fixture API server.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;

/// A cgroup file and the (id, delegated uid) expected from it.
type Case<'a> = (String, Option<(&'a str, Option<u32>)>);

const ID: &str = "3f1c0e8b2a7d4c6e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

#[test]
fn docker_ids_from_cgroup_lines() {
    let id = ID;
    let cases: Vec<Case<'_>> = vec![
        (
            format!("0::/system.slice/docker-{id}.scope\n"),
            Some((id, None)),
        ),
        (format!("0::/docker/{id}\n"), Some((id, None))),
        (
            format!("12:memory:/docker/{id}\n1:name=systemd:/docker/{id}\n"),
            Some((id, None)),
        ),
        (
            format!("0::/system.slice/docker-{id}.scope/init\n"),
            Some((id, None)),
        ),
        (
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{id}.scope\n"
            ),
            Some((id, Some(1000))),
        ),
        (format!("0::/kubepods/besteffort/pod1234/{id}\n"), None),
        (format!("0::/machine.slice/libpod-{id}.scope\n"), None),
        (format!("0::/docker/{}\n", &id[..63]), None),
        (format!("0::/docker/{}\n", id.to_uppercase()), None),
        ("0::/\n".to_string(), None),
        ("0::/system.slice/docker.service\n".to_string(), None),
    ];
    for (text, want) in &cases {
        let got = container_of(Engine::Docker, text).map(|f| (f.id, f.delegated_to));
        assert_eq!(got, *want, "{text:?}");
    }
}

#[test]
fn podman_ids_from_cgroup_lines() {
    let id = ID;
    let cases: Vec<Case<'_>> = vec![
        (
            format!("0::/machine.slice/libpod-{id}.scope\n"),
            Some((id, None)),
        ),
        (
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
            Some((id, None)),
        ),
        (
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope\n"
            ),
            Some((id, Some(1000))),
        ),
        (
            format!("3:memory:/libpod_parent/libpod-{id}\n"),
            Some((id, None)),
        ),
        (
            format!("0::/machine.slice/libpod-conmon-{id}.scope\n"),
            None,
        ),
        (format!("0::/system.slice/docker-{id}.scope\n"), None),
        (format!("0::/kubepods/burstable/pod99/{id}\n"), None),
    ];
    for (text, want) in &cases {
        let got = container_of(Engine::Podman, text).map(|f| (f.id, f.delegated_to));
        assert_eq!(got, *want, "{text:?}");
    }
}

/// Trimmed from a real `docker inspect`; includes an env secret that must
/// never surface, and a label key we refuse.
const INSPECT: &str = r#"{
  "Id": "3f1c0e8b2a7d4c6e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a",
  "Created": "2025-05-01T10:20:30.123456789Z",
  "Path": "/docker-entrypoint.sh",
  "Args": ["nginx", "-g", "daemon off;"],
  "State": {"Status": "running", "Running": true, "Pid": 4242, "ExitCode": 0},
  "Image": "sha256:be69f2940aaf64fdf50c9c99420cbd57e10ee655ec7204df1c407e9af63d0cc1",
  "Name": "/shop-web-1",
  "RestartCount": 0,
  "Driver": "overlay2",
  "HostConfig": {"NetworkMode": "bridge", "Privileged": false},
  "Config": {
    "Hostname": "3f1c0e8b2a7d",
    "User": "",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin", "DB_PASSWORD=hunter2"],
    "Cmd": ["nginx", "-g", "daemon off;"],
    "Image": "nginx:1.27",
    "WorkingDir": "",
    "Labels": {
      "com.docker.compose.project": "shop",
      "com.docker.compose.service": "web",
      "org.opencontainers.image.version": "1.27.0",
      "maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>",
      "bad key": "dropped",
      "a=b": "dropped"
    }
  },
  "NetworkSettings": {"IPAddress": "172.17.0.2"}
}"#;

/// An HTTP/1.1 engine API on a Unix socket answering inspect for [`ID`].
fn fixture(path: PathBuf, hits: Arc<AtomicUsize>) {
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let found = req.method() == http::Method::GET
                        && req.uri().path() == format!("/containers/{ID}/json")
                        && req.headers().contains_key(http::header::HOST);
                    let (status, body) = if found {
                        (200, INSPECT)
                    } else {
                        (404, r#"{"message":"No such container"}"#)
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)));
                    async move { Ok::<_, Infallible>(resp.expect("response")) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn cgroup_for(engine: Engine) -> String {
    match engine {
        Engine::Docker => format!("0::/system.slice/docker-{ID}.scope\n"),
        Engine::Podman => format!("0::/machine.slice/libpod-{ID}.scope\n"),
    }
}

async fn attest_with(
    engine: Engine,
    sockets: Vec<PathBuf>,
    cgroup: &str,
) -> BTreeMap<String, String> {
    let a = ContainerAttestor::new(engine, sockets);
    let mut attrs = BTreeMap::new();
    a.attest_cgroup(cgroup, &mut attrs).await;
    attrs
}

fn missing(dir: &Path) -> PathBuf {
    dir.join("absent.sock")
}

#[tokio::test]
async fn docker_engine_supplies_image_and_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    let hits = Arc::new(AtomicUsize::new(0));
    fixture(sock.clone(), hits.clone());
    let attrs = attest_with(Engine::Docker, vec![sock], &cgroup_for(Engine::Docker)).await;
    let want: BTreeMap<String, String> = [
        ("workload.docker.container_id", ID),
        ("workload.docker.image", "nginx:1.27"),
        (
            "workload.docker.image_id",
            "sha256:be69f2940aaf64fdf50c9c99420cbd57e10ee655ec7204df1c407e9af63d0cc1",
        ),
        ("workload.docker.labels.com.docker.compose.project", "shop"),
        ("workload.docker.labels.com.docker.compose.service", "web"),
        (
            "workload.docker.labels.org.opencontainers.image.version",
            "1.27.0",
        ),
        (
            "workload.docker.labels.maintainer",
            "NGINX Docker Maintainers <docker-maint@nginx.com>",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(attrs, want);
    assert!(!format!("{attrs:?}").contains("hunter2"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn podman_tries_its_sockets_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("podman.sock");
    fixture(sock.clone(), Arc::new(AtomicUsize::new(0)));
    let sockets = vec![missing(dir.path()), sock];
    let attrs = attest_with(Engine::Podman, sockets, &cgroup_for(Engine::Podman)).await;
    assert_eq!(attrs["workload.podman.container_id"], ID);
    assert_eq!(attrs["workload.podman.image"], "nginx:1.27");
    assert_eq!(
        attrs["workload.podman.labels.com.docker.compose.service"],
        "web"
    );
    assert!(!attrs.keys().any(|k| k.starts_with("workload.docker.")));
}

#[tokio::test]
async fn unreachable_engine_keeps_only_the_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let attrs = attest_with(
        Engine::Docker,
        vec![missing(dir.path())],
        &cgroup_for(Engine::Docker),
    )
    .await;
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs["workload.docker.container_id"], ID);
}

#[tokio::test]
async fn unknown_container_keeps_only_the_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    fixture(sock.clone(), Arc::new(AtomicUsize::new(0)));
    let other = "0".repeat(64);
    let attrs = attest_with(Engine::Docker, vec![sock], &format!("0::/docker/{other}\n")).await;
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs["workload.docker.container_id"], other);
}

#[tokio::test]
async fn another_users_subtree_does_not_reach_the_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("podman.sock");
    let hits = Arc::new(AtomicUsize::new(0));
    fixture(sock.clone(), hits.clone());
    // SAFETY: geteuid has no preconditions.
    let other_uid = unsafe { libc::geteuid() }.wrapping_add(1);
    let cgroup = format!(
        "0::/user.slice/user-{other_uid}.slice/user@{other_uid}.service/user.slice/libpod-{ID}.scope\n"
    );
    let attrs = attest_with(Engine::Podman, vec![sock], &cgroup).await;
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs["workload.podman.container_id"], ID);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_silent_engine_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("silent.sock");
    // Accepts but never answers.
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let attrs = attest_with(Engine::Docker, vec![sock], &cgroup_for(Engine::Docker)).await;
    assert_eq!(attrs.len(), 1);
    let took = started.elapsed();
    assert!(
        took >= ENGINE_TIMEOUT && took < ENGINE_TIMEOUT * 4,
        "{took:?}"
    );
}
