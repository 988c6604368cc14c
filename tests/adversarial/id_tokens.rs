//! ID tokens presented to the `oidc` join method (the local OIDC issuer of
//! tests/common signs the good ones): unsigned, algorithm confusion, key-id
//! confusion, wrong issuer or audience, out of their time window, oversized,
//! nested, tampered. Each is "join denied" with the reason audited in
//! `bot.join.denied`, and no instance is created.

use crate::common::https::{FixtureRequest, FixtureResponse, HttpsFixture};
use crate::common::oidc_issuer::*;
use crate::common::*;
use crate::harness::*;
use crate::tokens::join_denied;
use base64::Engine as _;
use serde_json::{Value, json};
use sigil_proto::v1::JoinInit;
use std::sync::{Arc, Mutex, OnceLock};
use tonic::Code;

static AUTH: Slot = Slot::new(None);
static ISSUER: OnceLock<OidcIssuer> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn issuer() -> &'static OidcIssuer {
    ISSUER.get_or_init(OidcIssuer::start)
}

/// The shared service with token `adv-oidc` (issuer `/oidc`, sub `svc-*`) for
/// bot `oidc-bot`; one case at a time.
fn setup() -> (Arc<Auth>, std::sync::MutexGuard<'static, ()>) {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let auth = shared(&AUTH, || {
        let a = Auth::start_with(&["--outbound-ca-file", &issuer().ca_pem()]);
        a.bot("oidc-bot", &["ubuntu"]);
        a.create(
            "adv-oidc.yaml",
            &format!(
                "kind: token\nversion: v1\nmetadata: {{name: adv-oidc}}\nspec:\n  bot_name: oidc-bot\n  join_method: oidc\n  oidc: {{issuer: \"{}\", allow: [{{sub: \"svc-*\"}}]}}\n",
                issuer().issuer(OIDC)
            ),
        );
        a
    });
    (auth, g)
}

fn init(jwt: &str) -> JoinInit {
    JoinInit {
        join_method: "oidc".into(),
        token: "adv-oidc".into(),
        evidence: jwt.as_bytes().to_vec(),
        ..token_init("")
    }
}

/// The ID token `jwt` must be denied with `reason` audited; no new instance.
#[track_caller]
fn denies(jwt: &str, reason: &str) {
    let (auth, _g) = setup();
    let before = generations(&auth, "oidc-bot").len();
    let ev = join_denied(&auth, reason, || join_raw(&auth, None, init(jwt), vec![]));
    assert_eq!(
        generations(&auth, "oidc-bot").len(),
        before,
        "an instance was created"
    );
    assert!(
        jwt.len() < 20 || !ev.to_string().contains(jwt),
        "the token is in the audit log"
    );
}

fn good_claims(extra: Value) -> Value {
    let mut c = json!({"sub": "svc-build"});
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    c
}

/// Signs `claims` (completed like the issuer's) under `header` with a key the
/// issuer never published.
fn rogue(header: Value, claims: Value) -> String {
    let mut c = json!({
        "iss": issuer().issuer(OIDC), "aud": CLUSTER,
        "iat": now(), "nbf": now() - 5, "exp": now() + 600,
    });
    for (k, v) in claims.as_object().expect("object") {
        c[k] = v.clone();
    }
    sign_rogue(&header, &c)
}

/// A JWS of `payload` under `header` (kid, jku, cty taken from it), ES256
/// with a fresh attacker key.
fn sign_rogue<T: serde::Serialize>(header: &Value, payload: &T) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let field = |k: &str| header[k].as_str().map(str::to_string);
    h.kid = field("kid");
    h.jku = field("jku");
    h.cty = field("cty");
    let k = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
    jsonwebtoken::encode(&h, payload, &k).expect("sign")
}

/// A good token with its payload replaced by `claims` (signature kept).
fn with_payload(jwt: &str, claims: &Value) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    )
}

/// Control, not a case: a good ID token joins, so each refusal below is the attack's.
#[test]
fn a_good_id_token_joins() {
    let (auth, _g) = setup();
    let jwt = issuer().mint(OIDC, good_claims(json!({})));
    let c = join_raw(&auth, None, init(&jwt), vec![]).expect("good token joins");
    assert_eq!(c.bot_name, "oidc-bot");
}

/// attack: ID tokens | alg `none`, no signature | PermissionDenied "join denied"; audited "alg none refused"
#[test]
fn alg_none() {
    denies(
        &issuer().mint_alg_none(OIDC, good_claims(json!({}))),
        "alg none refused",
    );
}

/// attack: ID tokens | HS256 keyed with the issuer's public key (algorithm confusion) | "join denied"; audited "alg HS256 refused (HMAC is not a signature)"
#[test]
fn hs256_keyed_with_the_public_key() {
    denies(
        &issuer().mint_hs256_public_key(OIDC, good_claims(json!({}))),
        "alg HS256 refused",
    );
}

/// attack: ID tokens | signed by a key the issuer never published (unknown kid) | "join denied"; audited "unknown kid \"rogue-key\""
#[test]
fn unknown_kid() {
    denies(
        &issuer().mint_unpublished(OIDC, good_claims(json!({}))),
        "unknown kid \"rogue-key\"",
    );
}

/// attack: ID tokens | kid confusion: the published kid in the header, signed by the attacker's key | "join denied"; audited "signature does not verify"
#[test]
fn kid_confusion() {
    let h = json!({"alg": "ES256", "typ": "JWT", "kid": issuer().current_kid()});
    denies(
        &rogue(h, good_claims(json!({}))),
        "signature does not verify",
    );
}

/// attack: ID tokens | `jku` header pointing at the attacker's own JWKS | "join denied"; audited "unknown kid \"attacker\""
#[test]
fn jku_header_to_an_attacker_jwks() {
    let h =
        json!({"alg": "ES256", "typ": "JWT", "kid": "attacker", "jku": "https://127.0.0.1:1/jwks"});
    denies(
        &rogue(h, good_claims(json!({}))),
        "unknown kid \"attacker\"",
    );
}

/// attack: ID tokens | payload edited after signing (sub changed) | "join denied"; audited "signature does not verify"
#[test]
fn payload_edited_after_signing() {
    let jwt = issuer().mint(OIDC, good_claims(json!({"sub": "intern"})));
    let mut c: Value = serde_json::from_slice(
        &B64.decode(jwt.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("claims");
    c["sub"] = json!("svc-admin");
    denies(&with_payload(&jwt, &c), "signature does not verify");
}

/// attack: ID tokens | signature stripped from an ES256 token | "join denied"; audited "signature does not verify"
#[test]
fn signature_stripped() {
    let jwt = issuer().mint(OIDC, good_claims(json!({})));
    let (head, _) = jwt.rsplit_once('.').expect("three parts");
    denies(&format!("{head}."), "signature does not verify");
}

/// attack: ID tokens | wrong `iss` (another issuer path of the same host) | "join denied"; audited "issuer X is not Y"
#[test]
fn wrong_issuer() {
    denies(
        &issuer().mint(GITLAB, good_claims(json!({}))),
        "\" is not \"",
    );
}

/// attack: ID tokens | `aud` a string naming another cluster | "join denied"; audited "does not contain \"example.test\""
#[test]
fn wrong_audience_string() {
    denies(
        &issuer().mint(OIDC, good_claims(json!({"aud": "other.test"}))),
        "does not contain \"example.test\"",
    );
}

/// attack: ID tokens | `aud` a list without this cluster | "join denied"; audited "does not contain \"example.test\""
#[test]
fn audience_list_without_this_cluster() {
    let c = good_claims(json!({"aud": ["other.test", "third.test"]}));
    denies(&issuer().mint(OIDC, c), "does not contain \"example.test\"");
}

/// attack: ID tokens | `aud` a number instead of a string or list | "join denied"; audited "token has no aud"
#[test]
fn audience_of_the_wrong_type() {
    denies(
        &issuer().mint(OIDC, good_claims(json!({"aud": 42}))),
        "token has no aud",
    );
}

/// attack: ID tokens | `exp` 61 s ago plus a margin (just past the 60 s leeway) | "join denied"; audited "expired at"
#[test]
fn expired_past_the_leeway() {
    let c = good_claims(json!({"iat": now() - 900, "nbf": now() - 900, "exp": now() - 75}));
    denies(&issuer().mint(OIDC, c), "expired at");
}

/// attack: ID tokens | `nbf` 75 s ahead (past the 60 s leeway) | "join denied"; audited "not valid before"
#[test]
fn not_yet_valid_past_the_leeway() {
    denies(
        &issuer().mint(OIDC, good_claims(json!({"nbf": now() + 75}))),
        "not valid before",
    );
}

/// attack: ID tokens | `iat` an hour in the future | "join denied"; audited "issued in the future"
#[test]
fn issued_in_the_future() {
    denies(
        &issuer().mint(OIDC, good_claims(json!({"iat": now() + 3600}))),
        "issued in the future",
    );
}

/// attack: ID tokens | `exp` null (no usable expiry) | "join denied"; audited "exp is not a number"
#[test]
fn exp_null() {
    denies(
        &issuer().mint(OIDC, good_claims(json!({"exp": null}))),
        "exp is not a number",
    );
}

/// attack: ID tokens | a 100 KB token | "join denied"; audited "more than 16384" (bytes)
#[test]
fn hundred_kilobyte_token() {
    let c = good_claims(json!({"pad": "x".repeat(100 * 1024)}));
    denies(&issuer().mint(OIDC, c), "more than 16384");
}

/// attack: ID tokens | nested JWS: the issuer's valid token as the payload of an outer JWS (`cty: JWT`, published kid) signed by the attacker | "join denied"; audited "signature does not verify" (never unwrapped)
#[test]
fn nested_jws() {
    let inner = issuer().mint(OIDC, good_claims(json!({})));
    let h = json!({"alg": "ES256", "typ": "JWT", "cty": "JWT", "kid": issuer().current_kid()});
    denies(&sign_rogue(&h, &inner), "signature does not verify");
}

/// attack: ID tokens | claims that match no allow rule (`sub: attacker`) | "join denied"; audited "no allow rule"
#[test]
fn claims_matching_no_rule() {
    denies(
        &issuer().mint(OIDC, json!({"sub": "attacker"})),
        "no allow rule",
    );
}

/// attack: ID tokens | `sub` an array holding a matching value (type confusion) | "join denied"; audited "token rejected"
#[test]
fn sub_as_an_array() {
    denies(
        &issuer().mint(OIDC, json!({"sub": ["svc-build"]})),
        "token rejected",
    );
}

/// attack: ID tokens | evidence that is not a JWT at all | "join denied"; audited "not a compact JWS"
#[test]
fn garbage_evidence() {
    denies("this is not a token", "not a compact JWS");
}

/// attack: ID tokens | no evidence | "join denied"; audited "no ID token presented"
#[test]
fn empty_evidence() {
    denies("", "no ID token presented");
}

/// attack: ID tokens | the oidc method naming a token that does not exist | "join denied"; audited "does not exist"
#[test]
fn oidc_naming_a_missing_token() {
    let (auth, _g) = setup();
    let jwt = issuer().mint(OIDC, good_claims(json!({})));
    let i = JoinInit {
        token: "no-such-token".into(),
        ..init(&jwt)
    };
    join_denied(&auth, "does not exist", || join_raw(&auth, None, i, vec![]));
}

/// attack: ID tokens | a token resource whose issuer is plain `http://` (discovery over HTTP) | InvalidArgument "must be an https:// URL"; not stored
#[test]
fn discovery_on_plain_http() {
    let (auth, _g) = setup();
    let r = rt().block_on(async {
        admin_socket(&auth)
            .await
            .create_resource(sigil_proto::v1::CreateResourceRequest {
                json: r#"{"kind":"token","version":"v1","metadata":{"name":"plain-http"},"spec":{"bot_name":"oidc-bot","join_method":"oidc","oidc":{"issuer":"http://127.0.0.1:1/oidc","allow":[{"sub":"*"}]}}}"#.into(),
                upsert: false,
            })
            .await
    });
    refused(r, Code::InvalidArgument, "must be an https:// URL");
    assert!(
        !auth
            .ok(&["get", "tokens", "-o", "json"])
            .contains("plain-http")
    );
}

/// attack: certificates | a delegated-join (oidc) certificate used to renew | PermissionDenied "delegated join method: renew by joining again"
#[test]
fn delegated_join_certificate_used_to_renew() {
    let (auth, _g) = setup();
    let jwt = issuer().mint(OIDC, good_claims(json!({})));
    let key = sigil_pki::TlsKeyPair::generate().expect("key");
    let i = JoinInit {
        public_key_spki: key.spki_der(),
        ..init(&jwt)
    };
    let c = join_raw(&auth, None, i, vec![]).expect("join");
    let cred = Pem {
        cert: c.tls_cert_pem,
        key: key.to_pkcs8_pem(),
    };
    assert!(identity_of(&cred.cert).delegated);
    let before = events_for(&auth, "cert.issued", "oidc-bot");
    refused(
        renew(&auth, Some(&cred)),
        Code::PermissionDenied,
        "delegated join method: renew by joining again",
    );
    assert_eq!(events_for(&auth, "cert.issued", "oidc-bot"), before);
}

/// An issuer at `/dup` whose JWKS lists two different keys under one kid
/// `dup`; returns it, its URL and the two keys (first listed first).
fn duplicate_kid_issuer() -> (HttpsFixture, String, [rcgen::KeyPair; 2]) {
    let keys =
        [0, 1].map(|_| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
    let jwks: Vec<Value> = keys
        .iter()
        .map(|k| {
            let raw = k.public_key_raw();
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "dup",
                   "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])})
        })
        .collect();
    let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let b = base.clone();
    let fixture = HttpsFixture::start(Arc::new(move |req: &FixtureRequest| {
        let url = b.get().cloned().unwrap_or_default();
        match req.path.as_str() {
            "/dup/.well-known/openid-configuration" => FixtureResponse::json(&json!({
                "issuer": format!("{url}/dup"), "jwks_uri": format!("{url}/dup/jwks"),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            })),
            "/dup/jwks" => FixtureResponse::json(&json!({ "keys": jwks })),
            _ => FixtureResponse::status(404, "not found"),
        }
    }));
    base.set(fixture.url.clone()).expect("once");
    let url = format!("{}/dup", fixture.url);
    (fixture, url, keys)
}

/// attack: ID tokens | an issuer whose JWKS lists two different keys under one kid, token signed by the second | "join denied"; audited "kid \"dup\" names several keys" (either key refused)
#[test]
fn jwks_with_duplicate_kids() {
    let (fixture, url, keys) = duplicate_kid_issuer();
    let auth = Auth::start_with(&["--outbound-ca-file", fixture.ca_pem.to_str().unwrap()]);
    auth.bot("dup-bot", &["ubuntu"]);
    auth.create(
        "dup.yaml",
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: dup}}\nspec:\n  bot_name: dup-bot\n  join_method: oidc\n  oidc: {{issuer: \"{url}\", allow: [{{sub: \"svc-*\"}}]}}\n"
        ),
    );
    let sign = |k: &rcgen::KeyPair| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("dup".into());
        let c = json!({"iss": url, "aud": CLUSTER, "sub": "svc-build",
                       "iat": now(), "nbf": now() - 5, "exp": now() + 600});
        jsonwebtoken::encode(
            &h,
            &c,
            &jsonwebtoken::EncodingKey::from_ec_der(&k.serialize_der()),
        )
        .unwrap()
    };
    let first = sign(&keys[0]);
    let second = sign(&keys[1]);
    let i = |jwt: &str| JoinInit {
        token: "dup".into(),
        ..init(jwt)
    };
    join_denied(&auth, "kid \"dup\" names several keys", || {
        join_raw(&auth, None, i(&second), vec![])
    });
    refused(
        join_raw(&auth, None, i(&first), vec![]),
        Code::PermissionDenied,
        "join denied",
    );
    assert!(generations(&auth, "dup-bot").is_empty());
}

/// attack: ID tokens | issuer mix-up: the discovery document at the configured issuer names another issuer | "join denied"; audited "discovery document of … names issuer … accounts.evil.example"
#[test]
fn discovery_naming_another_issuer() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
                     "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
    let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let b = base.clone();
    let fixture = HttpsFixture::start(Arc::new(move |req: &FixtureRequest| {
        let url = b.get().cloned().unwrap_or_default();
        match req.path.as_str() {
            "/mix/.well-known/openid-configuration" => FixtureResponse::json(&json!({
                "issuer": "https://accounts.evil.example", "jwks_uri": format!("{url}/mix/jwks"),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            })),
            "/mix/jwks" => FixtureResponse::json(&json!({ "keys": [jwk] })),
            _ => FixtureResponse::status(404, "not found"),
        }
    }));
    base.set(fixture.url.clone()).expect("once");
    let url = format!("{}/mix", fixture.url);
    let auth = Auth::start_with(&["--outbound-ca-file", fixture.ca_pem.to_str().unwrap()]);
    auth.bot("mix-bot", &["ubuntu"]);
    auth.create(
        "mix.yaml",
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: mix}}\nspec:\n  bot_name: mix-bot\n  join_method: oidc\n  oidc: {{issuer: \"{url}\", allow: [{{sub: \"svc-*\"}}]}}\n"
        ),
    );
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k1".into());
    let c = json!({"iss": url, "aud": CLUSTER, "sub": "svc-build",
                   "iat": now(), "nbf": now() - 5, "exp": now() + 600});
    let jwt = jsonwebtoken::encode(
        &h,
        &c,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    let i = JoinInit {
        token: "mix".into(),
        ..init(&jwt)
    };
    join_denied(
        &auth,
        "names issuer \"https://accounts.evil.example\"",
        || join_raw(&auth, None, i, vec![]),
    );
    assert!(generations(&auth, "mix-bot").is_empty());
}

/// A one-purpose HTTPS server on 127.0.0.1 answering every request with a
/// 302 to `location`; returns its URL, its CA (PEM) and the requests seen.
fn redirecting_server(location: String) -> (String, String, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .expect("server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(cfg.clone()).expect("conn");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 8192];
            let Ok(n) = tls.read(&mut buf) else { continue };
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.lock()
                .expect("seen")
                .push(req.lines().next().unwrap_or("").to_string());
            let _ = write!(
                tls,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = tls.flush();
        }
    });
    (url, ca_cert.pem(), seen)
}

/// attack: ID tokens | the configured issuer's discovery redirects (302) to another host serving a valid issuer | Unavailable "cannot check joins right now"; bot.join.unchecked (reason "OIDC discovery failed: … HTTP 302 Found"); the other host never asked
#[test]
fn issuer_redirecting_to_another_host() {
    let target = issuer();
    let discovery = format!("{}/.well-known/openid-configuration", target.issuer(OIDC));
    let (url, ca, seen) = redirecting_server(discovery);
    let dir = tempfile::tempdir().expect("tempdir");
    let cas = dir.path().join("cas.pem");
    let target_ca = std::fs::read_to_string(target.ca_pem()).expect("target ca");
    std::fs::write(&cas, format!("{ca}{target_ca}")).expect("write cas");
    let auth = Auth::start_with(&["--outbound-ca-file", cas.to_str().expect("utf8")]);
    auth.bot("redir-bot", &["ubuntu"]);
    auth.create(
        "redir.yaml",
        &format!(
            "kind: token\nversion: v1\nmetadata: {{name: redir}}\nspec:\n  bot_name: redir-bot\n  join_method: oidc\n  oidc: {{issuer: \"{url}/oidc\", allow: [{{sub: \"svc-*\"}}]}}\n"
        ),
    );
    let asked_before = target
        .fixture
        .requests_to("/oidc/.well-known/openid-configuration")
        .len();
    // Signed by the target's real key, as if the target were the issuer.
    let jwt = target.mint(OIDC, good_claims(json!({"iss": format!("{url}/oidc")})));
    let i = JoinInit {
        token: "redir".into(),
        ..init(&jwt)
    };
    refused(
        join_raw(&auth, None, i, vec![]),
        Code::Unavailable,
        "cannot check joins right now",
    );
    let log = auth.log();
    assert!(
        log.lines().any(|l| l.contains("join could not be checked")
            && l.contains("OIDC discovery failed")
            && l.contains("HTTP 302 Found")),
        "{log}"
    );
    assert!(
        !seen.lock().expect("seen").is_empty(),
        "the redirecting issuer was not asked"
    );
    assert_eq!(
        target
            .fixture
            .requests_to("/oidc/.well-known/openid-configuration")
            .len(),
        asked_before,
        "the redirect was followed"
    );
    assert!(generations(&auth, "redir-bot").is_empty());
    let audited = auth.audit("bot.join.unchecked");
    assert_eq!(audited.len(), 1, "{audited:?}");
    let f = &audited[0]["fields"];
    assert_eq!(f["method"], "oidc", "{f}");
    let reason = f["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("OIDC discovery failed") && reason.contains("HTTP 302 Found"),
        "{f}"
    );
    assert!(auth.audit("bot.join.denied").is_empty());
}
