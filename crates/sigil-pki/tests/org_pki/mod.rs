//! An organisation's PKI made with the real `openssl` CLI, for the intermediate-CA tests:
//! roots and intermediates from `openssl req -x509` / `openssl x509 -req -extfile`, and
//! certificates with dates in the past from `openssl ca -startdate/-enddate` (OpenSSL
//! 3.0's `x509` has no notBefore/notAfter options).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sigil_pki::*;

pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(args: &[&str]) {
    let (ok, out, err) = openssl(args, None);
    assert!(
        ok,
        "openssl {args:?} failed: {err}{}",
        String::from_utf8_lossy(&out)
    );
}

/// Key types the organisation might use.
#[derive(Clone, Copy)]
pub enum Alg {
    P256,
    P384,
    Rsa,
}

/// A certificate and its key, as files.
#[derive(Clone)]
pub struct Issuer {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issuer {
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
    pub fn key_pem(&self) -> String {
        std::fs::read_to_string(&self.key).unwrap()
    }
}

pub struct OrgPki {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

static SERIAL: AtomicU32 = AtomicU32::new(1);

/// A CA's extensions, as an openssl extension section body.
pub const CA_EXT: &str = "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n";

impl OrgPki {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Self::in_dir(tmp.path());
        Self {
            _tmp: Some(tmp),
            ..pki
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        std::fs::write(
            dir.join("req.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n",
        )
        .unwrap();
        Self {
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    pub fn key(&self, name: &str, alg: Alg) -> PathBuf {
        let out = self.path(&format!("{name}.key"));
        let o = out.to_str().unwrap();
        match alg {
            Alg::P256 => run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                o,
            ]),
            Alg::P384 => run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                o,
            ]),
            Alg::Rsa => run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                o,
            ]),
        }
        out
    }

    /// A self-signed root (`openssl req -x509`).
    pub fn root(&self, name: &str, alg: Alg) -> Issuer {
        let key = self.key(name, alg);
        let cert = self.path(&format!("{name}.pem"));
        // OpenSSL 3.0's `req` has no -extfile: the extensions go in its config.
        let cnf = self.write(
            &format!("{name}.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n[v3]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
        );
        let subj = format!("/O=Acme/CN=Acme {name}");
        run(&[
            "req",
            "-x509",
            "-new",
            "-config",
            &cnf,
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &subj,
            "-days",
            "3650",
            "-extensions",
            "v3",
            "-out",
            cert.to_str().unwrap(),
        ]);
        Issuer { cert, key }
    }

    /// A CSR for `key` (`openssl req -new`).
    pub fn csr(&self, name: &str, key: &Path, subj: &str) -> PathBuf {
        let csr = self.path(&format!("{name}.csr"));
        let cnf = self.path("req.cnf");
        run(&[
            "req",
            "-new",
            "-config",
            cnf.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-subj",
            subj,
            "-out",
            csr.to_str().unwrap(),
        ]);
        csr
    }

    /// `issuer` signs `csr` with the extensions `ext` (`openssl x509 -req -extfile`).
    pub fn sign_csr(&self, name: &str, csr: &Path, issuer: &Issuer, ext: &str) -> PathBuf {
        let cert = self.path(&format!("{name}.pem"));
        let ext_file = self.write(&format!("{name}.ext"), &format!("[v3]\n{ext}"));
        let serial = format!("{}", 1000 + SERIAL.fetch_add(1, Ordering::Relaxed));
        run(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            issuer.cert.to_str().unwrap(),
            "-CAkey",
            issuer.key.to_str().unwrap(),
            "-set_serial",
            &serial,
            "-days",
            "365",
            "-extfile",
            &ext_file,
            "-extensions",
            "v3",
            "-out",
            cert.to_str().unwrap(),
        ]);
        cert
    }

    /// A certificate for a new key of `alg`, issued by `issuer` with `ext`.
    pub fn issue(&self, name: &str, alg: Alg, issuer: &Issuer, ext: &str) -> Issuer {
        let key = self.key(name, alg);
        let csr = self.csr(name, &key, &format!("/O=Acme/CN=Acme {name}"));
        let cert = self.sign_csr(name, &csr, issuer, ext);
        Issuer { cert, key }
    }

    /// A certificate for `key` with explicit dates (`YYYYMMDDHHMMSSZ`), through `openssl ca`.
    pub fn issue_dated(
        &self,
        name: &str,
        key: &Path,
        issuer: &Issuer,
        start: &str,
        end: &str,
    ) -> PathBuf {
        let db = self.path(&format!("{name}.index"));
        std::fs::write(&db, "").unwrap();
        let serial = self.path(&format!("{name}.serial"));
        std::fs::write(
            &serial,
            format!("{:04X}\n", 0x2000 + SERIAL.fetch_add(1, Ordering::Relaxed)),
        )
        .unwrap();
        let cnf = self.write(
            &format!("{name}.ca.cnf"),
            &format!(
                "[ca]\ndefault_ca = c\n[c]\ndatabase = {}\nnew_certs_dir = {}\nserial = {}\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\norganizationName = optional\ncommonName = supplied\n[v3]\n{CA_EXT}",
                db.display(),
                self.dir.display(),
                serial.display()
            ),
        );
        let csr = self.csr(name, key, &format!("/O=Acme/CN=Acme {name}"));
        let cert = self.path(&format!("{name}.pem"));
        run(&[
            "ca",
            "-batch",
            "-config",
            &cnf,
            "-cert",
            issuer.cert.to_str().unwrap(),
            "-keyfile",
            issuer.key.to_str().unwrap(),
            "-in",
            csr.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extensions",
            "v3",
            "-notext",
        ]);
        cert
    }
}

/// `openssl verify -x509_strict -CAfile root -untrusted chain leaf` (plus `extra` flags).
pub fn verify(root: &str, untrusted: &str, leaf: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-CAfile",
        root,
        "-untrusted",
        untrusted,
    ];
    args.extend_from_slice(extra);
    args.push(leaf);
    let (ok, out, err) = openssl(&args, None);
    (ok, format!("{}{err}", String::from_utf8_lossy(&out)))
}

/// PEM of every file, concatenated in order.
pub fn cat(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

// What the Sigil-side tests share: a hierarchy and the leaves an X509Ca issues.

pub const CLUSTER: &str = "prod";
pub const SPIFFE_EXT: &str = "basicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign, digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\nsubjectAltName = URI:spiffe://prod\n";

pub fn identity() -> ClientIdentity {
    ClientIdentity {
        cluster: CLUSTER.into(),
        bot: "ci-bot".into(),
        bot_uid: String::new(),
        instance_id: "5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11".into(),
        roles: vec!["deploy".into()],
        generation: 1,
        renewable: true,
        join_method: "token".into(),
        logins: vec![],
        delegated: false,
        join_attributes: Default::default(),
    }
}

/// Issues one leaf of each kind `ca` can issue, and returns (name, PEM, openssl purpose).
pub fn leaves(ca: &X509Ca) -> Vec<(&'static str, String, &'static str)> {
    let spki = TlsKeyPair::generate().unwrap().spki_der();
    let ttl = Duration::from_secs(3600);
    let mut out = vec![
        (
            "client",
            ca.issue_client(&spki, &identity(), ttl).unwrap().pem,
            "sslclient",
        ),
        (
            "server",
            ca.issue_server(&spki, "web", &["web.prod.internal".into()], &[], ttl)
                .unwrap()
                .pem,
            "sslserver",
        ),
    ];
    if ca.purpose() == CaPurpose::Spiffe {
        let svid = ca
            .issue_x509_svid(&spki, "spiffe://prod/ns/web", &[], ttl)
            .unwrap();
        out.push(("svid", svid.pem, "sslclient"));
    }
    out
}

pub fn der_of(path: &Path) -> Vec<u8> {
    pem_to_ders(&std::fs::read_to_string(path).unwrap(), "CERTIFICATE")
        .unwrap()
        .remove(0)
}

/// Root (RSA) → organisation intermediate (P-384, pathlen:1) → the imported CA (P-256).
pub struct Hierarchy {
    pub pki: OrgPki,
    pub root: Issuer,
    pub org_int: Issuer,
}

pub fn hierarchy() -> Hierarchy {
    let pki = OrgPki::new();
    let root = pki.root("root", Alg::Rsa);
    let org_int = pki.issue(
        "org-int",
        Alg::P384,
        &root,
        "basicConstraints = critical, CA:TRUE, pathlen:1\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n",
    );
    Hierarchy { pki, root, org_int }
}
