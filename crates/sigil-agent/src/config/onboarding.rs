//! `onboarding:` — how the agent proves itself on its first join (and, for
//! delegated methods, at every renewal). `token` names the join token: for
//! `join_method: token` it is the single-use secret itself; for every other
//! method it is the token resource's plain name. Each method has its own
//! optional section for the evidence it reads.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where a Kubernetes pod's projected service-account token is mounted by default.
pub const DEFAULT_KUBERNETES_TOKEN_PATH: &str = "/var/run/secrets/tokens/sigil";
/// The GitLab CI variable that holds the ID token by default (`id_tokens:` name).
pub const DEFAULT_GITLAB_TOKEN_VAR: &str = "SIGIL_ID_TOKEN";
/// The TPM device used by default (the kernel's resource manager).
#[cfg_attr(not(feature = "tpm"), allow(dead_code))]
pub const DEFAULT_TPM_DEVICE: &str = "/dev/tpmrm0";

/// Join methods an agent can use.
pub const JOIN_METHODS: [&str; 8] = [
    "token",
    "bound_keypair",
    "kubernetes",
    "github",
    "gitlab",
    "oidc",
    "iam",
    "tpm",
];

#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Onboarding {
    #[serde(default = "default_join_method")]
    pub join_method: String,
    /// The token: its secret (`token` method) or its name (other methods).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding `token`.
    #[serde(default)]
    pub token_path: Option<PathBuf>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesOnboarding>,
    #[serde(default)]
    pub github: Option<GithubOnboarding>,
    #[serde(default)]
    pub gitlab: Option<GitlabOnboarding>,
    #[serde(default)]
    pub oidc: Option<OidcOnboarding>,
    #[serde(default)]
    pub iam: Option<IamOnboarding>,
    #[serde(default)]
    pub bound_keypair: Option<BoundKeypairOnboarding>,
    #[serde(default)]
    pub tpm: Option<TpmOnboarding>,
}

/// `kubernetes:` — the projected service-account token's file.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KubernetesOnboarding {
    /// Default [`DEFAULT_KUBERNETES_TOKEN_PATH`]; re-read at every join, as
    /// the kubelet rotates it.
    #[serde(default)]
    pub token_path: Option<PathBuf>,
}

impl KubernetesOnboarding {
    pub fn token_path(&self) -> PathBuf {
        self.token_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_TOKEN_PATH))
    }
}

/// `github:` — the ID token comes from the Actions runtime
/// (`ACTIONS_ID_TOKEN_REQUEST_URL` / `ACTIONS_ID_TOKEN_REQUEST_TOKEN`,
/// present when the workflow has `permissions: id-token: write`).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GithubOnboarding {}

/// `gitlab:` — the ID token is in an environment variable.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GitlabOnboarding {
    /// Default [`DEFAULT_GITLAB_TOKEN_VAR`].
    #[serde(default)]
    pub token_env_var_name: Option<String>,
}

impl GitlabOnboarding {
    pub fn token_env_var_name(&self) -> String {
        self.token_env_var_name
            .clone()
            .unwrap_or_else(|| DEFAULT_GITLAB_TOKEN_VAR.to_string())
    }
}

/// `oidc:` — an ID token from a file or an environment variable.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OidcOnboarding {
    #[serde(default)]
    pub token_path: Option<PathBuf>,
    #[serde(default)]
    pub token_env_var_name: Option<String>,
}

/// `iam:` — AWS credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or
/// the EC2 instance metadata service.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IamOnboarding {
    /// STS endpoint to sign for (default: the regional endpoint of
    /// `region`, or the global `https://sts.amazonaws.com`). The auth service
    /// only forwards to endpoints it allows.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// AWS region (default `AWS_REGION`, then `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
}

/// `bound_keypair:` — the agent's key lives in the storage directory; the
/// registration secret binds it to the token on the first join.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BoundKeypairOnboarding {
    #[serde(default)]
    pub registration_secret: Option<String>,
    #[serde(default)]
    pub registration_secret_path: Option<PathBuf>,
}

impl std::fmt::Debug for BoundKeypairOnboarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundKeypairOnboarding")
            .field(
                "registration_secret",
                &self.registration_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("registration_secret_path", &self.registration_secret_path)
            .finish()
    }
}

impl BoundKeypairOnboarding {
    /// The registration secret, if one was configured.
    pub fn registration_secret(&self) -> anyhow::Result<Option<String>> {
        if let Some(s) = &self.registration_secret {
            return Ok(Some(s.trim().to_string()));
        }
        if let Some(p) = &self.registration_secret_path {
            let s = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "onboarding.bound_keypair.registration_secret_path {}: cannot read it",
                    p.display()
                )
            })?;
            return Ok(Some(s.trim().to_string()));
        }
        Ok(None)
    }
}

/// `tpm:` — which TPM to use.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TpmOnboarding {
    /// Device path (default [`DEFAULT_TPM_DEVICE`]).
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// A TCTI string instead of a device, e.g. `swtpm:host=127.0.0.1,port=2321`.
    #[serde(default)]
    pub tcti: Option<String>,
}

impl std::fmt::Debug for Onboarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_name = self.join_method == "token";
        f.debug_struct("Onboarding")
            .field("join_method", &self.join_method)
            .field(
                "token",
                &self.token.as_ref().map(|t| {
                    if secret_name {
                        "<redacted>"
                    } else {
                        t.as_str()
                    }
                }),
            )
            .field("token_path", &self.token_path)
            .field("kubernetes", &self.kubernetes)
            .field("github", &self.github)
            .field("gitlab", &self.gitlab)
            .field("oidc", &self.oidc)
            .field("iam", &self.iam)
            .field("bound_keypair", &self.bound_keypair)
            .field("tpm", &self.tpm)
            .finish()
    }
}

fn default_join_method() -> String {
    "token".into()
}

impl Onboarding {
    /// A `token`-method onboarding from flags.
    pub fn with_token(
        join_method: Option<String>,
        token: Option<String>,
        token_path: Option<PathBuf>,
    ) -> Self {
        Onboarding {
            join_method: join_method.unwrap_or_else(default_join_method),
            token,
            token_path,
            ..Default::default()
        }
    }

    /// The token, read from `token_path` if that is how it was given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        if let Some(p) = &self.token_path {
            let t = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "onboarding.token_path (--token-path) {}: cannot read the token",
                    p.display()
                )
            })?;
            let t = t.trim();
            // An empty file is a set-up mistake (the token was never written
            // into it), not "no token": say which file and what belongs there.
            if t.is_empty() {
                bail!(
                    "onboarding.token_path (--token-path) {}: the file is empty; write the join token \
                     that `sigil bots add` (or `sigil tokens add`) printed into it",
                    p.display()
                );
            }
            return Ok(Some(t.to_string()));
        }
        Ok(None)
    }

    /// Delegated methods re-prove at every renewal; a token is reusable.
    pub fn is_delegated(&self) -> bool {
        !matches!(self.join_method.as_str(), "token" | "bound_keypair")
    }

    /// Checks that need no I/O: a known method, its section only, a token.
    pub fn validate(&self) -> anyhow::Result<()> {
        let m = self.join_method.as_str();
        if !JOIN_METHODS.contains(&m) {
            bail!(
                "onboarding.join_method: {m:?} is not a join method; use one of {}",
                JOIN_METHODS.join(", ")
            );
        }
        if self.token.is_some() && self.token_path.is_some() {
            bail!("onboarding: give token or token_path, not both");
        }
        let sections = [
            ("kubernetes", self.kubernetes.is_some()),
            ("github", self.github.is_some()),
            ("gitlab", self.gitlab.is_some()),
            ("oidc", self.oidc.is_some()),
            ("iam", self.iam.is_some()),
            ("bound_keypair", self.bound_keypair.is_some()),
            ("tpm", self.tpm.is_some()),
        ];
        for (name, set) in sections {
            if set && name != m {
                bail!(
                    "onboarding.{name}: this section is for join_method {name}, but join_method is {m}"
                );
            }
        }
        if m != "token" && self.token.is_none() && self.token_path.is_none() {
            bail!(
                "onboarding.token: join_method {m} needs the name of the join token (the token resource's metadata.name)"
            );
        }
        if let Some(o) = &self.oidc {
            match (&o.token_path, &o.token_env_var_name) {
                (Some(_), Some(_)) | (None, None) => {
                    bail!("onboarding.oidc: give exactly one of token_path and token_env_var_name")
                }
                _ => {}
            }
        }
        if m == "oidc" && self.oidc.is_none() {
            bail!(
                "onboarding.oidc: join_method oidc needs token_path or token_env_var_name for the ID token"
            );
        }
        if let Some(b) = &self.bound_keypair
            && b.registration_secret.is_some()
            && b.registration_secret_path.is_some()
        {
            bail!(
                "onboarding.bound_keypair: give registration_secret or registration_secret_path, not both"
            );
        }
        if let Some(t) = &self.tpm
            && t.device.is_some()
            && t.tcti.is_some()
        {
            bail!("onboarding.tpm: give device or tcti, not both");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Onboarding {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn delegated_methods_need_a_token_name_and_their_own_section() {
        let o = parse("join_method: github\ntoken: ci-github\n");
        o.validate().unwrap();
        assert!(o.is_delegated());
        let o = parse("join_method: github\n");
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("onboarding.token")
        );
        let o = parse("join_method: github\ntoken: x\ngitlab: {}\n");
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("onboarding.gitlab")
        );
        let o = parse("join_method: nope\n");
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("not a join method")
        );
        let o = parse("join_method: oidc\ntoken: x\n");
        assert!(o.validate().is_err());
        let o = parse("join_method: oidc\ntoken: x\noidc: {token_env_var_name: ID}\n");
        o.validate().unwrap();
        let o = parse("join_method: token\n");
        o.validate().unwrap();
        assert!(!o.is_delegated());
        assert!(serde_norway::from_str::<Onboarding>("kubernetes: {path: x}\n").is_err());
    }

    #[test]
    fn an_empty_token_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sigil-token");
        std::fs::write(&path, " \n").unwrap();
        let o = Onboarding::with_token(None, None, Some(path.clone()));
        let e = o.token().unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("empty") && e.contains("--token-path"), "{e}");

        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        assert_eq!(o.token().unwrap().as_deref(), Some("s3cr3t-token"));

        let missing = dir.path().join("missing");
        let o = Onboarding::with_token(None, None, Some(missing.clone()));
        let e = format!("{:#}", o.token().unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn debug_hides_secrets_only() {
        let o = parse("join_method: token\ntoken: s3cr3t-value\n");
        assert!(!format!("{o:?}").contains("s3cr3t"));
        let o = parse("join_method: github\ntoken: ci-github\n");
        assert!(format!("{o:?}").contains("ci-github"));
        let o = parse(
            "join_method: bound_keypair\ntoken: vm\nbound_keypair: {registration_secret: hush-hush-hush-1}\n",
        );
        assert!(!format!("{o:?}").contains("hush"));
    }
}
