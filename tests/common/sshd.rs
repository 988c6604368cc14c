//! A real OpenSSH server (`/usr/sbin/sshd -D`) on loopback, configured by an
//! `ssh-host` output's snippet, and `ssh` clients against it. Needs root:
//! sshd switches to the logged-in user and runs the principals command as
//! `AuthorizedPrincipalsCommandUser`.

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{free_port, sigil_bin, text, wait_until};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Fail (not skip) when the test cannot run here, saying how to fix it.
pub fn require_sshd() {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: install openssh-server (scripts/test does)"
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the SSH end-to-end tests start sshd and log in as root: run them as root"
    );
}

/// A sigil binary sshd accepts as `AuthorizedPrincipalsCommand`: sshd
/// refuses a program in (or under) a group/other-writable directory such as
/// /tmp, so a binary built there is copied to a root-only directory.
pub fn safe_sigil_bin() -> PathBuf {
    let bin = PathBuf::from(sigil_bin());
    let safe = bin
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0));
    if safe {
        return bin;
    }
    let dir = PathBuf::from("/root/.cache/sigil-e2e-bin");
    std::fs::create_dir_all(&dir).expect("create the safe binary dir");
    let copy = dir.join(format!("sigil-{}", std::process::id()));
    std::fs::copy(&bin, &copy).expect("copy the sigil binary");
    copy
}

/// A running sshd that includes an ssh-host output's `sshd_config`.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Sshd {
    /// Start sshd on a free loopback port with `Include HOST_DIR/sshd_config`.
    pub fn start(work: &Path, name: &str, host_dir: &Path) -> Sshd {
        Sshd::start_with(
            work,
            name,
            &format!("Include {}/sshd_config\n", host_dir.display()),
        )
    }

    /// Start sshd whose configuration begins with `head`.
    pub fn start_with(work: &Path, name: &str, head: &str) -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("sshd privilege separation dir");
        let dir = work.join(format!("sshd-{name}"));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let port = free_port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "{head}Port {port}\nListenAddress 127.0.0.1\nPidFile {pid}\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {keys}\nLogLevel VERBOSE\nMaxStartups 100\n",
                pid = dir.join("sshd.pid").display(),
                keys = dir.join("authorized_keys").display(),
            ),
        )
        .expect("write sshd_config");
        let check = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("sshd -t");
        assert!(check.status.success(), "sshd -t:\n{}", text(&check));
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&cfg)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        wait_until("sshd to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sshd {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("sshd.pid")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// `ssh -F CONFIG -p PORT user@host args...`, never prompting.
    pub fn ssh(&self, ssh_config: &Path, user_host: &str, args: &[&str]) -> Output {
        self.ssh_command(ssh_config, user_host, args)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    pub fn ssh_command(&self, ssh_config: &Path, user_host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(ssh_config)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .arg(user_host)
            .args(args);
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
