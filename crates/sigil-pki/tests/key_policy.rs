//! Key-strength policy: keys made by the real `openssl` and `ssh-keygen`
//! are certified when strong and refused (naming what is accepted) when weak.

use std::process::Command;
use std::time::Duration;

use sigil_pki::*;

/// A DER SubjectPublicKeyInfo made by `openssl genpkey` with `args`.
fn openssl_spki(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("{name}.pem"));
    let spki = dir.join(format!("{name}.der"));
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&key)
        .status()
        .expect("openssl is installed")
        .success();
    assert!(ok, "openssl genpkey {args:?}");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&spki)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    std::fs::read(spki).unwrap()
}

fn ssh_public(dir: &std::path::Path, name: &str, args: &[&str]) -> Option<String> {
    let key = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-f"])
        .arg(&key)
        .args(args)
        .status()
        .expect("ssh-keygen is installed")
        .success();
    // Newer OpenSSH builds can no longer make DSA keys at all.
    ok.then(|| std::fs::read_to_string(key.with_extension("pub")).unwrap())
}

#[test]
fn x509_issuance_refuses_weak_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod").unwrap();
    let id = ClientIdentity {
        cluster: "prod".into(),
        bot: "ci".into(),
        bot_uid: "u".into(),
        instance_id: "i".into(),
        roles: vec![],
        generation: 1,
        renewable: true,
        join_method: "token".into(),
        logins: vec![],
        delegated: false,
        join_attributes: Default::default(),
    };
    let ttl = Duration::from_secs(600);
    for (name, args) in [
        (
            "rsa2048",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        ),
        ("ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let spki = openssl_spki(dir.path(), name, args);
        assert!(check_spki(&spki).is_ok(), "{name}");
        assert!(ca.issue_client(&spki, &id, ttl).is_ok(), "{name}");
    }
    for (name, args, says) in [
        (
            "rsa1024",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"][..],
            "RSA key of 1024 bits",
        ),
        (
            "secp256k1",
            &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ][..],
            "unsupported curve",
        ),
        (
            "x25519",
            &["-algorithm", "X25519"][..],
            "unsupported key algorithm",
        ),
    ] {
        let spki = openssl_spki(dir.path(), name, args);
        let err = ca.issue_client(&spki, &id, ttl).unwrap_err().to_string();
        assert!(err.contains(says), "{name}: {err}");
        assert!(err.contains(ACCEPTED_KEYS), "{name}: {err}");
    }
}

#[test]
fn ssh_issuance_refuses_weak_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = SshCa::generate(&SoftwareKeyManager, CaPurpose::SshUser, "prod").unwrap();
    let logins = vec!["deploy".to_string()];
    let ttl = Duration::from_secs(600);
    for (name, args) in [
        ("ed", &["-t", "ed25519"][..]),
        ("rsa", &["-t", "rsa", "-b", "2048"][..]),
    ] {
        let public = ssh_public(dir.path(), name, args).unwrap();
        assert!(
            ca.issue_user_cert(&public, "k", &logins, ttl, &SshUserPermissions::PTY_ONLY)
                .is_ok(),
            "{name}"
        );
    }
    let weak_rsa = ssh_public(dir.path(), "rsa1024", &["-t", "rsa", "-b", "1024"]).unwrap();
    let err = ca
        .issue_user_cert(&weak_rsa, "k", &logins, ttl, &SshUserPermissions::PTY_ONLY)
        .unwrap_err()
        .to_string();
    assert!(err.contains("RSA key of 1024 bits"), "{err}");
    assert!(err.contains(ACCEPTED_SSH_KEYS), "{err}");
    if let Some(dsa) = ssh_public(dir.path(), "dsa", &["-t", "dsa"]) {
        let err = ca
            .issue_user_cert(&dsa, "k", &logins, ttl, &SshUserPermissions::PTY_ONLY)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DSA"), "{err}");
    }
}
