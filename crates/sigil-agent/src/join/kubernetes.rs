//! Join method `kubernetes`: the pod's projected service-account token, read
//! from `onboarding.kubernetes.token_path` (default
//! `/var/run/secrets/tokens/sigil`) at every join, since the kubelet rotates it.

use std::path::PathBuf;

use sigil_proto::v1::JoinInit;

use super::oidc::{jwt_from_file, token_name};
use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

pub struct KubernetesProver {
    token: String,
    path: PathBuf,
}

impl KubernetesProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        Ok(KubernetesProver {
            token: token_name(o)?,
            path: o.kubernetes.clone().unwrap_or_default().token_path(),
        })
    }
}

#[async_trait::async_trait]
impl JoinProver for KubernetesProver {
    async fn init(&self, _ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        init.evidence = jwt_from_file(&self.path, "onboarding.kubernetes.token_path").map_err(
            |e| {
                e.context(
                    "mount a projected service-account token there (volume source serviceAccountToken with the cluster name as audience)",
                )
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::oidc::tests::JWT;
    use super::*;

    fn ctx() -> ProverContext {
        ProverContext {
            storage: PathBuf::from("/nonexistent"),
            cluster: "example.test".into(),
        }
    }

    #[tokio::test]
    async fn reads_the_projected_token_at_every_join() {
        let o: Onboarding =
            serde_norway::from_str("join_method: kubernetes\ntoken: k8s\n").unwrap();
        assert_eq!(
            KubernetesProver::new(&o).unwrap().path,
            PathBuf::from("/var/run/secrets/tokens/sigil")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let o: Onboarding = serde_norway::from_str(&format!(
            "join_method: kubernetes\ntoken: k8s\nkubernetes: {{token_path: {}}}\n",
            p.display()
        ))
        .unwrap();
        let prover = KubernetesProver::new(&o).unwrap();
        let mut init = JoinInit::default();
        let e = prover.init(&ctx(), &mut init).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("onboarding.kubernetes.token_path") && e.contains("projected"),
            "{e}"
        );
        std::fs::write(&p, JWT).unwrap();
        prover.init(&ctx(), &mut init).await.unwrap();
        assert_eq!(init.token, "k8s");
        assert_eq!(init.evidence, JWT.as_bytes());
        // Rotated by the kubelet: the next join sends the new token.
        std::fs::write(&p, "x.y.z\n").unwrap();
        prover.init(&ctx(), &mut init).await.unwrap();
        assert_eq!(init.evidence, b"x.y.z");
    }
}
