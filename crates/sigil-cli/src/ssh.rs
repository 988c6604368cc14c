//! `sigil ssh ...`: helpers sshd runs on a host set up by the agent's
//! `ssh-host` output. They read local files only: no call to the auth
//! service at login time.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `sigil ssh ...`
#[derive(Subcommand, Debug)]
pub enum SshCommand {
    /// sshd's `AuthorizedPrincipalsCommand` (written into the ssh-host output's
    /// sshd_config): prints USER if the certificate's bot may log in as USER on
    /// this host, from the host agent's access.json alone (no network), and
    /// records the session so a lock can end it. Prints nothing otherwise.
    Principals(SshPrincipalsArgs),
}

/// `sigil ssh principals --dir DIR -- %u %i %s`
#[derive(Args, Debug)]
pub struct SshPrincipalsArgs {
    /// The ssh-host output's directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The local account (`%u`).
    pub user: String,
    /// The certificate's key ID (`%i`).
    pub key_id: String,
    /// The certificate's serial (`%s`).
    pub serial: u64,
}

/// Run `sigil ssh ...`. Only principals go to stdout: sshd reads every line.
pub fn run(cmd: &SshCommand) -> anyhow::Result<()> {
    match cmd {
        SshCommand::Principals(a) => {
            let line = sigil_agent::ssh_host::principals(&a.dir, &a.user, &a.key_id, a.serial)?;
            if let Some(l) = line {
                println!("{l}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    use super::SshCommand;

    #[test]
    fn sshd_tokens_are_positional_and_extra_words_are_refused() {
        let c = Cli::try_parse_from([
            "sigil",
            "ssh",
            "principals",
            "--dir",
            "/etc/ssh/sigil",
            "--",
            "root",
            "bot:a:i1",
            "42",
        ])
        .unwrap();
        let Command::Ssh(SshCommand::Principals(a)) = c.command else {
            panic!("parsed as {:?}", c.command)
        };
        assert_eq!(
            (a.user.as_str(), a.key_id.as_str(), a.serial),
            ("root", "bot:a:i1", 42)
        );
        // A key ID with spaces would split into more words (sshd splits the
        // command line): refused, so sshd sees a failure and no principal.
        for bad in [
            vec!["--", "root", "bot:a:i1", "--dir", "/tmp/x", "42"],
            vec!["--", "root", "bot:a:i1", "42", "extra"],
            vec!["--", "root", "bot:a:i1", "not-a-serial"],
        ] {
            let mut argv = vec!["sigil", "ssh", "principals", "--dir", "/etc/ssh/sigil"];
            argv.extend(bad.iter().copied());
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
    }
}
