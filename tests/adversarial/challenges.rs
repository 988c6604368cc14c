//! The challenge–response of the `bound_keypair` join method spoken raw: a
//! stream that stops mid-challenge, answers signed over another nonce, by
//! another key, replayed from an earlier join. The bound key is an ECDSA
//! P-256 OpenSSH key made here (rcgen signs, DER signatures as the method
//! expects).

use crate::common::*;
use crate::harness::*;
use crate::tokens::join_denied;
use base64::Engine as _;
use rcgen::SigningKey as _;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{JoinChallengeResponse, JoinClientMessage, JoinInit};
use std::sync::{Arc, Mutex};
use tonic::Code;

static AUTH: Slot = Slot::new(None);
static SERIAL: Mutex<()> = Mutex::new(());

const PREFIX: &[u8] = b"sigil bound_keypair challenge v1\n";
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn auth() -> (Arc<Auth>, std::sync::MutexGuard<'static, ()>) {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    (shared(&AUTH, Auth::start), g)
}

/// An ECDSA P-256 key and its OpenSSH public line.
struct SshKey {
    key: rcgen::KeyPair,
    line: String,
}

fn ssh_key() -> SshKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let string = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    let mut blob = Vec::new();
    string(&mut blob, b"ecdsa-sha2-nistp256");
    string(&mut blob, b"nistp256");
    string(&mut blob, rcgen::PublicKeyData::der_bytes(&key));
    let line = format!(
        "ecdsa-sha2-nistp256 {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    SshKey { key, line }
}

/// A bot and a bound_keypair token `name` bound to `key`.
fn bound_token(auth: &Auth, name: &str, key: &SshKey) {
    auth.bot(&format!("{name}-bot"), &["svc"]);
    auth.create(
        &format!("{name}.yaml"),
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: {name}}}\nspec:\n  bot_name: {name}-bot\n  join_method: bound_keypair\n  bound_keypair: {{onboarding: {{initial_public_key: \"{}\"}}}}\n",
            key.line
        ),
    );
}

fn init(token: &str, public_line: &str) -> JoinInit {
    JoinInit {
        join_method: "bound_keypair".into(),
        token: token.into(),
        evidence: serde_json::json!({"public_key": public_line, "join_state": ""})
            .to_string()
            .into_bytes(),
        ..token_init("")
    }
}

fn answer(signer: &rcgen::KeyPair, challenge: &[u8]) -> Vec<u8> {
    let mut msg = PREFIX.to_vec();
    msg.extend_from_slice(challenge);
    let sig = signer.sign(&msg).expect("sign");
    serde_json::json!({"signature": B64URL.encode(sig)})
        .to_string()
        .into_bytes()
}

/// An interactive join: `respond` turns the server's challenge into the
/// answer (None: the client stops there). Returns the outcome and the
/// challenge seen.
fn join_interactive(
    auth: &Auth,
    init: JoinInit,
    respond: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> (Result<sigil_proto::v1::Credentials, tonic::Status>, Vec<u8>) {
    rt().block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<JoinClientMessage>(4);
        tx.send(JoinClientMessage {
            message: Some(ClientMsg::Init(init)),
        })
        .await
        .expect("send init");
        let mut client: AuthServiceClient<_> = auth_client(auth, None);
        let mut s = match client
            .join(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => return (Err(e), vec![]),
        };
        let mut tx = Some(tx);
        let mut seen = Vec::new();
        let mut respond = Some(respond);
        loop {
            match s.message().await {
                Err(e) => return (Err(e), seen),
                Ok(None) => return (Err(tonic::Status::internal("no result")), seen),
                Ok(Some(m)) => match m.message {
                    Some(ServerMsg::Result(c)) => return (Ok(c), seen),
                    Some(ServerMsg::Challenge(ch)) => {
                        seen = ch.payload.clone();
                        match respond.take().and_then(|f| f(&ch.payload)) {
                            Some(payload) => {
                                let t = tx.as_ref().expect("sender");
                                t.send(JoinClientMessage {
                                    message: Some(ClientMsg::ChallengeResponse(
                                        JoinChallengeResponse { payload },
                                    )),
                                })
                                .await
                                .expect("send answer");
                            }
                            // Stop mid-challenge: close the client stream.
                            None => drop(tx.take()),
                        }
                    }
                    None => {}
                },
            }
        }
    })
}

/// attack: tokens | a bound_keypair join stream that stops mid-challenge | Cancelled "the join was abandoned"; no instance; the token still joins afterwards
#[test]
fn stream_stops_mid_challenge() {
    let (auth, _g) = auth();
    let k = ssh_key();
    bound_token(&auth, "bk-stop", &k);
    let (r, challenge) = join_interactive(&auth, init("bk-stop", &k.line), |_| None);
    assert!(!challenge.is_empty(), "no challenge was sent");
    refused(r, Code::Cancelled, "the join was abandoned");
    assert!(generations(&auth, "bk-stop-bot").is_empty());
    let (r, _) = join_interactive(&auth, init("bk-stop", &k.line), |c| Some(answer(&k.key, c)));
    r.expect("the honest join after the abandoned one");
}

/// attack: tokens | a challenge answered by signing another nonce | PermissionDenied "join denied"; audited "signature"; no instance
#[test]
fn challenge_answered_for_another_nonce() {
    let (auth, _g) = auth();
    let k = ssh_key();
    bound_token(&auth, "bk-nonce", &k);
    join_denied(&auth, "signature", || {
        join_interactive(&auth, init("bk-nonce", &k.line), |c| {
            let mut v: serde_json::Value = serde_json::from_slice(c).expect("challenge json");
            v["nonce"] = serde_json::json!(B64URL.encode([7u8; 32]));
            Some(answer(&k.key, v.to_string().as_bytes()))
        })
        .0
    });
    assert!(generations(&auth, "bk-nonce-bot").is_empty());
}

/// attack: tokens | a challenge answered with a signature from an earlier join's challenge (replay) | PermissionDenied "join denied"; audited "signature"; no new instance
#[test]
fn challenge_answer_replayed() {
    let (auth, _g) = auth();
    let k = ssh_key();
    bound_token(&auth, "bk-replay", &k);
    // An eavesdropper's copy of an answer to a challenge the server sent.
    let (r, first) = join_interactive(&auth, init("bk-replay", &k.line), |_| None);
    refused(r, Code::Cancelled, "abandoned");
    let old = answer(&k.key, &first);
    join_denied(&auth, "signature", || {
        join_interactive(&auth, init("bk-replay", &k.line), |_| Some(old)).0
    });
    assert!(generations(&auth, "bk-replay-bot").is_empty());
}

/// attack: tokens | a challenge signed by a key other than the one presented | PermissionDenied "join denied"; audited "signature"; no instance
#[test]
fn challenge_signed_by_another_key() {
    let (auth, _g) = auth();
    let k = ssh_key();
    let other = ssh_key();
    bound_token(&auth, "bk-other", &k);
    join_denied(&auth, "signature", || {
        join_interactive(&auth, init("bk-other", &k.line), |c| {
            Some(answer(&other.key, c))
        })
        .0
    });
    assert!(generations(&auth, "bk-other-bot").is_empty());
}

/// attack: tokens | a bound_keypair join presenting a key that is not the token's | PermissionDenied "join denied"; audited "is not the key bound to the token"
#[test]
fn key_not_bound_to_the_token() {
    let (auth, _g) = auth();
    let k = ssh_key();
    let other = ssh_key();
    bound_token(&auth, "bk-unbound", &k);
    join_denied(&auth, "is not the key bound to the token", || {
        join_interactive(&auth, init("bk-unbound", &other.line), |c| {
            Some(answer(&other.key, c))
        })
        .0
    });
}

/// attack: tokens | bound_keypair evidence with an unknown field smuggled in | PermissionDenied "join denied"; audited "unknown field"
#[test]
fn evidence_with_an_unknown_field() {
    let (auth, _g) = auth();
    let k = ssh_key();
    bound_token(&auth, "bk-field", &k);
    let mut i = init("bk-field", &k.line);
    i.evidence = serde_json::json!({"public_key": k.line, "join_state": "", "admin": true})
        .to_string()
        .into_bytes();
    join_denied(&auth, "unknown field", || {
        join_interactive(&auth, i, |c| Some(answer(&k.key, c))).0
    });
}

/// attack: tokens | a recovery join with a forged join state (not the one the cluster signed last) | PermissionDenied "join denied"; audited "token locked"; one instance
#[test]
fn forged_join_state() {
    let (auth, _g) = auth();
    let k = ssh_key();
    bound_token(&auth, "bk-state", &k);
    let (r, _) = join_interactive(&auth, init("bk-state", &k.line), |c| {
        Some(answer(&k.key, c))
    });
    r.expect("the first join");
    let forged = format!(
        "{}.{}.{}",
        B64URL.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        B64URL.encode(r#"{"typ":"sigil-bound-keypair-join-state","token":"bk-state","seq":0}"#),
        B64URL.encode([1u8; 64])
    );
    let mut i = init("bk-state", &k.line);
    i.evidence = serde_json::json!({"public_key": k.line, "join_state": forged})
        .to_string()
        .into_bytes();
    join_denied(&auth, "token locked", || {
        join_interactive(&auth, i, |c| Some(answer(&k.key, c))).0
    });
    assert_eq!(generations(&auth, "bk-state-bot").len(), 1);
}
