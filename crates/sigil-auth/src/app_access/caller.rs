//! Who a proxied request's caller is, from the certificate the proxy saw
//! on the connection: a Sigil identity (issued by the client CA) or an
//! X.509-SVID (issued by the SPIFFE CA), which is authorised as the bot
//! instance it was issued to (its holder, recorded in the SVID).

use sigil_pki::ClientIdentity;
use time::OffsetDateTime;
use tonic::Status;

use crate::state::AuthState;

/// The caller, before any policy.
pub(super) struct Caller {
    /// For an SVID: its holder's bot and instance (no roles: the current
    /// ones are looked up, as for every caller).
    pub id: ClientIdentity,
    pub not_after: OffsetDateTime,
    /// Set when the caller presented an X.509-SVID: its SPIFFE ID and serial.
    pub svid: Option<Svid>,
}

/// The X.509-SVID a caller presented.
pub(super) struct Svid {
    pub spiffe_id: String,
    /// As the certificate has it (hex, leading zeros stripped).
    pub serial_hex: String,
}

/// The caller of `cert_der`, or why it is refused (with what is known of it).
pub(super) fn identify(
    state: &AuthState,
    cert_der: &[u8],
) -> Result<Result<Caller, (ClientIdentity, String)>, Status> {
    let cas = state.cas();
    // The proxy's handshake verified the chain; verified again here, so a
    // proxy cannot name a caller with a certificate it made itself.
    let by = |set: &[std::sync::Arc<sigil_pki::X509Ca>]| {
        set.iter()
            .any(|ca| sigil_pki::issued_by(cert_der, ca.cert_der()))
    };
    if by(&cas.spiffe.trusted) {
        let f = sigil_pki::read_x509_svid(cert_der)
            .map_err(|_| Status::invalid_argument("caller_cert_der: not an X.509-SVID"))?;
        let Some(h) = f.holder else {
            return Ok(Err((
                unnamed(state),
                format!(
                    "the X.509-SVID {} names no bot instance (issued by an admin, or before SVIDs recorded their holder): use the agent's SVID or identity output",
                    f.spiffe_id
                ),
            )));
        };
        let id = ClientIdentity {
            bot: h.bot,
            bot_uid: h.bot_uid,
            instance_id: h.instance_id,
            ..unnamed(state)
        };
        return Ok(Ok(Caller {
            id,
            not_after: f.info.not_after,
            svid: Some(Svid {
                spiffe_id: f.spiffe_id,
                serial_hex: f.info.serial_hex,
            }),
        }));
    }
    if !by(&cas.client.trusted) {
        // A refusal, not an error: the proxy keeps a connection on errors
        // (no answer) but must close it when, say, a rotation dropped the CA
        // of the caller's SVID or identity.
        let named = sigil_pki::read_client_identity(cert_der)
            .map(|(id, _)| id)
            .or_else(|_| sigil_pki::read_x509_svid(cert_der).map(|f| holder_of(state, &f)))
            .map_err(|_| {
                Status::invalid_argument("caller_cert_der: not a Sigil identity or X.509-SVID")
            })?;
        return Ok(Err((
            named,
            "the client certificate was not issued by a trusted client or SPIFFE CA".into(),
        )));
    }
    let (id, info) = sigil_pki::read_client_identity(cert_der)
        .map_err(|_| Status::invalid_argument("caller_cert_der: not a Sigil identity"))?;
    Ok(Ok(Caller {
        id,
        not_after: info.not_after,
        svid: None,
    }))
}

/// An SVID caller with its holder instance's join method and verified join
/// attributes (from its newest join, not a renewal), so role login templates
/// render as for the holder's own identity (login locks apply).
pub(super) fn with_join_facts(
    mut caller: ClientIdentity,
    inst: &sigil_types::BotInstance,
) -> ClientIdentity {
    let joined = inst
        .spec
        .authentications
        .iter()
        .find(|a| !a.method.ends_with("+renewal"))
        .or(inst.spec.initial_authentication.as_ref());
    caller.join_method = inst.spec.join_method.clone();
    if let Some(a) = joined {
        caller.join_method = a.method.clone();
        caller.join_attributes = a.attributes.clone();
    }
    caller
}

/// The holder an (untrusted) SVID names, for the audit only.
fn holder_of(state: &AuthState, f: &sigil_pki::SvidFacts) -> ClientIdentity {
    match &f.holder {
        Some(h) => ClientIdentity {
            bot: h.bot.clone(),
            bot_uid: h.bot_uid.clone(),
            instance_id: h.instance_id.clone(),
            ..unnamed(state)
        },
        None => unnamed(state),
    }
}

/// An identity naming nobody yet, in this cluster: not renewable and not
/// delegated, so only its instance's existence is checked, never a
/// renewal generation (an SVID has none).
fn unnamed(state: &AuthState) -> ClientIdentity {
    ClientIdentity {
        cluster: state.cluster.clone(),
        bot: String::new(),
        bot_uid: String::new(),
        instance_id: String::new(),
        roles: Vec::new(),
        generation: 0,
        renewable: false,
        join_method: String::new(),
        logins: Vec::new(),
        delegated: false,
        join_attributes: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_types::{Authentication, BotInstanceSpec, Metadata, Resource};

    fn authn(method: &str, repo: &str) -> Authentication {
        Authentication {
            time: OffsetDateTime::UNIX_EPOCH,
            method: method.into(),
            remote_addr: String::new(),
            public_key_sha256: String::new(),
            generation: 1,
            attributes: [("repository".to_string(), repo.to_string())].into(),
        }
    }

    #[test]
    fn an_svid_caller_takes_its_holders_newest_join_facts() {
        let mut spec = BotInstanceSpec {
            join_method: "github".into(),
            ..Default::default()
        };
        spec.push_authentication(authn("github", "org/old"), 10);
        spec.push_authentication(authn("github", "org/new"), 10);
        spec.push_authentication(authn("github+renewal", ""), 10);
        let inst = Resource::new(Metadata::named("i1"), spec);
        let svid_caller = ClientIdentity {
            cluster: "example.test".into(),
            bot: "ci".into(),
            bot_uid: String::new(),
            instance_id: "i1".into(),
            roles: Vec::new(),
            generation: 0,
            renewable: false,
            join_method: String::new(),
            logins: Vec::new(),
            delegated: false,
            join_attributes: Default::default(),
        };
        let c = with_join_facts(svid_caller, &inst);
        assert_eq!(c.join_method, "github");
        assert_eq!(c.join_attributes["repository"], "org/new");
    }
}
