//! Who is on the other end of a Unix connection, and proof that a pid still
//! names that process.
//!
//! A pid from SO_PEERCRED can be reused once the client exits, so /proc data
//! read by pid could describe a stranger. Attestation therefore:
//! 1. pins the process with a pidfd: the one SO_PEERPIDFD (Linux >= 6.5) gave
//!    at accept, which names the connecting process itself, or else one from
//!    `pidfd_open(pid)` at attestation time;
//! 2. reads /proc;
//! 3. confirms: the process started no later than the accept (so a pidfd
//!    opened late cannot name a newcomer; not needed with SO_PEERPIDFD), its
//!    effective uid/gid still equal
//!    the SO_PEERCRED ones, and the pidfd is not yet readable (readable means
//!    exited). A live pinned process keeps its pid, so everything read in
//!    step 2 described it.
//!
//! The start-time check has clock-tick (10 ms) resolution: a pid recycled
//! within the accept's own tick would pass it. SO_PEERPIDFD closes that gap.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{AttestError, proc_io};

/// SO_PEERPIDFD from `<asm-generic/socket.h>`; the architectures below use
/// the generic numbering (the `libc` crate does not export it yet).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer of an accepted Unix connection, from SO_PEERCRED, captured at
/// accept time.
#[derive(Clone, Debug)]
pub struct PeerProcess {
    /// Process id (thread group id) of the process that connected.
    pub pid: i32,
    /// Its effective uid when it connected.
    pub uid: u32,
    /// Its effective gid when it connected.
    pub gid: u32,
    /// CLOCK_BOOTTIME at accept, in clock ticks: the unit of the start time
    /// in /proc/PID/stat, so the two compare directly.
    pub accepted_at_boot_ticks: u64,
    /// The connecting process itself, when the kernel supports SO_PEERPIDFD.
    pidfd: Option<Arc<PeerPidfd>>,
}

/// SO_PEERPIDFD's descriptor, shared by every call on the connection.
#[derive(Debug)]
struct PeerPidfd {
    fd: Arc<OwnedFd>,
    /// Its pid was checked against SO_PEERCRED's. A live process keeps its
    /// pid, so once per connection is enough; an exited one fails the
    /// liveness check that ends every attestation.
    pid_checked: AtomicBool,
}

impl PeerProcess {
    /// Capture the peer of `s`; call it right after accept.
    pub fn from_stream(s: &tokio::net::UnixStream) -> io::Result<PeerProcess> {
        // The clock first: the peer connected (and so started) before this.
        let accepted_at_boot_ticks = boot_ticks_now()?;
        let cred = s.peer_cred()?;
        let pid = cred
            .pid()
            .filter(|p| *p > 0)
            .ok_or_else(|| io::Error::other("the kernel reported no peer pid"))?;
        Ok(PeerProcess {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            accepted_at_boot_ticks,
            pidfd: peer_pidfd(s.as_raw_fd()).map(|fd| {
                Arc::new(PeerPidfd {
                    fd: Arc::new(fd),
                    pid_checked: AtomicBool::new(false),
                })
            }),
        })
    }

    /// Whether the kernel gave a pidfd for the peer at accept (SO_PEERPIDFD),
    /// which rules out pid reuse entirely.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// A peer known by other means; its pidfd is opened when it is attested.
    pub fn new(pid: i32, uid: u32, gid: u32, accepted_at_boot_ticks: u64) -> PeerProcess {
        PeerProcess {
            pid,
            uid,
            gid,
            accepted_at_boot_ticks,
            pidfd: None,
        }
    }
}

/// CLOCK_BOOTTIME now, in clock ticks (USER_HZ), rounded down as the kernel
/// rounds process start times.
pub fn boot_ticks_now() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tck = clock_ticks_per_second();
    let secs = u64::try_from(ts.tv_sec).map_err(io::Error::other)?;
    let nanos = u64::try_from(ts.tv_nsec).map_err(io::Error::other)?;
    Ok(secs * tck + nanos * tck / 1_000_000_000)
}

/// sysconf(_SC_CLK_TCK): 100 on every mainstream Linux, but read it once.
pub(super) fn clock_ticks_per_second() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
    })
}

#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out-pointers are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &mut len,
        )
    };
    // Older kernels answer ENOPROTOOPT: fall back to pidfd_open later.
    (rc == 0 && pidfd >= 0).then(|| {
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    })
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
)))]
fn peer_pidfd(_fd: RawFd) -> Option<OwnedFd> {
    None
}

/// A pidfd holding on to the peer while it is attested.
pub(super) struct Pinned(Arc<OwnedFd>);

impl Pinned {
    /// Pin the peer: its SO_PEERPIDFD if we have one, else pidfd_open(pid).
    pub fn new(peer: &PeerProcess) -> Result<Pinned, AttestError> {
        if peer.pid <= 0 {
            return Err(AttestError::ProcessGone);
        }
        if let Some(p) = &peer.pidfd {
            if !p.pid_checked.load(Ordering::Acquire) {
                // The pidfd names the connecting process; make sure
                // SO_PEERCRED's pid is that process as seen from here.
                let fdinfo =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", p.fd.as_raw_fd()))
                        .map_err(|e| AttestError::io("pidfd information", e))?;
                let pid = status_field(&fdinfo, "Pid:").and_then(|v| v.trim().parse::<i32>().ok());
                if pid != Some(peer.pid) {
                    return Err(AttestError::ProcessGone);
                }
                p.pid_checked.store(true, Ordering::Release);
            }
            return Ok(Pinned(p.fd.clone()));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, peer.pid, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => AttestError::ProcessGone,
                _ => AttestError::io("a pidfd", e),
            });
        }
        let fd =
            RawFd::try_from(rc).map_err(|e| AttestError::io("a pidfd", io::Error::other(e)))?;
        // SAFETY: pidfd_open returned a new descriptor we now own.
        Ok(Pinned(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Whether the pinned process has exited (its pidfd polls readable).
    pub fn exited(&self) -> Result<bool, AttestError> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, zero timeout.
            let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
            if rc >= 0 {
                return Ok(rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(AttestError::io("the pidfd", e));
            }
        }
    }

    /// After /proc was read: the process is the one that connected, and
    /// alive. Files the attestors read are reused: any read made while the
    /// process was pinned describes it, as long as it is alive at the end.
    pub fn confirm(&self, files: &ProcFiles<'_>) -> Result<(), AttestError> {
        let peer = files.peer();
        if !peer.has_pidfd() {
            // A pidfd from pidfd_open(pid) may name a newcomer that took the
            // pid after the peer exited. SO_PEERPIDFD's names the connecting
            // process itself (and its pid was checked in `Pinned::new`), so
            // there the check would only cost a /proc read per call.
            let stat = files.read("stat")?;
            let started = start_ticks(&stat).ok_or(AttestError::Malformed("stat"))?;
            if started > peer.accepted_at_boot_ticks {
                return Err(AttestError::ProcessGone);
            }
        }
        // SO_PEERCRED reports effective ids, so those are what must match.
        let status = files.read("status")?;
        let uid = effective_id(&status, "Uid:").ok_or(AttestError::Malformed("status"))?;
        let gid = effective_id(&status, "Gid:").ok_or(AttestError::Malformed("status"))?;
        if uid != peer.uid || gid != peer.gid {
            return Err(AttestError::ProcessGone);
        }
        // Last: alive now means the pid named this process throughout.
        if self.exited()? {
            return Err(AttestError::ProcessGone);
        }
        Ok(())
    }
}

/// The peer's /proc files as one attestation sees them: each read at most
/// once and shared by the attestors and [`Pinned::confirm`] (/proc reads
/// were the largest cost of a Workload API call; benches/README.md).
pub struct ProcFiles<'a> {
    peer: &'a PeerProcess,
    read: Mutex<Vec<(&'static str, Arc<str>)>>,
}

impl<'a> ProcFiles<'a> {
    pub(super) fn new(peer: &'a PeerProcess) -> Self {
        ProcFiles {
            peer,
            read: Mutex::new(Vec::with_capacity(3)),
        }
    }

    /// The process being attested.
    pub fn peer(&self) -> &'a PeerProcess {
        self.peer
    }

    /// /proc/PID/<file>, read on first use.
    pub fn read(&self, file: &'static str) -> Result<Arc<str>, AttestError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, text)) = read.iter().find(|(f, _)| *f == file) {
            return Ok(text.clone());
        }
        let text: Arc<str> = read_proc(self.peer.pid, file)?.into();
        read.push((file, text.clone()));
        Ok(text)
    }
}

/// Read /proc/PID/<file>; a vanished process is [`AttestError::ProcessGone`].
pub(super) fn read_proc(pid: i32, file: &'static str) -> Result<String, AttestError> {
    let mut f = std::fs::File::open(format!("/proc/{pid}/{file}")).map_err(proc_io(file))?;
    // Plain reads until EOF: `read_to_string` on a `File` first asks for its
    // size and position (two more syscalls), which /proc files do not have.
    let mut chunk = [0u8; 4096];
    let mut bytes = Vec::new();
    loop {
        match io::Read::read(&mut f, &mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(proc_io(file)(e)),
        }
    }
    String::from_utf8(bytes)
        .map_err(|e| AttestError::io(file, io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// The value after `key` on its line of a /proc "Key:\tvalue" file.
pub(super) fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key))
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot. The
/// command name (field 2) may hold spaces and parentheses, so count from the
/// last ')'.
fn start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The second (effective) id of a status "Uid:"/"Gid:" line.
fn effective_id(status: &str, key: &str) -> Option<u32> {
    status_field(status, key)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn effective_ids_come_from_the_second_column() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t200\t200\t200\n";
        assert_eq!(effective_id(status, "Uid:"), Some(0));
        assert_eq!(effective_id(status, "Gid:"), Some(200));
    }
}
