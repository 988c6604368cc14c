//! End to end: Kubernetes access with x509 client certificates. Real
//! `sigil` auth service and agents (a `kubernetes` output next to an
//! `identity` output), real `kubectl --kubeconfig` against an API-server
//! stand-in that authenticates clients the way kube-apiserver does with
//! `--client-ca-file` (tests/common/kube_apiserver.rs), trusting the CA
//! `sigil ca export --type kubernetes` prints.

mod common;

use common::kube_apiserver::KubeApiServer;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEPLOY_ROLE: &str = "kind: role
version: v1
metadata: {name: kube-deploy}
spec:
  allow:
    kubernetes_labels: {env: prod}
    kubernetes_groups: [deployers, viewers, 'system:masters']
    kubernetes_users: [ci]
  deny:
    kubernetes_groups: ['system:*']
  options: {max_ttl: 30m}
";

/// Reaches clusters labelled env=dev only.
const DEV_ROLE: &str = "kind: role
version: v1
metadata: {name: kube-dev}
spec:
  allow:
    kubernetes_labels: {env: dev}
    kubernetes_users: [ci]
";

fn kubectl() -> &'static str {
    for p in ["/usr/bin/kubectl", "/usr/local/bin/kubectl"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("kubectl is not installed (scripts/test installs it)");
}

struct Rig {
    auth: Auth,
    api: KubeApiServer,
    work: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let auth = Auth::start();
        auth.create("deploy.yaml", DEPLOY_ROLE);
        auth.create("dev.yaml", DEV_ROLE);
        // What kube-apiserver's --client-ca-file would hold.
        let client_ca = auth.ok(&["ca", "export", "--type", "kubernetes"]);
        assert!(client_ca.contains("BEGIN CERTIFICATE"), "{client_ca}");
        let api = KubeApiServer::start(&client_ca);
        let rig = Rig {
            auth,
            api,
            work: tempfile::tempdir().expect("tempdir"),
        };
        rig.auth.create(
            "prod.yaml",
            &rig.cluster_yaml("prod", &rig.api.url, &rig.api.ca_pem),
        );
        rig
    }

    fn cluster_yaml(&self, name: &str, server: &str, ca_pem: &str) -> String {
        format!(
            "kind: kubernetes_cluster\nversion: v1\nmetadata: {{name: {name}, labels: {{env: prod}}}}\n\
             spec:\n  server: {server:?}\n  ca_file_pem: {ca:?}\n",
            ca = ca_pem
        )
    }

    fn token(&self, bot: &str, role: &str) -> String {
        let out = self
            .auth
            .ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bots add json");
        v["token"].as_str().expect("token").to_string()
    }

    /// An agent config for `bot` with an identity output (`DIR/id`) and a
    /// kubernetes output (`DIR/kube`) for `cluster`.
    fn config(&self, bot: &str, role: &str, cluster: &str, extra: &str) -> PathBuf {
        let token = self.token(bot, role);
        let d = self.work.path().join(bot);
        let cfg = d.with_extension("yaml");
        std::fs::write(
            &cfg,
            format!(
                "version: v1\nauth_server: {addr}\nca_pins: [{pin}]\n\
                 onboarding: {{join_method: token, token: {token}}}\n\
                 storage: {{type: directory, path: {d}/storage}}\n\
                 outputs:\n  - type: identity\n    destination: {{type: directory, path: {d}/id}}\n\
                 \x20 - type: kubernetes\n    cluster: {cluster}\n{extra}\
                 \x20   destination: {{type: directory, path: {d}/kube}}\n",
                addr = self.auth.addr(),
                pin = self.auth.pin,
                d = d.display(),
            ),
        )
        .expect("write agent config");
        cfg
    }

    fn oneshot(&self, cfg: &Path) -> Output {
        Command::new(sigil_bin())
            .args(["agent", "start", "--oneshot", "--config"])
            .arg(cfg)
            .output()
            .expect("run agent")
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let home = self.work.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", &home)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run kubectl")
    }

    /// `kubectl auth whoami -o json`, or on a kubectl without it the same
    /// SelfSubjectReview through `kubectl create --raw`.
    fn whoami(&self, kubeconfig: &Path) -> Output {
        let o = self.kubectl(kubeconfig, &["auth", "whoami", "-o", "json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() || !err.contains("unknown command") {
            return o;
        }
        let body = self.work.path().join("ssr.json");
        std::fs::write(
            &body,
            r#"{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1"}"#,
        )
        .expect("body");
        self.kubectl(
            kubeconfig,
            &[
                "create",
                "--raw",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                "-f",
                body.to_str().expect("utf8"),
            ],
        )
    }
}

/// A client certificate (PEM, key PEM) for `user` in `groups` from a CA of
/// its own: what an attacker without the kubernetes CA could make.
fn foreign_client_cert(user: &str, groups: &[&str]) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sigil.local kubernetes CA");
    ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    for g in groups {
        leaf.distinguished_name
            .push(rcgen::DnType::OrganizationName, *g);
    }
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, user);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn user_info(o: &Output) -> (String, Vec<String>) {
    assert!(o.status.success(), "kubectl whoami:\n{}", text(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("whoami json");
    let info = &v["status"]["userInfo"];
    let groups = info["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (
        info["username"].as_str().unwrap_or_default().to_string(),
        groups,
    )
}

#[test]
fn kubectl_authenticates_with_the_kubeconfig_and_a_lock_stops_renewal() {
    let rig = Rig::start();
    let d = rig.work.path().join("deployer");
    let reloaded = d.join("reloaded");
    let cfg = rig.config(
        "deployer",
        "kube-deploy",
        "prod",
        &format!("    reload_command: [touch, {}]\n", reloaded.display()),
    );
    let o = rig.oneshot(&cfg);
    assert!(o.status.success(), "agent:\n{}", text(&o));
    let kubeconfig = d.join("kube/kubeconfig.yaml");
    assert_eq!(mode(&kubeconfig), 0o600, "the kubeconfig holds a key");
    assert!(reloaded.exists(), "reload_command ran after the rewrite");

    // kubectl uses it as is.
    let o = rig.kubectl(&kubeconfig, &["get", "--raw", "/version"]);
    assert!(
        o.status.success(),
        "kubectl get --raw /version:\n{}",
        text(&o)
    );
    assert!(stdout(&o).contains("v1.32.0-sigil-standin"), "{}", text(&o));
    let (user, groups) = user_info(&rig.whoami(&kubeconfig));
    assert_eq!(user, "ci");
    assert_eq!(
        groups,
        ["deployers", "viewers", "system:authenticated"],
        "the role's groups minus the denied system:* (the stand-in adds system:authenticated)"
    );
    // The certificate is capped by the role's max_ttl like every other.
    let doc: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&kubeconfig).expect("kubeconfig"))
            .expect("kubeconfig yaml");
    let pem = {
        use base64::Engine;
        let b = doc["users"][0]["user"]["client-certificate-data"]
            .as_str()
            .expect("client-certificate-data");
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64")
    };
    let der = sigil_pki::pem_to_ders(std::str::from_utf8(&pem).expect("pem"), "CERTIFICATE")
        .expect("certificate")
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    // notBefore is backdated 5 minutes for clock skew.
    assert!(
        life <= 35 * 60,
        "lifetime {life}s exceeds the role's max_ttl of 30m"
    );
    let issued = rig.auth.audit("cert.issued");
    let kube: Vec<_> = issued
        .iter()
        .filter(|e| e["fields"]["kind"] == "kubernetes")
        .collect();
    assert_eq!(kube.len(), 1, "{issued:#?}");
    assert_eq!(kube[0]["fields"]["ca"], "kubernetes");
    assert_eq!(kube[0]["fields"]["user"], "ci");
    assert_eq!(kube[0]["fields"]["cluster"], "prod");

    // What the bot may reach, asked with its identity file; the admin sees all.
    let id = d.join("id/identity");
    let o = rig.auth.remote(&id, &["kube", "ls", "--format", "json"]);
    assert!(o.status.success(), "kube ls:\n{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v[0]["name"], "prod");
    assert_eq!(v[0]["users"], serde_json::json!(["ci"]));
    assert_eq!(v[0]["groups"], serde_json::json!(["deployers", "viewers"]));
    let o = rig.auth.remote(&id, &["get", "kubernetes_clusters"]);
    assert!(o.status.success(), "get kubernetes_clusters:\n{}", text(&o));
    assert!(stdout(&o).contains("deployers,viewers"), "{}", text(&o));
    let table = rig.auth.ok(&["kube", "ls"]);
    assert!(
        table.contains("prod") && table.contains(&rig.api.url),
        "{table}"
    );

    // A certificate from another CA, for the same user and groups, is
    // refused by the API server: it trusts the kubernetes CA only.
    let wrong = d.join("wrong-ca.yaml");
    let (cert_pem, key_pem) = foreign_client_cert("ci", &["deployers", "viewers"]);
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    };
    let mut doc: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&kubeconfig).expect("kubeconfig"))
            .expect("kubeconfig yaml");
    doc["users"][0]["user"]["client-certificate-data"] = b64(&cert_pem).into();
    doc["users"][0]["user"]["client-key-data"] = b64(&key_pem).into();
    std::fs::write(&wrong, serde_json::to_string(&doc).expect("json")).expect("write");
    let o = rig.kubectl(&wrong, &["get", "--raw", "/version"]);
    assert!(
        !o.status.success(),
        "a client certificate of another CA was accepted"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
        "{}",
        text(&o)
    );
    assert!(
        rig.api
            .seen()
            .iter()
            .any(|s| s.error.as_deref().is_some_and(|e| e.contains("verifying"))),
        "{:#?}",
        rig.api.seen()
    );

    // Every renewal re-issues: a new key and certificate, still accepted.
    let first = std::fs::read(&kubeconfig).expect("kubeconfig");
    let o = rig.oneshot(&cfg);
    assert!(o.status.success(), "renewal:\n{}", text(&o));
    assert_ne!(std::fs::read(&kubeconfig).expect("kubeconfig"), first);
    assert_eq!(user_info(&rig.whoami(&kubeconfig)).0, "ci");

    // A lock: the next issuance is refused and the kubeconfig is left alone
    // (kube-apiserver reads no CRL; the certificate it holds expires).
    let before = std::fs::read(&kubeconfig).expect("kubeconfig");
    rig.auth.ok(&[
        "locks",
        "add",
        "--bot",
        "deployer",
        "--message",
        "incident 7",
    ]);
    let o = rig.oneshot(&cfg);
    assert!(!o.status.success(), "a locked bot renewed:\n{}", text(&o));
    assert!(text(&o).contains("locked"), "{}", text(&o));
    assert_eq!(std::fs::read(&kubeconfig).expect("kubeconfig"), before);
}

#[test]
fn nothing_is_issued_without_access_and_bad_input_names_the_field() {
    let rig = Rig::start();

    // A role that does not select the cluster's labels: nothing issued or written.
    let cfg = rig.config("outsider", "kube-dev", "prod", "");
    let o = rig.oneshot(&cfg);
    assert!(!o.status.success(), "issued without access:\n{}", text(&o));
    assert!(
        text(&o).contains("do not reach kubernetes cluster \"prod\""),
        "{}",
        text(&o)
    );
    let kube_dir = rig.work.path().join("outsider/kube");
    assert!(!kube_dir.join("kubeconfig.yaml").exists());
    let denied = rig.auth.audit("cert.denied");
    assert!(
        denied.iter().any(|e| e["fields"]["kind"] == "kubernetes"),
        "{denied:#?}"
    );

    // An unknown cluster, and a user the roles do not allow.
    let cfg = rig.config("lost", "kube-deploy", "nope", "");
    let o = rig.oneshot(&cfg);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("kubernetes cluster \"nope\" does not exist"),
        "{}",
        text(&o)
    );
    assert!(!rig.work.path().join("lost/kube/kubeconfig.yaml").exists());
    let cfg = rig.config("root-wanted", "kube-deploy", "prod", "    user: root\n");
    let o = rig.oneshot(&cfg);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("user \"root\" is not allowed") && text(&o).contains("ci"),
        "{}",
        text(&o)
    );
    assert!(
        !rig.work
            .path()
            .join("root-wanted/kube/kubeconfig.yaml")
            .exists()
    );

    // A config naming no cluster fails before any network call, naming the field.
    let cfg = rig.config("nameless", "kube-deploy", "prod", "");
    let text_cfg = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("    cluster: prod\n", "");
    std::fs::write(&cfg, text_cfg).expect("cfg");
    let o = rig.oneshot(&cfg);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("outputs[1].cluster"), "{}", text(&o));

    // No escalation: a bot that may write roles grants only the Kubernetes
    // users and groups it holds itself, on clusters its own roles reach.
    rig.auth.create(
        "kube-admin.yaml",
        "kind: role\nversion: v1\nmetadata: {name: kube-admin}\nspec:\n  allow:\n\
         \x20   rules: [{resources: [role], verbs: [create, update, read, list]}]\n\
         \x20   kubernetes_labels: {env: prod}\n    kubernetes_groups: [deployers]\n\
         \x20   kubernetes_users: [ci]\n",
    );
    let cfg = rig.config("kadmin", "kube-admin", "prod", "");
    let o = rig.oneshot(&cfg);
    assert!(o.status.success(), "kadmin agent:\n{}", text(&o));
    let id = rig.work.path().join("kadmin/id/identity");
    let grant = |name: &str, groups: &str| {
        let p = rig.work.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "kind: role\nversion: v1\nmetadata: {{name: {name}}}\nspec:\n  allow:\n\
                 \x20   kubernetes_labels: {{env: prod}}\n    kubernetes_groups: {groups}\n"
            ),
        )
        .expect("write");
        rig.auth
            .remote(&id, &["create", "-f", p.to_str().expect("utf8")])
    };
    let o = grant("wider", "[deployers, cluster-admins]");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("kubernetes_groups \"cluster-admins\""),
        "{}",
        text(&o)
    );
    let o = grant("same", "[deployers]");
    assert!(o.status.success(), "{}", text(&o));

    // Resources: a server that is not an https URL, a CA that is not PEM.
    for (server, ca, field) in [
        (
            "http://10.0.0.1:6443",
            rig.api.ca_pem.as_str(),
            "spec.server",
        ),
        (
            "https://admin:pw@10.0.0.1",
            rig.api.ca_pem.as_str(),
            "spec.server",
        ),
        (
            rig.api.url.as_str(),
            "not a certificate",
            "spec.ca_file_pem",
        ),
    ] {
        let p = rig.work.path().join("bad.yaml");
        std::fs::write(&p, rig.cluster_yaml("bad", server, ca)).expect("write");
        let o = rig.auth.admin(&["create", "-f", p.to_str().expect("utf8")]);
        assert_eq!(o.status.code(), Some(2), "{server}: {}", text(&o));
        assert!(text(&o).contains(field), "{field}: {}", text(&o));
    }
    let o = rig.auth.admin(&["get", "kubernetes_cluster", "bad"]);
    assert!(!o.status.success(), "a bad cluster was stored");
}

/// Go's `crypto/x509` (kubectl here; Terraform, Vault and kube-apiserver
/// alike) refuses a whole certificate when any extension OID has an arc
/// above 2^31-1. The `identity` output's certificate must load in Go: a
/// Go-based API server trusting the client CA authenticates the bot with it.
#[test]
fn go_clients_load_the_identity_output_certificate() {
    let rig = Rig::start();
    let client_ca = rig.auth.ok(&["ca", "export", "--type", "client"]);
    let api = KubeApiServer::start(&client_ca);
    let cfg = rig.config("gobot", "kube-deploy", "prod", "");
    let o = rig.oneshot(&cfg);
    assert!(o.status.success(), "agent:\n{}", text(&o));
    let id = rig.work.path().join("gobot/id");
    let kubeconfig = rig.work.path().join("identity-kubeconfig.yaml");
    let ca_file = rig.work.path().join("api-ca.pem");
    std::fs::write(&ca_file, &api.ca_pem).expect("write CA");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: {server:?}, certificate-authority: {ca:?}}}}}]\n\
             users: [{{name: u, user: {{client-certificate: {crt:?}, client-key: {key:?}}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n",
            server = api.url,
            ca = ca_file.display().to_string(),
            crt = id.join("tls.crt").display().to_string(),
            key = id.join("tls.key").display().to_string(),
        ),
    )
    .expect("write kubeconfig");
    let o = rig.kubectl(&kubeconfig, &["get", "--raw", "/version"]);
    assert!(
        o.status.success(),
        "kubectl with the identity output's tls.crt:\n{}",
        text(&o)
    );
    let (user, groups) = user_info(&rig.whoami(&kubeconfig));
    assert_eq!(user, "gobot", "the identity certificate's CN is the bot");
    assert!(
        groups.contains(&"system:authenticated".to_string()),
        "{groups:?}"
    );
}
