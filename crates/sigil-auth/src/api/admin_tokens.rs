//! Helpers of the admin verbs that mint tokens and locks: new token
//! secrets, method tokens from the CLI's flags, bounded lifetimes, and the
//! check of a name a caller addresses a resource by.

use std::time::Duration;

use sigil_proto::v1::AddTokenRequest;
use sigil_types::{JoinMethodKind, Metadata, Token, TokenSpec};
use time::OffsetDateTime;
use tonic::Status;

/// Longest lifetime an admin call may give a token or a lock.
pub const MAX_RESOURCE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `now + secs` for a resource's expiry (0: none), refusing lifetimes past
/// [`MAX_RESOURCE_TTL`] instead of overflowing a date.
pub(super) fn expiry(now: OffsetDateTime, secs: u64) -> Result<Option<OffsetDateTime>, Status> {
    if secs == 0 {
        return Ok(None);
    }
    let ttl = Duration::from_secs(secs);
    if ttl > MAX_RESOURCE_TTL {
        return Err(Status::invalid_argument(format!(
            "a lifetime of {secs} s is longer than the limit of {} s (10 years)",
            MAX_RESOURCE_TTL.as_secs()
        )));
    }
    Ok(now.checked_add(time::Duration::seconds(secs as i64)))
}

pub(super) fn invalid(e: sigil_types::ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A name the caller addresses a resource by, checked like any name. Tokens
/// may be named by their hash form, bot instances as `BOT/ID` or `ID`.
pub(super) fn check_ref(kind: &str, name: &str) -> Result<(), Status> {
    match kind {
        "token" => Ok(()),
        "bot_instance" => name
            .split('/')
            .try_for_each(|part| sigil_types::check_name(kind, part))
            .map_err(invalid),
        _ => sigil_types::check_name(kind, name).map_err(invalid),
    }
}

pub(super) fn ttl_or(secs: u64, default: Duration) -> Duration {
    if secs == 0 {
        default
    } else {
        Duration::from_secs(secs)
    }
}

/// A token for a method other than `token`: a plain name, the spec the
/// CLI built from its flags, an optional lifetime. A bound_keypair token
/// with neither a key nor a secret gets a generated registration secret,
/// returned once.
pub(super) fn method_token(r: &AddTokenRequest) -> Result<(Token, String), Status> {
    let mut spec: TokenSpec = serde_json::from_str(&r.spec_json)
        .map_err(|e| Status::invalid_argument(format!("token spec: {e}")))?;
    if spec.join_method.as_str() != r.join_method || spec.bot_name != r.bot {
        return Err(Status::invalid_argument(
            "the token spec disagrees with --join-method or --bot",
        ));
    }
    if r.name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "join method {} needs --name (the token's name, which the agent's onboarding.token refers to)",
            r.join_method
        )));
    }
    let mut secret = String::new();
    if let Some(b) = spec.bound_keypair.as_mut()
        && b.onboarding.initial_public_key.is_none()
        && b.onboarding.registration_secret.is_none()
    {
        let mut raw = [0u8; 16];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| Status::internal("no randomness"))?;
        secret = hex::encode(raw);
        b.onboarding.registration_secret = Some(secret.clone());
    }
    let expires = expiry(OffsetDateTime::now_utc(), r.ttl_seconds)?;
    let token = Token::new(
        Metadata {
            name: r.name.clone(),
            expires,
            ..Default::default()
        },
        spec,
    );
    token
        .validate()
        .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
    Ok((token, secret))
}

/// A fresh single-use join token: 128 random bits, hex.
pub(crate) fn new_token(bot: &str, ttl: Duration) -> Result<Token, Status> {
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| Status::internal("no randomness"))?;
    let expires = expiry(OffsetDateTime::now_utc(), ttl.as_secs())?;
    Ok(Token::new(
        Metadata {
            name: hex::encode(raw),
            expires,
            ..Default::default()
        },
        TokenSpec::new(bot, JoinMethodKind::Token),
    ))
}
