//! Issue 10, classes 2, 8 and 9: identities belong to the bot that was issued
//! them (its uid), a superseded or removed credential is dead on every call,
//! and only strong keys are certified. Real `sigil` processes; the raw calls
//! use the agent's stored credential the way a thief holding a copy would.

mod common;

use common::*;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::{IssueIdentityRequest, JoinClientMessage, JoinInit, join_client_message};

fn credential(agent: &AgentDirs) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(agent.storage.join("credential.json")).unwrap())
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// An auth-service client presenting `cred` (a stored agent credential), or
/// no client certificate.
fn client(
    auth: &Auth,
    cred: Option<&serde_json::Value>,
) -> AuthServiceClient<tonic::transport::Channel> {
    let cert = cred.map(|c| sigil_agent::client::ClientCert {
        cert_pem: c["cert_pem"].as_str().unwrap(),
        key_pem: c["key_pem"].as_str().unwrap(),
    });
    let tls = sigil_agent::client::tls_config(std::slice::from_ref(&auth.pin), cert).unwrap();
    AuthServiceClient::new(sigil_agent::client::channel(&auth.addr(), tls).unwrap())
}

/// IssueIdentity with a fresh key, as the holder of `cred`.
fn issue_identity(auth: &Auth, cred: &serde_json::Value) -> Result<(), tonic::Status> {
    let spki = sigil_pki::TlsKeyPair::generate().unwrap().spki_der();
    runtime().block_on(async {
        client(auth, Some(cred))
            .issue_identity(IssueIdentityRequest {
                tls_public_key_spki: spki,
                ssh_public_key: String::new(),
                ttl_seconds: 600,
            })
            .await
            .map(|_| ())
    })
}

fn openssl_spki(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let key = dir.join("weak.pem");
    let der = dir.join("weak.der");
    assert!(
        run(
            "openssl",
            &[&["genpkey"][..], args, &["-out", key.to_str().unwrap()]].concat()
        )
        .status
        .success()
    );
    assert!(
        run(
            "openssl",
            &[
                "pkey",
                "-pubout",
                "-outform",
                "DER",
                "-in",
                key.to_str().unwrap(),
                "-out",
                der.to_str().unwrap()
            ]
        )
        .status
        .success()
    );
    std::fs::read(der).unwrap()
}

#[test]
fn a_recreated_bot_gets_none_of_the_removed_bots_tokens_or_identities() {
    let auth = Auth::start();
    let token = auth.bot("ci", &["deploy"]);
    let spare = {
        let out = auth.ok(&["tokens", "add", "--bot", "ci", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    let old = credential(&agent);
    let uid_of = |a: &Auth| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&a.ok(&["get", "bot/ci", "-o", "json"])).unwrap();
        v["spec"]["uid"]
            .as_str()
            .expect("bots have a uid")
            .to_string()
    };
    let old_uid = uid_of(&auth);
    // The uid is in the certificate, as `openssl` reads it.
    let crt = agent.out.join("tls.crt");
    let dump = run(
        "openssl",
        &["x509", "-noout", "-text", "-in", crt.to_str().unwrap()],
    );
    assert!(stdout(&dump).contains(&old_uid), "{}", stdout(&dump));

    auth.ok(&["bots", "rm", "ci"]);
    auth.ok(&["bots", "add", "ci", "--roles", "ci-role"]);
    let new_uid = uid_of(&auth);
    assert_ne!(old_uid, new_uid);
    // A uid in a document is never taken: the server's stays.
    let f = auth.dir.path().join("ci.yaml");
    std::fs::write(
        &f,
        format!("kind: bot\nversion: v1\nmetadata: {{name: ci}}\nspec: {{roles: [ci-role], uid: {old_uid}}}\n"),
    )
    .unwrap();
    auth.ok(&["create", "-f", f.to_str().unwrap(), "--force"]);
    assert_eq!(uid_of(&auth), new_uid);

    // The old bot's unused token died with it.
    let spare_agent = AgentDirs::new();
    let o = spare_agent.oneshot(&auth, Some(&spare));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // Its identity neither renews nor mints, through the agent or raw.
    let o = agent.oneshot(&auth, None);
    assert!(!o.status.success(), "{}", text(&o));
    let err = issue_identity(&auth, &old).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // Nothing was issued to the new bot from the old identity.
    assert!(auth.instances().is_empty(), "{:?}", auth.instances());
}

#[test]
fn a_superseded_credential_is_dead_on_every_call() {
    let auth = Auth::start();
    let token = auth.bot("svc", &["svc"]);
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    let gen1 = credential(&agent);
    assert_eq!(gen1["generation"], 1);
    // The current credential mints.
    issue_identity(&auth, &gen1).expect("current credential");
    // The agent renews; the copy of generation 1 is now superseded.
    assert!(agent.oneshot(&auth, None).status.success());
    assert_eq!(agent.generation(), 2);
    let err = issue_identity(&auth, &gen1).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("superseded"), "{err:?}");
    let seen = auth.audit("bot.credential_superseded");
    assert_eq!(seen.len(), 1, "{seen:?}");
    // The instance is not locked for that (the agent may be mid-switch)...
    assert!(agent.oneshot(&auth, None).status.success());
    assert_eq!(agent.generation(), 3);
    // ...but a copy two generations behind is theft: the instance is locked.
    let err = issue_identity(&auth, &gen1).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(auth.audit("bot.generation_mismatch").len(), 1);
    let o = agent.oneshot(&auth, None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn removing_an_instance_revokes_its_certificates_on_every_api() {
    let auth = Auth::start();
    auth.create(
        "ops.yaml",
        "kind: role\nversion: v1\nmetadata: {name: ops}\nspec:\n  allow:\n    rules: [{resources: [role], verbs: [list, read]}]\n",
    );
    let out = auth.ok(&["bots", "add", "ops", "--roles", "ops", "--format", "json"]);
    let token = serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let agent = AgentDirs::new();
    assert!(agent.oneshot(&auth, Some(&token)).status.success());
    let cred = credential(&agent);
    let idf = agent.out.join("identity");
    let remote = |args: &[&str]| auth.remote(&idf, args);
    assert!(remote(&["get", "roles"]).status.success());
    let id = cred["instance_id"].as_str().unwrap();
    auth.ok(&["rm", &format!("bot_instance/{id}")]);
    // At once: the output identity on the admin API, the agent's own on minting.
    let o = remote(&["get", "roles"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed"),
        "{}",
        text(&o)
    );
    let err = issue_identity(&auth, &cred).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[test]
fn weak_keys_are_refused_at_join_and_the_token_survives() {
    let auth = Auth::start();
    let token = auth.bot("weak", &["w"]);
    let dir = tempfile::tempdir().unwrap();
    let spki = openssl_spki(
        dir.path(),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let err = runtime()
        .block_on(async {
            let init = JoinClientMessage {
                message: Some(join_client_message::Message::Init(JoinInit {
                    join_method: "token".into(),
                    token: token.clone(),
                    public_key_spki: spki,
                    ..Default::default()
                })),
            };
            let mut resp = client(&auth, None)
                .join(tokio_stream::iter(vec![init]))
                .await?
                .into_inner();
            resp.message().await.map(|_| ())
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("RSA key of 1024 bits"), "{err:?}");
    assert!(err.message().contains("accepted keys"), "{err:?}");
    // Nothing was consumed: the agent joins with the same token.
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
}
