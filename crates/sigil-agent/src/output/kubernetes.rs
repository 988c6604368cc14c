//! Output `kubernetes`: a kubeconfig for one `kubernetes_cluster`.
//!
//! Writes `kubeconfig.yaml` (a key file: 0600, or the destination's `mode`):
//! the cluster's API server and the CA that signs its serving certificate
//! (from the resource), and an embedded client certificate and key from the
//! cluster's `kubernetes` CA, CN = the user and O = the groups the bot's roles
//! give there — what kube-apiserver's x509 authentication (`--client-ca-file`)
//! reads. `kubectl --kubeconfig DIR/kubeconfig.yaml` uses it as is.
//! Re-issued at every renewal: a lock stops that, and the certificate expires
//! with the credential TTL.

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::{IssueKubernetesCertRequest, KubernetesCert};

use super::{Output, OutputContext};
use crate::config::OutputConfig;
use crate::destination::Destination;

/// The file this output writes.
pub const KUBECONFIG: &str = "kubeconfig.yaml";

pub struct KubernetesOutput {
    dest: Box<dyn Destination>,
    cluster: String,
    user: Option<String>,
    reload_command: Vec<String>,
}

impl KubernetesOutput {
    pub fn from_config(o: &OutputConfig, dest: Box<dyn Destination>) -> anyhow::Result<Self> {
        // The config's validation named the field; this is the same check.
        let cluster = o
            .cluster
            .clone()
            .context("a kubernetes output needs `cluster`")?;
        Ok(KubernetesOutput {
            dest,
            cluster,
            user: o.user.clone(),
            reload_command: o.reload_command.clone(),
        })
    }
}

#[async_trait]
impl Output for KubernetesOutput {
    fn describe(&self) -> String {
        format!(
            "kubernetes (cluster {}) → {}",
            self.cluster,
            self.dest.describe()
        )
    }

    fn destination(&self) -> &dyn Destination {
        self.dest.as_ref()
    }

    fn reload_command(&self) -> &[String] {
        &self.reload_command
    }

    async fn generate(&self, mut ctx: OutputContext<'_>) -> anyhow::Result<()> {
        let key = TlsKeyPair::generate()?;
        let resp = ctx
            .client
            .issue_kubernetes_cert(IssueKubernetesCertRequest {
                cluster: self.cluster.clone(),
                public_key_spki: key.spki_der(),
                user: self.user.clone().unwrap_or_default(),
                ttl_seconds: ctx.ttl.as_secs(),
            })
            .await
            .map_err(crate::status_error)
            .with_context(|| {
                format!(
                    "requesting a certificate for kubernetes cluster {:?}",
                    self.cluster
                )
            })?
            .into_inner();
        let text = kubeconfig(&resp, &key.to_pkcs8_pem())?;
        // One file holding the key: written whole, owner-only, atomically.
        self.dest.write(KUBECONFIG, text.as_bytes(), true)?;
        tracing::info!(cluster = %resp.cluster_name, user = %resp.user, groups = ?resp.groups,
            "kubeconfig written");
        Ok(())
    }
}

/// The kubeconfig text: one cluster, one user, one context (current).
pub fn kubeconfig(c: &KubernetesCert, key_pem: &str) -> anyhow::Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_entry = format!("{}@{}", c.user, c.cluster_name);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": c.cluster_name,
            "cluster": {
                "server": c.server,
                "certificate-authority-data": b64(&c.server_ca_pem),
            },
        }],
        "users": [{
            "name": user_entry,
            "user": {
                "client-certificate-data": b64(&c.cert_pem),
                "client-key-data": b64(key_pem),
            },
        }],
        "contexts": [{
            "name": c.cluster_name,
            "context": {"cluster": c.cluster_name, "user": user_entry},
        }],
        "current-context": c.cluster_name,
    });
    let body = serde_norway::to_string(&doc).context("encoding the kubeconfig")?;
    Ok(format!(
        "# Written by the Sigil agent (kubernetes output); rewritten on every renewal.\n\
         # Use: kubectl --kubeconfig THIS_FILE …   (user {:?}, groups {:?})\n{body}",
        c.user, c.groups
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_has_the_cluster_and_embedded_credentials() {
        let c = KubernetesCert {
            cert_pem: "CERT".into(),
            user: "ci".into(),
            groups: vec!["deployers".into()],
            server: "https://10.0.0.1:6443".into(),
            server_ca_pem: "CA".into(),
            cluster_name: "prod".into(),
            ..Default::default()
        };
        let text = kubeconfig(&c, "KEY").unwrap();
        let v: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(v["current-context"], "prod");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["name"], "ci@prod");
        assert_eq!(v["users"][0]["user"]["client-certificate-data"], "Q0VSVA==");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["contexts"][0]["context"]["user"], "ci@prod");
    }
}
