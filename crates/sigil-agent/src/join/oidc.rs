//! Join method `oidc`: an ID token from any OIDC issuer, read from a file
//! (`onboarding.oidc.token_path`) or an environment variable
//! (`onboarding.oidc.token_env_var_name`). Also the shared helpers of the
//! ID-token provers: the token name and reading a JWT from a file or a variable.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sigil_proto::v1::JoinInit;

use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

/// Longest ID token accepted from the platform (real ones are a few KiB).
pub(super) const MAX_JWT_LEN: usize = 64 * 1024;

/// The token resource's name, which every ID-token method sends.
pub(super) fn token_name(o: &Onboarding) -> anyhow::Result<String> {
    o.token()?.filter(|t| !t.is_empty()).with_context(|| {
        format!(
            "onboarding.token: join_method {} needs the name of the join token (the token resource's metadata.name)",
            o.join_method
        )
    })
}

/// Trim `raw` and check that it has the shape of a compact JWT; `source`
/// says where it came from for the error.
pub(super) fn jwt_bytes(raw: &str, source: &str) -> anyhow::Result<Vec<u8>> {
    let t = raw.trim();
    if t.is_empty() {
        bail!("{source} is empty: it should hold the ID token (a JWT)");
    }
    if t.len() > MAX_JWT_LEN {
        bail!("{source} is longer than {MAX_JWT_LEN} bytes: not an ID token");
    }
    let parts = t.split('.').count();
    let charset_ok = t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    if parts != 3 || !charset_ok {
        bail!("{source} does not hold a JWT (three base64url parts separated by '.')");
    }
    Ok(t.as_bytes().to_vec())
}

/// Read the ID token from `path` (re-read at every join: platforms rotate it).
pub(super) fn jwt_from_file(path: &Path, field: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{field} {}: cannot read the ID token", path.display()))?;
    jwt_bytes(&text, &format!("{field} {}", path.display()))
}

/// Read the ID token from the environment variable `var`, looked up with
/// `env` (the process environment outside tests).
pub(super) fn jwt_from_env(
    var: &str,
    env: impl Fn(&str) -> Option<String>,
    hint: &str,
) -> anyhow::Result<Vec<u8>> {
    let value = env(var)
        .filter(|v| !v.trim().is_empty())
        .with_context(|| format!("environment variable {var} is not set: {hint}"))?;
    jwt_bytes(&value, &format!("environment variable {var}"))
}

pub(super) fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

enum Source {
    File(PathBuf),
    Env(String),
}

pub struct OidcProver {
    token: String,
    source: Source,
}

impl OidcProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        let token = token_name(o)?;
        let section = o.oidc.clone().unwrap_or_default();
        let source = match (section.token_path, section.token_env_var_name) {
            (Some(p), None) => Source::File(p),
            (None, Some(v)) if !v.is_empty() => Source::Env(v),
            _ => bail!(
                "onboarding.oidc: give exactly one of token_path (a file holding the ID token) and token_env_var_name"
            ),
        };
        Ok(OidcProver { token, source })
    }

    fn evidence(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<u8>> {
        match &self.source {
            Source::File(p) => jwt_from_file(p, "onboarding.oidc.token_path"),
            Source::Env(v) => jwt_from_env(
                v,
                env,
                "onboarding.oidc.token_env_var_name names it; export the ID token there",
            ),
        }
    }
}

#[async_trait::async_trait]
impl JoinProver for OidcProver {
    async fn init(&self, _ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        init.evidence = self.evidence(process_env)?;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";

    fn onboarding(yaml: &str) -> Onboarding {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn reads_the_token_file_fresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id-token");
        std::fs::write(&p, format!("{JWT}\n")).unwrap();
        let o = onboarding(&format!(
            "join_method: oidc\ntoken: ci-oidc\noidc: {{token_path: {}}}\n",
            p.display()
        ));
        let prover = OidcProver::new(&o).unwrap();
        assert_eq!(prover.token, "ci-oidc");
        assert_eq!(prover.evidence(|_| None).unwrap(), JWT.as_bytes());
        std::fs::write(&p, "a.b.c").unwrap();
        assert_eq!(prover.evidence(|_| None).unwrap(), b"a.b.c");
        std::fs::remove_file(&p).unwrap();
        let e = prover.evidence(|_| None).unwrap_err().to_string();
        assert!(e.contains("onboarding.oidc.token_path"), "{e}");
    }

    #[test]
    fn reads_the_named_variable() {
        let o = onboarding("join_method: oidc\ntoken: t\noidc: {token_env_var_name: MY_ID}\n");
        let prover = OidcProver::new(&o).unwrap();
        let got = prover
            .evidence(|k| (k == "MY_ID").then(|| format!(" {JWT} ")))
            .unwrap();
        assert_eq!(got, JWT.as_bytes());
        let e = prover.evidence(|_| None).unwrap_err().to_string();
        assert!(e.contains("MY_ID") && e.contains("not set"), "{e}");
    }

    #[test]
    fn needs_a_token_name_and_one_source() {
        let e = OidcProver::new(&onboarding(
            "join_method: oidc\noidc: {token_env_var_name: X}\n",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("onboarding.token"), "{e}");
        let e = OidcProver::new(&onboarding("join_method: oidc\ntoken: t\n"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("onboarding.oidc"), "{e}");
    }

    #[test]
    fn rejects_what_is_not_a_jwt() {
        for bad in [
            "", "  \n", "onlyone", "a.b", "a.b.c.d", "a.b.c d", "a.b.{c}",
        ] {
            assert!(jwt_bytes(bad, "x").is_err(), "{bad:?} accepted");
        }
        assert!(jwt_bytes(&"a.b.".repeat(MAX_JWT_LEN), "x").is_err());
        assert_eq!(jwt_bytes("a.b.c\r\n", "x").unwrap(), b"a.b.c");
        // `alg: none` tokens have an empty signature; the server refuses them.
        assert_eq!(jwt_bytes("a.b.", "x").unwrap(), b"a.b.");
    }
}
