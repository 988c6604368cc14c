//! Join method `gitlab`: the CI job's ID token, from the variable named by
//! `onboarding.gitlab.token_env_var_name` (default `SIGIL_ID_TOKEN`, set by
//! an `id_tokens:` entry in `.gitlab-ci.yml`).

use sigil_proto::v1::JoinInit;

use super::oidc::{jwt_from_env, process_env, token_name};
use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

pub struct GitlabProver {
    token: String,
    var: String,
}

impl GitlabProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        Ok(GitlabProver {
            token: token_name(o)?,
            var: o.gitlab.clone().unwrap_or_default().token_env_var_name(),
        })
    }

    fn evidence(
        &self,
        cluster: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Vec<u8>> {
        let hint = format!(
            "add `id_tokens: {{{}: {{aud: {cluster}}}}}` to the job in .gitlab-ci.yml",
            self.var
        );
        jwt_from_env(&self.var, env, &hint)
    }
}

#[async_trait::async_trait]
impl JoinProver for GitlabProver {
    async fn init(&self, ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        init.evidence = self.evidence(&ctx.cluster, process_env)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::oidc::tests::JWT;
    use super::*;

    #[test]
    fn default_and_custom_variable() {
        let o: Onboarding = serde_norway::from_str("join_method: gitlab\ntoken: ci\n").unwrap();
        let p = GitlabProver::new(&o).unwrap();
        assert_eq!(p.var, "SIGIL_ID_TOKEN");
        let got = p
            .evidence("example.test", |k| {
                (k == "SIGIL_ID_TOKEN").then(|| JWT.to_string())
            })
            .unwrap();
        assert_eq!(got, JWT.as_bytes());
        let e = p
            .evidence("example.test", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SIGIL_ID_TOKEN")
                && e.contains(".gitlab-ci.yml")
                && e.contains("aud: example.test"),
            "{e}"
        );

        let o: Onboarding = serde_norway::from_str(
            "join_method: gitlab\ntoken: ci\ngitlab: {token_env_var_name: OTHER}\n",
        )
        .unwrap();
        let p = GitlabProver::new(&o).unwrap();
        let e = p
            .evidence("c", |k| (k == "SIGIL_ID_TOKEN").then(|| JWT.to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTHER"), "{e}");
        let e = p
            .evidence("c", |_| Some("not a token".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold a JWT"), "{e}");
    }
}
