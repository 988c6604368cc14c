//! Join methods, agent side: how this machine proves what it is. One
//! `JoinProver` per file, chosen by `onboarding.join_method`.

mod bound_keypair;
mod github;
mod gitlab;
mod iam;
mod kubernetes;
mod oidc;
mod token;
#[cfg(feature = "tpm")]
mod tpm;

use std::path::PathBuf;

use async_trait::async_trait;
use sigil_proto::v1::{Credentials, JoinInit};

use crate::config::Onboarding;

/// What a prover may need besides its own config.
#[derive(Clone, Debug)]
pub struct ProverContext {
    /// The agent's storage directory (bound_keypair keeps its key and join
    /// state there).
    pub storage: PathBuf,
    /// The cluster name, learnt from the pinned auth service before the
    /// join: the audience the OIDC methods ask their platform for.
    pub cluster: String,
}

/// The agent half of a join method.
#[async_trait]
pub trait JoinProver: Send + Sync {
    /// Fill in the method's evidence in the first message (`token` and
    /// `evidence`); `join_method` is set by the caller.
    async fn init(&self, ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()>;
    /// Answer a server challenge (challenge-response methods).
    async fn answer(&self, _ctx: &ProverContext, _challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::bail!("this join method does not expect challenges")
    }
    /// After a successful join: keep what the method needs next time
    /// (bound_keypair's signed join state).
    fn joined(&self, _ctx: &ProverContext, _creds: &Credentials) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The prover for the configured method.
pub fn prover(onboarding: &Onboarding) -> anyhow::Result<Box<dyn JoinProver>> {
    match onboarding.join_method.as_str() {
        "token" => Ok(Box::new(token::TokenProver::new(onboarding)?)),
        "github" => Ok(Box::new(github::GithubProver::new(onboarding)?)),
        "gitlab" => Ok(Box::new(gitlab::GitlabProver::new(onboarding)?)),
        "oidc" => Ok(Box::new(oidc::OidcProver::new(onboarding)?)),
        "kubernetes" => Ok(Box::new(kubernetes::KubernetesProver::new(onboarding)?)),
        "bound_keypair" => Ok(Box::new(bound_keypair::BoundKeypairProver::new(
            onboarding,
        )?)),
        #[cfg(feature = "tpm")]
        "tpm" => Ok(Box::new(tpm::TpmProver::new(onboarding)?)),
        #[cfg(not(feature = "tpm"))]
        "tpm" => {
            anyhow::bail!("this sigil was built without TPM support; rebuild with --features tpm")
        }
        "iam" => Ok(Box::new(iam::IamProver::new(onboarding)?)),
        other => anyhow::bail!("join method {other:?} is not available in this build"),
    }
}

#[cfg(all(test, not(feature = "tpm")))]
mod tests {
    #[test]
    fn tpm_without_the_feature_says_how_to_get_it() {
        let o = crate::config::Onboarding {
            join_method: "tpm".into(),
            ..Default::default()
        };
        let err = super::prover(&o)
            .err()
            .expect("no TPM support in this build");
        assert!(err.to_string().contains("--features tpm"), "{err}");
    }
}
