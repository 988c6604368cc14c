//! End to end: join method `tpm` against a software TPM (swtpm, with an EK
//! certificate from a per-test local CA). Needs the Debian packages swtpm,
//! swtpm-tools and libtss2-tcti-swtpm0 (with libtss2-dev to build), and
//! `sigil` built with `--features tpm`.

mod common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running swtpm with a manufactured state (EK + EK certificate).
struct Swtpm {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Swtpm {
    fn start() -> Swtpm {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("state")).expect("state dir");
        std::fs::create_dir_all(d.join("ca")).expect("ca dir");
        // A private local CA per test, not the system-wide /var/lib/swtpm-localca.
        let ca = d.join("ca");
        std::fs::write(
            d.join("localca.conf"),
            format!(
                "statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\ncertserial = {c}/certserial\n",
                c = ca.display()
            ),
        )
        .expect("localca.conf");
        std::fs::write(
            d.join("setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                d.join("localca.conf").display()
            ),
        )
        .expect("setup.conf");
        let setup = Command::new("swtpm_setup")
            .args(["--tpm2", "--overwrite", "--create-ek-cert", "--tpmstate"])
            .arg(d.join("state"))
            .arg("--config")
            .arg(d.join("setup.conf"))
            .arg("--write-ek-cert-files")
            .arg(d)
            .output()
            .expect("swtpm_setup (apt install swtpm swtpm-tools)");
        assert!(setup.status.success(), "swtpm_setup:\n{}", text(&setup));

        // libtss2-tcti-swtpm talks to the control channel on port + 1.
        let port = loop {
            let p = free_port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", d.join("state").display()))
            .args([
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            ])
            .args([
                "--ctrl",
                &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            ])
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm");
        wait_until("swtpm listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Swtpm { dir, child, port }
    }

    fn ek_cert(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ek-rsa2048.crt")).expect("EK certificate file")
    }

    /// The CA that signed the EK certificate (swtpm_localca's intermediate).
    fn issuer_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca/issuercert.pem")).expect("issuer")
    }

    /// SHA-256 hex of the EK SubjectPublicKeyInfo, taken from the EK
    /// certificate by openssl (independently of sigil's own encoding).
    fn ek_public_hash(&self) -> String {
        let crt = self.dir.path().join("ek-rsa2048.crt");
        let spki = self.dir.path().join("ek.spki.der");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -inform der -in {} -noout -pubkey | openssl pkey -pubin -outform der -out {} && sha256sum {}",
                crt.display(),
                spki.display(),
                spki.display()
            ))
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{}", text(&o));
        stdout(&o)
            .split_whitespace()
            .next()
            .expect("hash")
            .to_string()
    }

    fn ek_serial(&self) -> String {
        let der = self.ek_cert();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("EK cert");
        let raw = cert.raw_serial();
        let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len() - 1);
        raw[start..].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tpm_token(auth: &Auth, name: &str, allow: &str, cas: &[String]) {
    let mut yaml = format!(
        "kind: token\nversion: v1\nmetadata: {{name: {name}, expires: \"2099-01-01T00:00:00Z\"}}\nspec:\n  bot_name: tpm-bot\n  join_method: tpm\n  tpm:\n    allow:\n      - {allow}\n"
    );
    if !cas.is_empty() {
        yaml.push_str("    ekcert_allowed_cas:\n");
        for ca in cas {
            yaml.push_str("      - |\n");
            for line in ca.lines() {
                yaml.push_str(&format!("        {line}\n"));
            }
        }
    }
    auth.create(&format!("{name}.yaml"), &yaml);
}

fn agent_config(auth: &Auth, agent: &AgentDirs, token: &str, tpm: &Swtpm) -> PathBuf {
    let path = agent.dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "version: v1\nauth_server: {}\nca_pins: [{}]\nonboarding: {{join_method: tpm, token: {token}, tpm: {{tcti: \"swtpm:host=127.0.0.1,port={}\"}}}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 1h\noutputs:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            auth.addr(),
            auth.pin,
            tpm.port,
            agent.storage.display(),
            agent.out.display()
        ),
    )
    .expect("agent.yaml");
    path
}

fn run_agent(config: &Path) -> Output {
    Command::new(sigil_bin())
        .args(["agent", "start", "--oneshot", "--config"])
        .arg(config)
        .output()
        .expect("run agent")
}

fn credential(agent: &AgentDirs) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(agent.storage.join("credential.json")).expect("credential.json"),
    )
    .expect("json")
}

#[test]
fn tpm_join_proves_the_ek_and_reproof_keeps_the_instance() {
    let tpm = Swtpm::start();
    let auth = Auth::start();
    auth.bot("tpm-bot", &["root"]);
    let hash = tpm.ek_public_hash();
    let serial = tpm.ek_serial();
    tpm_token(
        &auth,
        "tpm-fleet",
        &format!("{{ek_public_hash: \"{hash}\"}}"),
        &[tpm.issuer_pem()],
    );
    let agent = AgentDirs::new();
    let config = agent_config(&auth, &agent, "tpm-fleet", &tpm);

    let o = run_agent(&config);
    assert!(o.status.success(), "agent failed:\n{}", text(&o));
    let cred = credential(&agent);
    assert_eq!(cred["renewable"], false, "{cred}");
    let instance = cred["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();

    // The verified EK is recorded in the certificate and the audit log.
    let pem = std::fs::read_to_string(agent.out.join("tls.crt")).expect("tls.crt");
    let der = sigil_pki::pem_to_ders(&pem, "CERTIFICATE")
        .expect("pem")
        .remove(0);
    let (id, _) = sigil_pki::read_client_identity(&der).expect("identity");
    assert_eq!(id.join_attributes["ek_public_hash"], hash);
    assert_eq!(id.join_attributes["ek_certificate_serial"], serial);
    let joins = auth.audit("bot.join");
    let join = joins
        .iter()
        .find(|e| e.to_string().contains("tpm-fleet"))
        .expect("bot.join");
    let text_of = join.to_string();
    assert!(
        text_of.contains(&hash) && text_of.contains(&serial),
        "{join}"
    );

    // Renewal is a new proof with a new challenge; the instance stays.
    let o = run_agent(&config);
    assert!(o.status.success(), "re-proof failed:\n{}", text(&o));
    let cred = credential(&agent);
    assert_eq!(cred["instance_id"], instance.as_str());
    assert_eq!(agent.generation(), 2);
    assert_eq!(
        auth.instances().len(),
        1,
        "re-proof must not add an instance"
    );
    assert!(
        auth.audit("bot.join")
            .iter()
            .any(|e| e.to_string().contains("\"rejoin\":true")),
        "no rejoin audited"
    );
}

#[test]
fn tpm_join_denies_other_eks_and_foreign_ek_certificate_cas_and_admits_by_serial() {
    let tpm = Swtpm::start();
    let auth = Auth::start();
    auth.bot("tpm-bot", &["root"]);
    let hash = tpm.ek_public_hash();

    // Another machine's EK.
    tpm_token(
        &auth,
        "tpm-other",
        &format!("{{ek_public_hash: \"{}\"}}", "ab".repeat(32)),
        &[],
    );
    let agent = AgentDirs::new();
    let o = run_agent(&agent_config(&auth, &agent, "tpm-other", &tpm));
    assert!(!o.status.success(), "an unlisted EK joined");
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    assert!(!agent.out.join("tls.crt").exists());
    let denied = auth.audit("bot.join.denied");
    let d = denied
        .iter()
        .find(|e| e.to_string().contains("tpm-other"))
        .expect("denial");
    // The audit shows the EK that was checked (the same as openssl computes).
    assert!(d.to_string().contains(&hash), "{d}");

    // The right EK, but its certificate is not from an allowed CA.
    let foreign = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|mut p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&rcgen::KeyPair::generate()?)
        })
        .expect("foreign CA")
        .pem();
    tpm_token(
        &auth,
        "tpm-foreign-ca",
        &format!("{{ek_public_hash: \"{hash}\"}}"),
        &[foreign],
    );
    let agent = AgentDirs::new();
    let o = run_agent(&agent_config(&auth, &agent, "tpm-foreign-ca", &tpm));
    assert!(
        !o.status.success(),
        "an EK certificate from a foreign CA joined"
    );
    assert!(text(&o).contains("join denied"), "{}", text(&o));
    let denied = auth.audit("bot.join.denied");
    let d = denied
        .iter()
        .find(|e| e.to_string().contains("tpm-foreign-ca"))
        .expect("denial");
    assert!(d.to_string().contains("ekcert_allowed_cas"), "{d}");
    assert_eq!(auth.instances().len(), 0);

    // A rule on the EK certificate's serial alone admits the same TPM.
    tpm_token(
        &auth,
        "tpm-by-serial",
        &format!("{{ek_certificate_serial: \"{}\"}}", tpm.ek_serial()),
        &[tpm.issuer_pem()],
    );
    let agent = AgentDirs::new();
    let o = run_agent(&agent_config(&auth, &agent, "tpm-by-serial", &tpm));
    assert!(o.status.success(), "agent failed:\n{}", text(&o));
    assert_eq!(auth.instances().len(), 1);
}
