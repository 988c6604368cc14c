//! Tokens of the methods other than `token`: built from `sigil tokens add`
//! flags, and `sigil tokens test NAME --claims FILE`, which explains whether
//! claims would pass the token's allow rules — the same pure check the auth
//! service runs after verifying the evidence.

use std::path::Path;

use serde_json::{Value, json};
use sigil_types::{
    AllowRule, BoundKeypairJoin, BoundKeypairOnboarding, BoundKeypairRecovery, GithubJoin,
    GitlabJoin, IamJoin, JoinMethodKind, JoinRuleDecision, KubernetesJoin, OidcJoin, Token,
    TokenSpec, TpmJoin,
};

use crate::cli::{Format, TokensAddArgs};
use crate::error::CliError;
use crate::output;

/// Parses `--allow field=glob,field=glob` into one rule entry.
pub fn parse_allow(s: &str) -> Result<AllowRule, CliError> {
    let mut rule = AllowRule::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--allow {s:?}: each field is FIELD=GLOB, e.g. repository=acme/infra,ref=refs/heads/main"
            ))
        })?;
        if rule
            .0
            .insert(k.trim().to_string(), v.trim().to_string())
            .is_some()
        {
            return Err(CliError::usage(format!(
                "--allow {s:?}: field {k:?} appears twice"
            )));
        }
    }
    if rule.0.is_empty() {
        return Err(CliError::usage("--allow needs at least one FIELD=GLOB"));
    }
    Ok(rule)
}

fn read(flag: &str, p: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| CliError::usage(format!("--{flag} {}: {e}", p.display())))
}

/// Flags that only some methods take, with the method each belongs to.
fn foreign_flags(args: &TokensAddArgs, method: JoinMethodKind) -> Option<&'static str> {
    use JoinMethodKind as M;
    let flags = [
        (
            "--enterprise-server-host",
            args.enterprise_server_host.is_some(),
            &[M::Github][..],
        ),
        (
            "--enterprise-slug",
            args.enterprise_slug.is_some(),
            &[M::Github][..],
        ),
        ("--domain", args.domain.is_some(), &[M::Gitlab][..]),
        (
            "--issuer",
            args.issuer.is_some(),
            &[M::Oidc, M::Kubernetes][..],
        ),
        (
            "--audience",
            args.audience.is_some(),
            &[M::Oidc, M::Kubernetes][..],
        ),
        (
            "--static-jwks-file",
            args.static_jwks_file.is_some(),
            &[M::Kubernetes][..],
        ),
        (
            "--initial-public-key-file",
            args.initial_public_key_file.is_some(),
            &[M::BoundKeypair][..],
        ),
        (
            "--recovery-limit",
            args.recovery_limit.is_some(),
            &[M::BoundKeypair][..],
        ),
        (
            "--rotate-after",
            args.rotate_after.is_some(),
            &[M::BoundKeypair][..],
        ),
        (
            "--ekcert-ca-file",
            !args.ekcert_ca_files.is_empty(),
            &[M::Tpm][..],
        ),
        (
            "--allow",
            !args.allow.is_empty(),
            &[M::Github, M::Gitlab, M::Oidc, M::Kubernetes, M::Iam, M::Tpm][..],
        ),
        (
            "--name",
            args.name.is_some(),
            &[
                M::BoundKeypair,
                M::Github,
                M::Gitlab,
                M::Oidc,
                M::Kubernetes,
                M::Iam,
                M::Tpm,
            ][..],
        ),
    ];
    flags
        .into_iter()
        .find(|(_, set, methods)| *set && !methods.contains(&method))
        .map(|(flag, _, _)| flag)
}

/// The token spec `sigil tokens add` sends for a method other than `token`.
pub fn spec_from_flags(args: &TokensAddArgs) -> Result<TokenSpec, CliError> {
    let method = JoinMethodKind::from_name(&args.join_method).ok_or_else(|| {
        CliError::usage(format!(
            "--join-method {:?} is not a join method; use one of {}",
            args.join_method,
            JoinMethodKind::ALL.map(|m| m.as_str()).join(", ")
        ))
    })?;
    if let Some(flag) = foreign_flags(args, method) {
        return Err(CliError::usage(format!(
            "{flag} does not apply to --join-method {method}"
        )));
    }
    let allow = args
        .allow
        .iter()
        .map(|a| parse_allow(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = TokenSpec::new(&args.bot, method);
    match method {
        JoinMethodKind::Token => {}
        JoinMethodKind::Github => {
            spec.github = Some(GithubJoin {
                allow,
                enterprise_server_host: args.enterprise_server_host.clone(),
                enterprise_slug: args.enterprise_slug.clone(),
            })
        }
        JoinMethodKind::Gitlab => {
            spec.gitlab = Some(GitlabJoin {
                allow,
                domain: args.domain.clone(),
            })
        }
        JoinMethodKind::Oidc => {
            spec.oidc = Some(OidcJoin {
                issuer: args.issuer.clone().ok_or_else(|| {
                    CliError::usage("--join-method oidc needs --issuer https://...")
                })?,
                audience: args.audience.clone(),
                allow,
            })
        }
        JoinMethodKind::Kubernetes => {
            let static_jwks = match &args.static_jwks_file {
                Some(p) => Some(read("static-jwks-file", p)?),
                None => None,
            };
            spec.kubernetes = Some(KubernetesJoin {
                static_jwks,
                issuer: args.issuer.clone(),
                audience: args.audience.clone(),
                allow,
            })
        }
        JoinMethodKind::Iam => spec.iam = Some(IamJoin { allow }),
        JoinMethodKind::Tpm => {
            let ekcert_allowed_cas = args
                .ekcert_ca_files
                .iter()
                .map(|p| read("ekcert-ca-file", p))
                .collect::<Result<Vec<_>, _>>()?;
            spec.tpm = Some(TpmJoin {
                allow,
                ekcert_allowed_cas,
            })
        }
        JoinMethodKind::BoundKeypair => {
            let initial_public_key = match &args.initial_public_key_file {
                Some(p) => Some(read("initial-public-key-file", p)?),
                None => None,
            };
            let rotate_after = match &args.rotate_after {
                Some(t) => Some(
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            CliError::usage(format!(
                                "--rotate-after {t:?}: not an RFC 3339 time ({e}), e.g. 2027-01-01T00:00:00Z"
                            ))
                        })?,
                ),
                None => None,
            };
            spec.bound_keypair = Some(BoundKeypairJoin {
                onboarding: BoundKeypairOnboarding {
                    initial_public_key,
                    // The server generates one when no key is given.
                    registration_secret: None,
                    must_register_before: None,
                },
                recovery: BoundKeypairRecovery {
                    limit: args.recovery_limit.unwrap_or(1),
                },
                rotate_after,
            })
        }
    }
    Ok(spec)
}

/// What `sigil tokens test` decided, for text and JSON output.
pub fn test_report(token: &Token, claims: &Value) -> Result<(Value, JoinRuleDecision), CliError> {
    let attrs = token
        .spec
        .attributes_from_claims(claims)
        .map_err(|e| CliError::usage(format!("token {:?}: {e}", token.metadata.name)))?;
    let d = token.spec.evaluate(&attrs);
    let report = json!({
        "token": token.metadata.name,
        "join_method": token.spec.join_method.as_str(),
        "bot": token.spec.bot_name,
        "allowed": d.is_allowed(),
        "matched_rule": d.matched_rule,
        "explanation": d.explanation,
        "attributes": attrs,
    });
    Ok((report, d))
}

/// Text form: the verdict, then one line per rule.
pub fn test_text(report: &Value, d: &JoinRuleDecision) -> String {
    let mut out = vec![if d.is_allowed() {
        format!(
            "accepted: token {} would let this join as bot {}",
            report["token"], report["bot"]
        )
    } else {
        format!("denied: no allow rule of token {} matches", report["token"])
    }];
    out.extend(d.explanation.iter().map(|l| format!("  {l}")));
    if let Some(attrs) = report["attributes"].as_object() {
        out.push("join attributes:".into());
        out.extend(
            attrs
                .iter()
                .map(|(k, v)| format!("  {k} = {}", v.as_str().unwrap_or_default())),
        );
    }
    out.join("\n") + "\n"
}

/// Prints the report; exit 3 when denied.
pub fn print_test(report: &Value, d: &JoinRuleDecision, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::out(&output::json(report)?)?,
        Format::Text => output::out(&test_text(report, d))?,
    }
    if d.is_allowed() {
        Ok(())
    } else {
        Err(CliError::denied(format!(
            "token {} would refuse these claims",
            report["token"]
        ))
        .into())
    }
}

/// Reads a claims file (`-` = stdin) as a JSON object.
pub fn read_claims(p: &Path) -> Result<Value, CliError> {
    let text = if p == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::usage(format!("--claims -: {e}")))?
    } else {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::usage(format!("--claims {}: {e}", p.display())))?
    };
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("--claims {}: not JSON ({e})", p.display())))?;
    if !v.is_object() {
        return Err(CliError::usage(format!(
            "--claims {}: must be a JSON object of claims",
            p.display()
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_flags_parse() {
        let r = parse_allow("repository=acme/infra, ref=refs/heads/*").unwrap();
        assert_eq!(r.0["repository"], "acme/infra");
        assert_eq!(r.0["ref"], "refs/heads/*");
        assert!(parse_allow("repository").is_err());
        assert!(parse_allow("a=1,a=2").is_err());
        assert!(parse_allow(",").is_err());
    }
}
