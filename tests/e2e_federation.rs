//! End to end: SPIFFE federation between two Sigil clusters on loopback,
//! both ways — A fetches B's bundle over `https_web` (B's public listener),
//! B fetches A's over `https_spiffe` (A's SVID-authenticated bundle endpoint,
//! bootstrapped with A's spiffe CA). Workloads verify the other domain's
//! X.509-SVIDs and JWT-SVIDs with nothing but their own Workload API's
//! bundles (the Rust `spiffe` crate, py-spiffe, openssl for mTLS); removing
//! a federation removes the bundle; bad endpoints never replace a good bundle.

mod common;

use common::https::{FixtureRequest, FixtureResponse, HttpsFixture};
use common::spiffe_cluster::{Cluster, mtls};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `trust_bundle: |` with `pem` indented as a YAML block.
fn trust_bundle_yaml(pem: &str) -> String {
    let body: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!("  trust_bundle: |\n{body}")
}

fn web_federation(td: &str, url: &str) -> String {
    format!(
        "kind: spiffe_federation\nversion: v1\nmetadata: {{name: {td}}}\nspec:\n  bundle_source:\n    https_web: {{bundle_endpoint_url: \"{url}\"}}\n"
    )
}

fn spiffe_federation(td: &str, url: &str, id: &str, bootstrap_pem: &str) -> String {
    format!(
        "kind: spiffe_federation\nversion: v1\nmetadata: {{name: {td}}}\nspec:\n  bundle_source:\n    https_spiffe: {{bundle_endpoint_url: \"{url}\", endpoint_spiffe_id: \"{id}\"}}\n{}",
        trust_bundle_yaml(bootstrap_pem)
    )
}

/// A (a.test) and B (b.test) federated both ways: A → B over https_web, B → A over
/// https_spiffe. A's outbound client also trusts `extra_ca` (a fixture's CA).
fn federated_pair(extra_ca: Option<&Path>) -> (Cluster, Cluster) {
    // B first: A's outbound client must trust B's TLS (host) CA for https_web.
    let b = Cluster::start("b.test", "a.test", &[]);
    let b_host_ca = b.dir.path().join("b-host-ca.pem");
    let mut cas = b.auth.ok(&["ca", "export", "--type", "host"]);
    if let Some(p) = extra_ca {
        cas.push_str(&std::fs::read_to_string(p).unwrap());
    }
    std::fs::write(&b_host_ca, cas).unwrap();
    let a = Cluster::start(
        "a.test",
        "b.test",
        &["--outbound-ca-file", b_host_ca.to_str().unwrap()],
    );
    a.federate(
        "fed-b.yaml",
        &web_federation(
            "b.test",
            &format!(
                "https://127.0.0.1:{}/.well-known/spiffe-bundle",
                b.auth.public_port
            ),
        ),
    );
    b.federate(
        "fed-a.yaml",
        &spiffe_federation(
            "a.test",
            &format!("https://127.0.0.1:{}/", a.bundle_port),
            "spiffe://a.test/spiffe/bundle-endpoint",
            &a.spiffe_ca_pem(),
        ),
    );
    wait_logged(&a, &b, "B's bundle in A's Workload API", || {
        a.has_bundle("b.test")
    });
    wait_logged(&a, &b, "A's bundle in B's Workload API", || {
        b.has_bundle("a.test")
    });
    (a, b)
}

/// Like `wait_until` (30 s), with both clusters' logs on failure.
fn wait_logged(a: &Cluster, b: &Cluster, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out waiting for {what}\nA bundles: {}\nB bundles: {}\nA auth:\n{}\nA agent:\n{}\nB auth:\n{}\nB agent:\n{}",
        text(&a.client(&["bundles"])),
        text(&b.client(&["bundles"])),
        a.auth.log(),
        a.agent_log(),
        b.auth.log(),
        b.agent_log()
    );
}

#[test]
fn two_clusters_verify_each_other_and_unfederate() {
    let (a, b) = federated_pair(None);
    let work = tempfile::tempdir().unwrap();

    // Both sources were audited as bundle updates (B's: fetched over https_spiffe
    // after the bootstrap bundle, with the same keys).
    let ev = a.auth.audit("spiffe_federation.bundle_updated");
    assert!(
        ev.iter().any(|e| e["fields"]["trust_domain"] == "b.test"),
        "{ev:?}"
    );
    let ev = b.auth.audit("spiffe_federation.bundle_updated");
    assert!(
        ev.iter().any(|e| e["fields"]["trust_domain"] == "a.test"),
        "{ev:?}"
    );

    // FetchX509SVID: the identity federates with the peer, so its bundle comes
    // with the SVID (federated_bundles), besides FetchX509Bundles.
    let x = a.client_json(&["x509"]);
    assert_eq!(x["spiffe_id"], "spiffe://a.test/app");
    assert_eq!(
        x["bundle_trust_domains"],
        serde_json::json!(["a.test", "b.test"]),
        "{x}"
    );

    // A workload of A verifies B's X.509-SVID and JWT-SVID with A's bundles only
    // (the Rust spiffe crate).
    let b_pem = work.path().join("b");
    b.pem(&b_pem);
    let v = a.client_json(&["verify-x509", b_pem.join("svid.pem").to_str().unwrap()]);
    assert_eq!(v["verified"], "spiffe://b.test/app");
    let b_token = stdout(&b.client(&["jwt", "aud-a"])).trim().to_string();
    assert!(b_token.split('.').count() == 3, "{b_token}");
    let v = a.client_json(&["validate", "aud-a", &b_token]);
    assert_eq!(v["spiffe_id"], "spiffe://b.test/app");
    // Without federation the same SVID does not verify: B verifying its own
    // SVID works, C (nobody) is not involved; A's *own* SVID checked by B works too.
    let a_pem = work.path().join("a");
    a.pem(&a_pem);
    let v = b.client_json(&["verify-x509", a_pem.join("svid.pem").to_str().unwrap()]);
    assert_eq!(v["verified"], "spiffe://a.test/app");

    // py-spiffe: the same with A's Workload API (ValidateJWTSVID on A's agent
    // accepts B's token, checked with B's keys).
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pyspiffe_federation.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(a.sock())
        .arg(b_pem.join("svid.pem"))
        .arg(&b_token)
        .arg("aud-a")
        .output()
        .expect("python3");
    assert!(o.status.success(), "py-spiffe: {}", text(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["x509_verified"], "spiffe://b.test/app", "{v}");
    assert_eq!(v["jwt_remote"], "spiffe://b.test/app", "{v}");
    assert_eq!(v["jwt_local"], "spiffe://b.test/app", "{v}");

    // mTLS between a workload of A (client) and one of B (server), each with its
    // own SVID and only its own Workload API's bundles (openssl both sides).
    let (ok, why) = mtls(&b_pem, &a_pem);
    assert!(ok, "mTLS A -> B failed:\n{why}");

    // Removing the federation removes B's bundle from A's workloads within 2 s.
    a.auth.ok(&["rm", "spiffe_federation", "b.test"]);
    let removed = Instant::now();
    wait_until(
        "B's bundle to leave A's Workload API",
        Duration::from_secs(2),
        || !a.bundle_domains().0.contains(&"b.test".to_string()),
    );
    eprintln!("bundle removed after {:?}", removed.elapsed());
    let (x, j) = a.bundle_domains();
    assert_eq!(x, vec!["a.test".to_string()]);
    assert_eq!(j, vec!["a.test".to_string()]);
    // And B's SVIDs no longer verify in A.
    let o = a.client(&["verify-x509", b_pem.join("svid.pem").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    // Nor does mTLS: A's workload, with its bundles now, refuses B's server.
    a.pem(&a_pem);
    let (ok, why) = mtls(&b_pem, &a_pem);
    assert!(!ok, "mTLS A -> B must fail without the federation:\n{why}");
    let o = a.client(&["validate", "aud-a", &b_token]);
    assert!(
        !o.status.success(),
        "{}\nbundles now: {:?}\nA auth:\n{}",
        text(&o),
        a.bundle_domains(),
        a.auth.log()
    );

    // Federating again brings it back (fetched afresh), and B's SVID verifies.
    a.federate(
        "fed-b.yaml",
        &web_federation(
            "b.test",
            &format!(
                "https://127.0.0.1:{}/.well-known/spiffe-bundle",
                b.auth.public_port
            ),
        ),
    );
    wait_logged(&a, &b, "B's bundle back in A's Workload API", || {
        a.has_bundle("b.test")
    });
    let v = a.client_json(&["verify-x509", b_pem.join("svid.pem").to_str().unwrap()]);
    assert_eq!(v["verified"], "spiffe://b.test/app");
}

/// A CA certificate (DER) of another trust domain: SPIRE-style, with the
/// domain's SPIFFE ID as URI SAN.
fn foreign_ca_der(uri: Option<&str>) -> Vec<u8> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    if let Some(u) = uri {
        p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
    }
    let key = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&key).unwrap().der().to_vec()
}

fn bundle_doc(ca_der: &[u8], member: Option<&str>) -> serde_json::Value {
    use base64::Engine as _;
    let mut v = serde_json::json!({
        "keys": [{"use": "x509-svid", "kty": "EC",
                  "x5c": [base64::engine::general_purpose::STANDARD.encode(ca_der)]}],
        "spiffe_sequence": 1, "spiffe_refresh_hint": 5,
    });
    if let Some(td) = member {
        v["sigil_trust_domain"] = td.into();
    }
    v
}

#[test]
fn bad_endpoints_never_replace_a_good_bundle() {
    // Bad bundle endpoints, all behind a TLS server A trusts.
    let spire_style = bundle_doc(&foreign_ca_der(Some("spiffe://c.test")), None);
    let named_other = bundle_doc(&foreign_ca_der(None), Some("c.test"));
    let fixture = HttpsFixture::start(std::sync::Arc::new(move |r: &FixtureRequest| {
        match r.path.as_str() {
            "/garbage" => FixtureResponse {
                status: 200,
                content_type: "text/html".into(),
                body: b"<html>this is not a bundle</html>".to_vec(),
            },
            "/spire-style-c" => FixtureResponse::json(&spire_style),
            "/named-c" => FixtureResponse::json(&named_other),
            _ => FixtureResponse::status(404, "no"),
        }
    }));
    let (a, b) = federated_pair(Some(&fixture.ca_pem));
    let before = a.pem(&a.dir.path().join("before"));
    assert!(
        before["bundle_trust_domains"]
            .to_string()
            .contains("b.test")
    );
    let good = std::fs::read(a.dir.path().join("before/bundle.pem")).unwrap();
    let updates = |c: &Cluster, td: &str| {
        c.auth
            .audit("spiffe_federation.bundle_updated")
            .into_iter()
            .filter(|e| e["fields"]["trust_domain"] == td)
            .count()
    };
    let failures = |c: &Cluster, td: &str| -> Vec<String> {
        c.auth
            .audit("spiffe_federation.refresh_failed")
            .into_iter()
            .filter(|e| e["fields"]["trust_domain"] == td)
            .map(|e| {
                e["fields"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let a_updates = updates(&a, "b.test");
    let b_updates = updates(&b, "a.test");

    // An https_spiffe endpoint presenting the wrong SPIFFE ID: A's real bundle
    // endpoint, but B expects another ID.
    b.federate(
        "fed-a.yaml",
        &spiffe_federation(
            "a.test",
            &format!("https://127.0.0.1:{}/", a.bundle_port),
            "spiffe://a.test/not-the-bundle-endpoint",
            &a.spiffe_ca_pem(),
        ),
    );
    wait_until(
        "the wrong SPIFFE ID to be audited",
        Duration::from_secs(20),
        || {
            failures(&b, "a.test").iter().any(|e| {
                e.contains("spiffe://a.test/spiffe/bundle-endpoint")
                    && e.contains("not \"spiffe://a.test/not-the-bundle-endpoint\"")
            })
        },
    );
    assert!(b.has_bundle("a.test"), "B kept A's bundle");
    assert_eq!(updates(&b, "a.test"), b_updates, "no bundle update");

    // Garbage, a JSON document that is no bundle (B's JWKS), a 404, and bundles
    // of another trust domain (by the CA's SPIFFE ID, by Sigil's member).
    for (path, expect) in [
        (format!("{}/garbage", fixture.url), "not a JSON document"),
        (
            format!("https://127.0.0.1:{}/jwks.json", b.auth.public_port),
            "no x509-svid or jwt-svid key",
        ),
        (format!("{}/missing", fixture.url), "HTTP 404"),
        (
            format!("{}/spire-style-c", fixture.url),
            "trust domain \"c.test\"",
        ),
        (
            format!("{}/named-c", fixture.url),
            "for trust domain \"c.test\"",
        ),
    ] {
        a.federate("fed-b.yaml", &web_federation("b.test", &path));
        wait_until(
            &format!("{path} to be audited"),
            Duration::from_secs(20),
            || {
                failures(&a, "b.test")
                    .iter()
                    .any(|e| e.contains(&path) && e.contains(expect))
            },
        );
        assert_eq!(updates(&a, "b.test"), a_updates, "{path}: no bundle update");
    }

    eprintln!("refresh failures audited: {:#?}", failures(&a, "b.test"));
    // Through all of it A's workloads keep exactly the good bundle.
    let after = a.pem(&a.dir.path().join("after"));
    assert_eq!(
        after["bundle_trust_domains"],
        before["bundle_trust_domains"]
    );
    assert_eq!(
        std::fs::read(a.dir.path().join("after/bundle.pem")).unwrap(),
        good
    );
    assert!(b.has_bundle("a.test"));
    assert!(a.has_bundle("b.test"));

    // The bundle is kept in the store: a restarted auth service serves it while
    // the peer's endpoint is down (a TLS/connection failure, audited).
    let mut a = a;
    let mut b = b;
    a.federate(
        "fed-b.yaml",
        &web_federation(
            "b.test",
            &format!(
                "https://127.0.0.1:{}/.well-known/spiffe-bundle",
                b.auth.public_port
            ),
        ),
    );
    b.auth.stop();
    a.auth.stop();
    a.auth.spawn();
    wait_until(
        "the restarted service's fetch to fail",
        Duration::from_secs(20),
        || {
            failures(&a, "b.test")
                .iter()
                .any(|e| e.contains("/.well-known/spiffe-bundle"))
        },
    );
    assert_eq!(updates(&a, "b.test"), a_updates, "no bundle update");
    let restarted = a.pem(&a.dir.path().join("restarted"));
    assert_eq!(
        restarted["bundle_trust_domains"],
        before["bundle_trust_domains"]
    );
    assert_eq!(
        std::fs::read(a.dir.path().join("restarted/bundle.pem")).unwrap(),
        good
    );
    b.auth.spawn();
}

/// Federating makes every workload trust a foreign CA: only a caller whose roles
/// name `spiffe_federation` (or `*`) may create, replace or remove one, and a bad
/// bootstrap bundle or this cluster's own domain is refused with the field named.
#[test]
fn federation_needs_its_own_admin_verbs() {
    let auth = Auth::start();
    auth.create(
        "roles.yaml",
        "kind: role\nversion: v1\nmetadata: {name: wi-admin}\nspec:\n  allow:\n    rules: [{resources: [workload_identity], verbs: ['*']}]\n---\nkind: role\nversion: v1\nmetadata: {name: fed-admin}\nspec:\n  allow:\n    rules: [{resources: [spiffe_federation], verbs: [create, update, read, list, delete]}]\n",
    );
    let identity = |bot: &str, role: &str| {
        let out = auth.ok(&["bots", "add", bot, "--roles", role, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let agent = AgentDirs::new();
        let o = agent.oneshot(&auth, v["token"].as_str());
        assert!(o.status.success(), "{}", text(&o));
        agent
    };
    let wi = identity("wi-bot", "wi-admin");
    let fed = identity("fed-bot", "fed-admin");
    let file = auth.dir.path().join("fed.yaml");
    std::fs::write(
        &file,
        web_federation("partner.example", "https://127.0.0.1:1/bundle"),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let o = auth.remote(&wi.out.join("identity"), &["create", "-f", f]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("spiffe_federation"), "{}", text(&o));
    let o = auth.remote(&fed.out.join("identity"), &["create", "-f", f]);
    assert!(o.status.success(), "{}", text(&o));
    let o = auth.remote(&fed.out.join("identity"), &["get", "spiffe_federations"]);
    assert!(stdout(&o).contains("partner.example"), "{}", text(&o));
    assert!(stdout(&o).contains("https_web"), "{}", text(&o));
    let o = auth.remote(
        &wi.out.join("identity"),
        &["rm", "spiffe_federation", "partner.example"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = auth.remote(
        &fed.out.join("identity"),
        &["rm", "spiffe_federation", "partner.example"],
    );
    assert!(o.status.success(), "{}", text(&o));

    // Refused with the field named: a bootstrap bundle that is no bundle, and
    // this cluster's own trust domain.
    std::fs::write(
        &file,
        format!(
            "{}  trust_bundle: \"not a bundle\"\n",
            web_federation("partner.example", "https://127.0.0.1:1/bundle")
        ),
    )
    .unwrap();
    let o = auth.admin(&["create", "-f", f]);
    assert!(!o.status.success());
    assert!(text(&o).contains("spec.trust_bundle"), "{}", text(&o));
    std::fs::write(
        &file,
        web_federation("example.test", "https://127.0.0.1:1/bundle"),
    )
    .unwrap();
    let o = auth.admin(&["create", "-f", f]);
    assert!(!o.status.success());
    assert!(text(&o).contains("own trust domain"), "{}", text(&o));
}

/// Two auth servers of A on one PostgreSQL store: only A1 can reach B's
/// endpoint (A2 does not trust B's TLS CA), yet the agent on A2 gets B's
/// bundle — the fetched bundle is stored once and every server serves it.
#[test]
fn ha_servers_share_the_fetched_bundle() {
    let url = common::postgres::fresh_db();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit-key.json");
    let key = key.to_str().unwrap();
    let b = Cluster::start("b.test", "a.test", &[]);
    let b_host_ca = b.dir.path().join("b-host-ca.pem");
    std::fs::write(&b_host_ca, b.auth.ok(&["ca", "export", "--type", "host"])).unwrap();
    let shared = [
        "--cluster-name",
        "a.test",
        "--store",
        &url,
        "--audit-key",
        key,
    ];
    let mut first = shared.to_vec();
    first.extend(["--outbound-ca-file", b_host_ca.to_str().unwrap()]);
    let a1 = Auth::start_with(&first);
    let a2 = Cluster::on(Auth::start_with(&shared), "a.test", "b.test");
    let p = a1.dir.path().join("fed-b.yaml");
    std::fs::write(
        &p,
        web_federation(
            "b.test",
            &format!(
                "https://127.0.0.1:{}/.well-known/spiffe-bundle",
                b.auth.public_port
            ),
        ),
    )
    .unwrap();
    a1.ok(&["create", "-f", p.to_str().unwrap()]);
    wait_until(
        "B's bundle in the Workload API of A2's agent",
        Duration::from_secs(30),
        || a2.has_bundle("b.test"),
    );
    let b_pem = b.dir.path().join("pem");
    b.pem(&b_pem);
    let v = a2.client_json(&["verify-x509", b_pem.join("svid.pem").to_str().unwrap()]);
    assert_eq!(v["verified"], "spiffe://b.test/app");
    // A2's own fetch fails (and is audited); it did not write anything.
    wait_until(
        "A2's failed fetch to be audited",
        Duration::from_secs(20),
        || {
            a1.audit("spiffe_federation.refresh_failed")
                .iter()
                .any(|e| e["fields"]["trust_domain"] == "b.test")
        },
    );
    let updates: Vec<_> = a1
        .audit("spiffe_federation.bundle_updated")
        .into_iter()
        .filter(|e| e["fields"]["trust_domain"] == "b.test")
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
}
