//! End to end: intermediate CAs under an organisation's own root (made here with
//! openssl). The spiffe and client CAs are imported with their keys, the host CA
//! through a CSR whose key never leaves the auth service; each enters as a rotation,
//! so agents renew onto it without a failed call. Afterwards a party that trusts only
//! the organisation's root verifies the auth service's TLS certificate and the
//! agent's SVID (which carries the intermediate).

mod common;

use common::rotation::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The organisation's root CA: `root.pem` and `root.key` in `dir`.
fn org_root(dir: &Path) -> PathBuf {
    let root = dir.join("root.pem");
    let o = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            dir.join("root.key").to_str().unwrap(),
            "-out",
            root.to_str().unwrap(),
            "-subj",
            "/O=Example Org/CN=Example Org Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    root
}

/// Signs `csr` as an intermediate CA (pathlen 0) with the root in `dir`; returns the
/// chain file (intermediate, then root).
fn sign_intermediate(dir: &Path, name: &str, csr: &Path, extra_san: &str) -> PathBuf {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n{extra_san}"
        ),
    )
    .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let o = run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            dir.join("root.pem").to_str().unwrap(),
            "-CAkey",
            dir.join("root.key").to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let chain = dir.join(format!("{name}-chain.pem"));
    let root = std::fs::read_to_string(dir.join("root.pem")).unwrap();
    std::fs::write(&chain, std::fs::read_to_string(&cert).unwrap() + &root).unwrap();
    chain
}

/// A P-256 key and CSR made by openssl (the import-with-key path).
fn key_and_csr(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
    );
    let o = run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &format!("/O=Example Org/CN=Sigil {name} CA"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    (key, csr)
}

fn openssl_verify(args: &[&str]) -> std::process::Output {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    run("openssl", &all)
}

#[test]
fn intermediates_under_an_org_root_are_rotated_in_without_a_failed_call() {
    let rig = Rig::start();
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path();
    let root = org_root(dir);
    let root_s = root.to_str().unwrap();

    // Refusals first: nothing changes.
    let (key, csr) = key_and_csr(dir, "spiffe");
    let not_ca = dir.join("not-ca.pem");
    let o = run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            root_s,
            "-CAkey",
            dir.join("root.key").to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "10",
            "-out",
            not_ca.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = rig.auth.admin(&[
        "ca",
        "import",
        "--type",
        "spiffe",
        "--cert",
        not_ca.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("CA"), "{}", text(&o));
    let o = rig
        .auth
        .admin(&["ca", "import", "--type", "client", "--cert", root_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("sigil ca request --type client"),
        "{}",
        text(&o)
    );
    let o = rig.auth.admin(&[
        "ca",
        "import",
        "--type",
        "ssh-user",
        "--cert",
        root_s,
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A bot that may rotate may still not import: that decides what everyone trusts.
    rig.auth.create(
        "rotator.yaml",
        "kind: role\nversion: v1\nmetadata: {name: rotator}\nspec:\n  allow:\n    rules: [{resources: [cert_authority], verbs: [update]}]\n",
    );
    let token = bot_token(&rig.auth, "rotator", "rotator");
    let rotator = AgentDirs::new();
    assert!(rotator.oneshot(&rig.auth, Some(&token)).status.success());
    let spiffe_chain = sign_intermediate(
        dir,
        "spiffe",
        &csr,
        "subjectAltName=URI:spiffe://example.test",
    );
    let o = rig.auth.remote(
        &rotator.out.join("identity"),
        &[
            "ca",
            "import",
            "--type",
            "spiffe",
            "--cert",
            spiffe_chain.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("may not escalate cert_authority"),
        "{}",
        text(&o)
    );
    assert_eq!(rig.status()[5]["phase"], "standby");
    // That one-shot instance would hold the standby back (it never renews): remove it.
    let cred: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rotator.storage.join("credential.json")).unwrap(),
    )
    .unwrap();
    let id = cred["instance_id"].as_str().unwrap();
    rig.auth.ok(&["rm", &format!("bot_instance/rotator/{id}")]);

    let prober = Prober::start(&rig);
    // spiffe and client: imported with their keys.
    let out = rig.auth.ok(&[
        "ca",
        "import",
        "--type",
        "spiffe",
        "--cert",
        spiffe_chain.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.contains("phase init (manual)"), "{out}");
    let (ckey, ccsr) = key_and_csr(dir, "client");
    let client_chain = sign_intermediate(dir, "client", &ccsr, "");
    rig.auth.ok(&[
        "ca",
        "import",
        "--type",
        "client",
        "--cert",
        client_chain.to_str().unwrap(),
        "--key",
        ckey.to_str().unwrap(),
    ]);
    // host: a CSR; the key stays in the auth service's key manager.
    let host_csr = dir.join("host.csr");
    let out = rig.auth.ok(&[
        "ca",
        "request",
        "--type",
        "host",
        "--out",
        host_csr.to_str().unwrap(),
    ]);
    assert!(out.contains("sigil ca import --type host"), "{out}");
    let host_chain = sign_intermediate(dir, "host", &host_csr, "");
    rig.auth.ok(&[
        "ca",
        "import",
        "--type",
        "host",
        "--cert",
        host_chain.to_str().unwrap(),
    ]);
    let o = rig.auth.admin(&[
        "ca",
        "import",
        "--type",
        "host",
        "--cert",
        host_chain.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the request was used: {}",
        text(&o)
    );

    let imported = ["spiffe", "client", "host"];
    rig.wait_agent("the imported CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 2
    });
    for phase in ["update_clients", "update_servers", "standby"] {
        for t in imported {
            rig.rotate(t, phase);
        }
        rig.wait_agent(&format!("a renewal after {phase}"), || true);
    }
    rig.wait_agent("an SVID from the imported CA", || {
        openssl_verify(&[
            "-CAfile",
            root_s,
            "-untrusted",
            rig.x509().join("svid.pem").to_str().unwrap(),
            rig.x509().join("svid.pem").to_str().unwrap(),
        ])
        .status
        .success()
    });
    std::thread::sleep(Duration::from_secs(1));
    let (rounds, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(!rig.log().contains("renewal failed"), "{}", rig.log());

    // A party that trusts only the organisation's root accepts Sigil's certificates:
    // the SVID (it carries the intermediate), the agent's client certificate (with
    // the client intermediate) and the auth service's TLS certificate.
    let svid = rig.x509().join("svid.pem");
    let o = openssl_verify(&[
        "-CAfile",
        root_s,
        "-untrusted",
        svid.to_str().unwrap(),
        svid.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let other = org_root(&tempfile::tempdir().unwrap().keep());
    let o = openssl_verify(&[
        "-CAfile",
        other.to_str().unwrap(),
        "-untrusted",
        svid.to_str().unwrap(),
        svid.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "another root must not verify the SVID");
    let o = openssl_verify(&[
        "-CAfile",
        root_s,
        "-untrusted",
        client_chain.to_str().unwrap(),
        rig.id().join("tls.crt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "sh",
        &[
            "-c",
            &format!(
                "openssl s_client -connect {} -CAfile {root_s} -verify_return_error </dev/null 2>&1",
                rig.auth.addr()
            ),
        ],
    );
    assert!(
        o.status.success() && stdout(&o).contains("Verify return code: 0 (ok)"),
        "{}\nauth log:\n{}",
        text(&o),
        rig.auth.log()
    );
    // The imported CAs are the established ones; the pin is the host intermediate's.
    let host_pem = pems(&std::fs::read_to_string(&host_chain).unwrap()).remove(0);
    assert_eq!(rig.export("host"), vec![host_pem]);
    let events = rig.auth.audit("ca.imported");
    let via: Vec<&str> = events
        .iter()
        .map(|e| e["fields"]["via"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(via, ["key", "key", "csr"], "{events:#?}");
    assert_eq!(rig.auth.audit("ca.requested").len(), 1);
}
