//! An OIDC issuer standing in for GitHub Enterprise Server, a self-hosted
//! GitLab, a generic issuer and a Kubernetes API server, all on one HTTPS
//! fixture port: discovery documents, a JWKS with EC P-256 keys that can be
//! rotated, token minting (good and deliberately bad), and the GitHub
//! Actions runtime endpoint the agent's `github` prover calls.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use super::https::{FixtureRequest, FixtureResponse, HttpsFixture};

/// Issuer path of the GitHub Enterprise Server-shaped issuer.
pub const GITHUB: &str = "/_services/token";
/// Issuer path of the GitLab-shaped issuer (the bare origin).
pub const GITLAB: &str = "";
/// Issuer path of the generic OIDC issuer.
pub const OIDC: &str = "/oidc";
/// Issuer path of the Kubernetes service-account issuer.
pub const K8S: &str = "/k8s";
/// The audience tokens get by default: the test cluster's name.
pub const CLUSTER: &str = "example.test";
/// What the Actions runtime endpoint requires as `Authorization: bearer`.
pub const ACTIONS_REQUEST_TOKEN: &str = "actions-request-token-0123456789";

const ISSUER_PATHS: [&str; 4] = [GITHUB, GITLAB, OIDC, K8S];

struct SigningKey {
    kid: String,
    pkcs8_der: Vec<u8>,
    public_pem: String,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate().expect("EC P-256 key");
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        assert_eq!(raw[0], 4);
        SigningKey {
            kid: kid.to_string(),
            pkcs8_der: kp.serialize_der(),
            public_pem: kp.public_key_pem(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8_der);
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }
}

struct Keys {
    /// Every key ever made; the last is current.
    all: Vec<SigningKey>,
    /// Kids in the JWKS.
    published: Vec<String>,
}

pub struct OidcIssuer {
    pub fixture: HttpsFixture,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    keys: Arc<Mutex<Keys>>,
    /// Claims (besides iss/aud/times) of tokens from the Actions runtime.
    actions_claims: Arc<Mutex<Value>>,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn jwks_path(issuer_path: &str) -> String {
    match issuer_path {
        GITHUB => format!("{GITHUB}/.well-known/jwks"),
        GITLAB => "/oauth/discovery/keys".to_string(),
        K8S => format!("{K8S}/openid/v1/jwks"),
        other => format!("{other}/jwks"),
    }
}

impl OidcIssuer {
    pub fn start() -> OidcIssuer {
        let keys = Arc::new(Mutex::new(Keys {
            all: vec![SigningKey::generate("key-1")],
            published: vec!["key-1".into()],
        }));
        let actions_claims = Arc::new(Mutex::new(github_claims()));
        let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let (k, a, b) = (keys.clone(), actions_claims.clone(), base.clone());
        let fixture = HttpsFixture::start(Arc::new(move |req: &FixtureRequest| {
            let url = b.get().cloned().unwrap_or_default();
            handle(req, &url, &k, &a)
        }));
        base.set(fixture.url.clone()).expect("base url set once");
        OidcIssuer {
            url: fixture.url.clone(),
            fixture,
            keys,
            actions_claims,
        }
    }

    /// `127.0.0.1:PORT`, for `enterprise_server_host` and `domain`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.fixture.port)
    }

    pub fn ca_pem(&self) -> String {
        self.fixture.ca_pem.display().to_string()
    }

    /// The exact `iss` of the issuer at `path`.
    pub fn issuer(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The JWKS document as published now.
    pub fn jwks(&self) -> Value {
        published_jwks(&self.keys.lock().expect("keys"))
    }

    /// The Actions runtime URL (already with a query, like GitHub's).
    pub fn actions_url(&self) -> String {
        format!("{}/_actions/token?api-version=2.0", self.url)
    }

    /// Replace the claims the Actions runtime puts in its tokens.
    pub fn set_actions_claims(&self, claims: Value) {
        *self.actions_claims.lock().expect("claims") = claims;
    }

    pub fn current_kid(&self) -> String {
        let k = self.keys.lock().expect("keys");
        k.all.last().expect("a key").kid.clone()
    }

    /// A new current key; the JWKS publishes it next to the old ones.
    pub fn rotate(&self) -> String {
        let mut k = self.keys.lock().expect("keys");
        let kid = format!("key-{}", k.all.len() + 1);
        k.all.push(SigningKey::generate(&kid));
        k.published.push(kid.clone());
        kid
    }

    /// Stop publishing every key but the current one.
    pub fn retire_old(&self) {
        let mut k = self.keys.lock().expect("keys");
        let current = k.all.last().expect("a key").kid.clone();
        k.published.retain(|kid| *kid == current);
    }

    /// Sign `claims` with the current key (kid in the header), filling in
    /// `iss` (the issuer at `issuer_path`), `aud` (the cluster), `iat`,
    /// `nbf` and `exp` (10 minutes) where `claims` does not set them.
    pub fn mint(&self, issuer_path: &str, claims: Value) -> String {
        let kid = self.current_kid();
        self.mint_with(&kid, issuer_path, claims)
    }

    /// Like `mint`, with the key `kid` (published or retired).
    pub fn mint_with(&self, kid: &str, issuer_path: &str, claims: Value) -> String {
        let claims = self.complete(issuer_path, claims);
        let k = self.keys.lock().expect("keys");
        let key = k.all.iter().find(|s| s.kid == kid).expect("known kid");
        key.sign(&claims)
    }

    /// Signed by a key this issuer never published (kid `rogue-key`).
    pub fn mint_unpublished(&self, issuer_path: &str, claims: Value) -> String {
        SigningKey::generate("rogue-key").sign(&self.complete(issuer_path, claims))
    }

    /// An unsigned token: `alg: none`, empty signature, the current kid.
    pub fn mint_alg_none(&self, issuer_path: &str, claims: Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.current_kid()});
        let claims = self.complete(issuer_path, claims);
        format!(
            "{}.{}.",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    }

    /// The algorithm-confusion attack: HS256 with the issuer's public key
    /// (PEM, as published) as the HMAC secret, under the current kid.
    pub fn mint_hs256_public_key(&self, issuer_path: &str, claims: Value) -> String {
        let claims = self.complete(issuer_path, claims);
        let k = self.keys.lock().expect("keys");
        let current = k.all.last().expect("a key");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(current.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_secret(current.public_pem.as_bytes());
        jsonwebtoken::encode(&header, &claims, &key).expect("sign hs256")
    }

    fn complete(&self, issuer_path: &str, claims: Value) -> Value {
        complete(&self.issuer(issuer_path), CLUSTER, claims)
    }
}

fn complete(iss: &str, aud: &str, claims: Value) -> Value {
    let mut c = claims.as_object().cloned().expect("claims object");
    let t = now();
    for (k, v) in [
        ("iss", json!(iss)),
        ("aud", json!(aud)),
        ("iat", json!(t)),
        ("nbf", json!(t - 5)),
        ("exp", json!(t + 600)),
    ] {
        c.entry(k).or_insert(v);
    }
    Value::Object(c)
}

fn published_jwks(k: &Keys) -> Value {
    let keys: Vec<Value> = k
        .all
        .iter()
        .filter(|s| k.published.contains(&s.kid))
        .map(|s| s.jwk.clone())
        .collect();
    json!({ "keys": keys })
}

fn handle(
    req: &FixtureRequest,
    url: &str,
    keys: &Mutex<Keys>,
    actions_claims: &Mutex<Value>,
) -> FixtureResponse {
    if req.method != "GET" {
        return FixtureResponse::status(405, "GET only");
    }
    for p in ISSUER_PATHS {
        if req.path == format!("{p}/.well-known/openid-configuration") {
            return FixtureResponse::json(&json!({
                "issuer": format!("{url}{p}"),
                "jwks_uri": format!("{url}{}", jwks_path(p)),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }));
        }
        if req.path == jwks_path(p) {
            return FixtureResponse::json(&published_jwks(&keys.lock().expect("keys")));
        }
    }
    if req.path == "/_actions/token" {
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        if auth != format!("bearer {ACTIONS_REQUEST_TOKEN}") {
            return FixtureResponse::status(401, "bad request token");
        }
        let Some(aud) = query_param(&req.query, "audience") else {
            return FixtureResponse::status(400, "audience missing");
        };
        let claims = complete(
            &format!("{url}{GITHUB}"),
            &aud,
            actions_claims.lock().expect("claims").clone(),
        );
        let k = keys.lock().expect("keys");
        let jwt = k.all.last().expect("a key").sign(&claims);
        return FixtureResponse::json(&json!({ "value": jwt }));
    }
    FixtureResponse::status(404, "not found")
}

/// One `application/x-www-form-urlencoded` query parameter, decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GitHub Actions-shaped claims for acme/infra on main.
pub fn github_claims() -> Value {
    json!({
        "sub": "repo:acme/infra:ref:refs/heads/main",
        "repository": "acme/infra",
        "repository_owner": "acme",
        "repository_id": "4242",
        "repository_owner_id": "42",
        "repository_visibility": "private",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "workflow": "deploy",
        "environment": "prod",
        "actor": "octocat",
        "run_id": "1001",
        "run_attempt": "1",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "job_workflow_ref": "acme/infra/.github/workflows/deploy.yml@refs/heads/main",
        "event_name": "push",
    })
}

/// GitLab CI-shaped claims for group/project on a protected main.
pub fn gitlab_claims() -> Value {
    json!({
        "sub": "project_path:acme/web:ref_type:branch:ref:main",
        "project_path": "acme/web",
        "project_id": "77",
        "namespace_path": "acme",
        "namespace_id": "7",
        "ref": "main",
        "ref_type": "branch",
        "ref_protected": "true",
        "environment": "production",
        "pipeline_source": "push",
        "pipeline_id": "900",
        "job_id": "901",
        "user_login": "alice",
        "sha": "89abcdef0123456789abcdef0123456789abcdef",
    })
}

/// A Kubernetes projected service-account token's claims.
pub fn kubernetes_claims(namespace: &str, name: &str) -> Value {
    json!({
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": "5a1b7c2e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{name}-7d9f8-abcde"), "uid": "5a1b7c2e-0000-4000-8000-000000000002"},
            "node": {"name": "node-1", "uid": "5a1b7c2e-0000-4000-8000-000000000003"},
        },
    })
}
