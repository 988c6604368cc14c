//! Attesting real processes: ourselves over a socket pair, and children that
//! started too late or already exited.

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::Duration;

use aws_lc_rs::digest;

use super::*;

fn own_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

fn unix_only(unix: &UnixAttestor) -> AttestorSet {
    AttestorSet::new(vec![Box::new(unix.clone())])
}

/// A child `sleep`, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(Command::new("sleep").arg("5").spawn().expect("spawn sleep"))
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid")
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn attests_our_own_process_over_a_socket_pair() {
    let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
    let peer = PeerProcess::from_stream(&a).expect("peer");
    assert_eq!(peer.pid, i32::try_from(std::process::id()).expect("pid"));

    let unix = UnixAttestor::new();
    let set = unix_only(&unix);
    let attrs = set.attest(&peer).await.expect("attested");

    let (uid, gid) = own_ids();
    let exe = std::env::current_exe().expect("current exe");
    let bytes = std::fs::read(&exe).expect("read exe");
    let want_hash = hex::encode(digest::digest(&digest::SHA256, &bytes));
    assert_eq!(attrs["workload.unix.pid"], std::process::id().to_string());
    assert_eq!(attrs["workload.unix.uid"], uid.to_string());
    assert_eq!(attrs["workload.unix.gid"], gid.to_string());
    assert_eq!(attrs["workload.unix.path"], exe.to_string_lossy());
    assert_eq!(attrs["workload.unix.sha256"], want_hash);
    assert!(attrs.contains_key("workload.unix.supplementary_gids"));
    if uid == 0 {
        assert_eq!(attrs["workload.unix.user"], "root");
    }
    assert_eq!(unix.hash_cache_stats(), CacheStats { hits: 0, misses: 1 });

    // The second call is answered from the cache, and quickly.
    let started = std::time::Instant::now();
    let again = set.attest(&peer).await.expect("attested again");
    let took = started.elapsed();
    assert_eq!(again, attrs);
    assert_eq!(unix.hash_cache_stats(), CacheStats { hits: 1, misses: 1 });
    assert!(
        took < Duration::from_millis(50),
        "cached attestation took {took:?}"
    );
}

#[tokio::test]
async fn the_standard_set_runs_on_our_own_process() {
    let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
    let peer = PeerProcess::from_stream(&a).expect("peer");
    let attrs = AttestorSet::standard()
        .attest(&peer)
        .await
        .expect("attested");
    assert!(attrs.contains_key("workload.unix.sha256"));
    let exe_meta = std::fs::metadata(std::env::current_exe().expect("exe")).expect("stat");
    assert!(exe_meta.size() > 0);
}

#[tokio::test]
async fn a_process_started_after_the_accept_is_refused() {
    let child = Sleeper::spawn();
    let (uid, gid) = own_ids();
    let tck = peer::clock_ticks_per_second();
    // The "connection" was accepted two seconds before this child existed:
    // its pid must belong to someone else now.
    let accepted = boot_ticks_now().expect("clock").saturating_sub(2 * tck);
    let peer = PeerProcess::new(child.pid(), uid, gid, accepted);
    let err = AttestorSet::standard()
        .attest(&peer)
        .await
        .expect_err("refused");
    assert!(matches!(err, AttestError::ProcessGone), "{err:?}");

    // Control: the same child with an accept time after its start passes.
    let peer = PeerProcess::new(child.pid(), uid, gid, boot_ticks_now().expect("clock"));
    let attrs = unix_only(&UnixAttestor::new())
        .attest(&peer)
        .await
        .expect("attested");
    assert_eq!(attrs["workload.unix.pid"], child.pid().to_string());
    assert!(attrs["workload.unix.path"].ends_with("sleep"), "{attrs:?}");
}

#[tokio::test]
async fn an_exited_and_reaped_child_is_refused() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = i32::try_from(child.id()).expect("pid");
    child.wait().expect("wait");
    let (uid, gid) = own_ids();
    let peer = PeerProcess::new(pid, uid, gid, boot_ticks_now().expect("clock"));
    let err = AttestorSet::standard()
        .attest(&peer)
        .await
        .expect_err("refused");
    assert!(matches!(err, AttestError::ProcessGone), "{err:?}");
}

#[tokio::test]
async fn an_exited_but_unreaped_child_is_refused() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = i32::try_from(child.id()).expect("pid");
    let (uid, gid) = own_ids();
    let accepted = boot_ticks_now().expect("clock");
    // Let it become a zombie: its pid still exists, the process does not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peer = PeerProcess::new(pid, uid, gid, accepted);
    let err = AttestorSet::standard()
        .attest(&peer)
        .await
        .expect_err("refused");
    assert!(matches!(err, AttestError::ProcessGone), "{err:?}");
    child.wait().expect("wait");
}

#[tokio::test]
async fn other_credentials_are_refused() {
    let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
    let mut peer = PeerProcess::from_stream(&a).expect("peer");
    peer.uid = peer.uid.wrapping_add(1);
    let err = unix_only(&UnixAttestor::new())
        .attest(&peer)
        .await
        .expect_err("refused");
    assert!(matches!(err, AttestError::ProcessGone), "{err:?}");
}

#[tokio::test]
async fn a_pidfd_for_another_pid_is_refused() {
    // SO_PEERPIDFD names us; a peer claiming another pid does not match it.
    let child = Sleeper::spawn();
    let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
    let mut peer = PeerProcess::from_stream(&a).expect("peer");
    if !peer.has_pidfd() {
        return; // Kernel without SO_PEERPIDFD: nothing to test here.
    }
    peer.pid = child.pid();
    let err = unix_only(&UnixAttestor::new())
        .attest(&peer)
        .await
        .expect_err("refused");
    assert!(matches!(err, AttestError::ProcessGone), "{err:?}");
}
