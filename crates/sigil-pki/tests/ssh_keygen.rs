//! OpenSSH certificates and keys checked by the real `ssh-keygen`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sigil_pki::*;

fn ssh_keygen(args: &[&str]) -> (bool, String) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .env("TZ", "UTC")
        .output()
        .expect("ssh-keygen is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_str().unwrap().to_string()
}

fn principals(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn user_cert_is_understood_by_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let user = SshKeyPair::generate("bot-ci").unwrap();
    let cert = ca
        .issue_user_cert(
            &user.public_openssh(),
            "bot-ci/instance-1",
            &principals(&["ubuntu", "deploy"]),
            Duration::from_secs(3600),
            &SshUserPermissions::ALL,
        )
        .unwrap();
    assert!(
        cert.openssh
            .starts_with("ssh-ed25519-cert-v01@openssh.com AAAA")
    );
    assert!(cert.openssh.ends_with(" bot-ci/instance-1"));
    assert!(!cert.openssh.contains('\n'));
    let path = write(dir.path(), "id-cert.pub", &cert.openssh, 0o644);
    let (ok, out) = ssh_keygen(&["-L", "-f", &path]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{out}"
    );
    assert!(out.contains("Key ID: \"bot-ci/instance-1\""), "{out}");
    assert!(out.contains(&format!("Serial: {}", cert.serial)), "{out}");
    let principals_block = out.split("Principals:").nth(1).unwrap();
    assert!(
        principals_block.contains("ubuntu") && principals_block.contains("deploy"),
        "{out}"
    );
    for ext in [
        "permit-pty",
        "permit-port-forwarding",
        "permit-agent-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
    ] {
        assert!(out.contains(ext), "missing {ext}: {out}");
    }
    // Validity: "Valid: from 2025-01-01T10:00:00 to 2025-01-01T11:01:00".
    let valid = out
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap();
    assert!(valid.contains("from ") && valid.contains(" to "), "{valid}");
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    // ssh_keygen() runs with TZ=UTC, so the printed times are UTC.
    let offset = time::UtcOffset::UTC;
    let to = valid.rsplit(" to ").next().unwrap().trim();
    let to = time::PrimitiveDateTime::parse(to, &fmt)
        .unwrap()
        .assume_offset(offset);
    assert!(
        (to - cert.not_after).abs() <= time::Duration::seconds(1),
        "{valid} vs {}",
        cert.not_after
    );
    let from = valid
        .split("from ")
        .nth(1)
        .unwrap()
        .split(" to ")
        .next()
        .unwrap();
    let from = time::PrimitiveDateTime::parse(from, &fmt)
        .unwrap()
        .assume_offset(offset);
    let span = to - from;
    assert!(
        span >= time::Duration::seconds(3659) && span <= time::Duration::seconds(3661),
        "{span}"
    );
    // Signing CA shown is our CA key.
    let fp = {
        let p = write(dir.path(), "ca.pub", &ca.public_key_openssh(), 0o644);
        let (ok, out) = ssh_keygen(&["-l", "-f", &p]);
        assert!(ok, "{out}");
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    assert!(out.contains(&format!("Signing CA: ED25519 {fp}")), "{out}");
}

#[test]
fn host_cert_and_known_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, stored) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshHost, "prod").unwrap();
    let host = SshKeyPair::generate("host").unwrap();
    let cert = ca
        .issue_host_cert(
            &host.public_openssh(),
            "node-1",
            &principals(&["node-1.example.com", "10.0.0.5"]),
            Duration::from_secs(86400),
        )
        .unwrap();
    let path = write(dir.path(), "host-cert.pub", &cert.openssh, 0o644);
    let (ok, out) = ssh_keygen(&["-L", "-f", &path]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Type: ssh-ed25519-cert-v01@openssh.com host certificate"),
        "{out}"
    );
    assert!(
        out.contains("node-1.example.com") && out.contains("10.0.0.5"),
        "{out}"
    );
    assert!(!out.contains("permit-pty"), "{out}");

    let line = ca.known_hosts_line("*.example.com");
    assert!(
        line.starts_with("@cert-authority *.example.com ssh-ed25519 AAAA"),
        "{line}"
    );
    assert!(line.ends_with(" sigil-prod-ssh-host"), "{line}");
    let kh = write(dir.path(), "known_hosts", &format!("{line}\n"), 0o644);
    let (ok, out) = ssh_keygen(&["-F", "node-1.example.com", "-f", &kh]);
    assert!(ok && out.contains("@cert-authority"), "{out}");
    assert_eq!(
        stored.ssh_public_key.as_deref(),
        Some(ca.public_key_openssh().as_str())
    );

    // Purposes are enforced: host CA cannot sign user certs and vice versa.
    assert!(
        ca.issue_user_cert(
            &host.public_openssh(),
            "x",
            &principals(&["root"]),
            Duration::from_secs(60),
            &SshUserPermissions::ALL,
        )
        .is_err()
    );
}

#[test]
fn ca_public_key_parses_with_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let line = ca.public_key_openssh();
    assert!(
        line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" sigil-prod-ssh-user"),
        "{line}"
    );
    let p = write(dir.path(), "ca.pub", &format!("{line}\n"), 0o644);
    let (ok, out) = ssh_keygen(&["-l", "-f", &p]);
    assert!(ok, "{out}");
    assert!(out.contains("sigil-prod-ssh-user (ED25519)"), "{out}");
    // Garbage is rejected by ssh-keygen: proves the check above can fail.
    let bad = write(
        dir.path(),
        "bad.pub",
        "ssh-ed25519 AAAAnotbase64 x\n",
        0o644,
    );
    assert!(!ssh_keygen(&["-l", "-f", &bad]).0);
}

#[test]
fn private_key_is_accepted_by_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let key = SshKeyPair::generate("agent@prod").unwrap();
    let text = key.to_openssh_private().unwrap();
    assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let path = write(dir.path(), "id_ed25519", &text, 0o600);
    let (ok, out) = ssh_keygen(&["-y", "-f", &path]);
    assert!(ok, "{out}");
    // ssh-keygen -y prints "type base64 comment"; compare type + key.
    let ours = key.public_openssh();
    let ours: Vec<&str> = ours.split_whitespace().take(2).collect();
    let theirs: Vec<&str> = out.split_whitespace().take(2).collect();
    assert_eq!(ours, theirs);

    // And a key made by ssh-keygen loads into SshKeyPair with the same public key.
    let p2 = dir.path().join("gen");
    let (ok, out) = ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "made-by-ssh-keygen",
        "-f",
        p2.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let loaded = SshKeyPair::from_openssh(&std::fs::read_to_string(&p2).unwrap()).unwrap();
    let pub_text = std::fs::read_to_string(p2.with_extension("pub")).unwrap();
    assert_eq!(loaded.public_openssh(), pub_text.trim());
}

#[test]
fn stored_ssh_ca_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, stored) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let json = serde_json::to_string(&stored).unwrap();
    let back: StoredCa = serde_json::from_str(&json).unwrap();
    let loaded = SshCa::load(&SoftwareKeyManager, &back).unwrap();
    assert_eq!(loaded.public_key_openssh(), ca.public_key_openssh());
    let user = SshKeyPair::generate("u").unwrap();
    let cert = loaded
        .issue_user_cert(
            &user.public_openssh(),
            "u",
            &principals(&["root"]),
            Duration::from_secs(60),
            &SshUserPermissions::PTY_ONLY,
        )
        .unwrap();
    let path = write(dir.path(), "c.pub", &cert.openssh, 0o644);
    assert!(ssh_keygen(&["-L", "-f", &path]).0);

    // Mismatched public key line is refused; X.509 records are refused.
    let (other, _) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let mut mixed = back.clone();
    mixed.ssh_public_key = Some(other.public_key_openssh());
    assert!(matches!(
        SshCa::load(&SoftwareKeyManager, &mixed),
        Err(PkiError::KeyMismatch { .. })
    ));
    let (_, x509) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    assert!(SshCa::load(&SoftwareKeyManager, &x509).is_err());
    // Empty principals would be a golden ticket.
    assert!(
        loaded
            .issue_user_cert(
                &user.public_openssh(),
                "u",
                &[],
                Duration::from_secs(60),
                &SshUserPermissions::PTY_ONLY
            )
            .is_err()
    );
    assert!(
        loaded
            .issue_user_cert(
                "ssh-ed25519 garbage",
                "u",
                &principals(&["a"]),
                Duration::from_secs(60),
                &SshUserPermissions::PTY_ONLY
            )
            .is_err()
    );
}

/// The `Critical Options:` and `Extensions:` blocks of `ssh-keygen -L`
/// output, each as its sorted lines (trimmed); "(none)" gives an empty list.
fn cert_options(out: &str) -> (Vec<String>, Vec<String>) {
    let block = |title: &str| -> Vec<String> {
        let mut lines = out.lines().skip_while(|l| l.trim() != title);
        let head = lines.next();
        assert!(head.is_some(), "no {title} in {out}");
        let mut v: Vec<String> = lines
            .take_while(|l| l.starts_with("                "))
            .map(|l| l.trim().to_string())
            .collect();
        v.sort();
        v
    };
    // ssh-keygen prints "Critical Options: (none)" on one line when empty.
    let crit = if out.contains("Critical Options: (none)") {
        vec![]
    } else {
        block("Critical Options:")
    };
    let ext = if out.contains("Extensions: (none)") {
        vec![]
    } else {
        block("Extensions:")
    };
    (crit, ext)
}

#[test]
fn user_cert_carries_exactly_the_permissions_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let user = SshKeyPair::generate("bot").unwrap();
    let issue = |p: &SshUserPermissions| {
        ca.issue_user_cert(
            &user.public_openssh(),
            "bot:ci:1",
            &principals(&["deploy"]),
            Duration::from_secs(600),
            p,
        )
    };
    let listed = |p: &SshUserPermissions, name: &str| {
        let cert = issue(p).unwrap();
        let path = write(dir.path(), name, &cert.openssh, 0o644);
        let (ok, out) = ssh_keygen(&["-L", "-f", &path]);
        assert!(ok, "{out}");
        cert_options(&out)
    };
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (crit, ext) = listed(&SshUserPermissions::PTY_ONLY, "pty.pub");
    assert_eq!(crit, Vec::<String>::new());
    assert_eq!(ext, strs(&["permit-pty"]));

    let (crit, ext) = listed(&SshUserPermissions::ALL, "all.pub");
    assert_eq!(crit, Vec::<String>::new());
    assert_eq!(
        ext,
        strs(&[
            "permit-X11-forwarding",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty",
            "permit-user-rc",
        ])
    );

    let nothing = SshUserPermissions {
        pty: false,
        ..SshUserPermissions::PTY_ONLY
    };
    let (crit, ext) = listed(&nothing, "none.pub");
    assert_eq!((crit, ext), (vec![], vec![]));

    let forwarding = SshUserPermissions {
        port_forwarding: true,
        agent_forwarding: true,
        pty: false,
        source_address: Some(strs(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])),
        ..SshUserPermissions::PTY_ONLY
    };
    let (crit, ext) = listed(&forwarding, "fwd.pub");
    assert_eq!(
        crit,
        strs(&["source-address 10.0.0.0/8,192.0.2.7/32,2001:db8::/32"])
    );
    assert_eq!(
        ext,
        strs(&["permit-agent-forwarding", "permit-port-forwarding"])
    );

    // No address at all, or a malformed one: nothing is issued.
    for bad in [
        vec![],
        strs(&["10.0.0.0/33"]),
        strs(&["10.0.0.0/8,0.0.0.0/0"]),
        strs(&["example.com"]),
        strs(&["10.0.0.0/"]),
    ] {
        let p = SshUserPermissions {
            source_address: Some(bad.clone()),
            ..SshUserPermissions::PTY_ONLY
        };
        let err = issue(&p).unwrap_err().to_string();
        assert!(err.contains("source-address"), "{bad:?}: {err}");
    }
}
