//! End to end: post-quantum hybrid key exchange. Agent ↔ auth service
//! connections and the CLI negotiate X25519MLKEM768 (rustls with aws-lc-rs
//! prefers it); a client without ML-KEM (`openssl s_client` offering classical
//! groups only) still connects to the public listener; `sigil status` says
//! which groups each listener negotiated.

mod common;

use common::*;

const PQ: &str = "X25519MLKEM768";

fn status_json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_str(&stdout(o)).expect("status json")
}

#[test]
fn the_control_plane_is_post_quantum_and_classical_clients_still_connect() {
    let auth = Auth::start();
    auth.create(
        "status-reader.yaml",
        "kind: role\nversion: v1\nmetadata: {name: status-reader}\nspec:\n  allow:\n    rules: [{resources: [status], verbs: [read]}]\n",
    );
    let out = auth.ok(&[
        "bots",
        "add",
        "pq",
        "--roles",
        "status-reader",
        "--format",
        "json",
    ]);
    let token = serde_json::from_str::<serde_json::Value>(&out).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let agent = AgentDirs::new();
    let o = agent.oneshot(&auth, Some(&token));
    assert!(o.status.success(), "{}", text(&o));
    // A renewal: the agent's mTLS connection with its identity.
    let o = agent.oneshot(&auth, None);
    assert!(o.status.success(), "{}", text(&o));

    // The CLI over TLS with the identity output: its own connection is hybrid, and
    // so was every handshake the control plane completed (the agent's included).
    let s = status_json(&auth.remote(&agent.out.join("identity"), &["status", "--format", "json"]));
    assert_eq!(s["key_exchange"], PQ, "{s}");
    let control = s["control_key_exchanges"].as_object().expect("counts");
    assert_eq!(
        control.keys().collect::<Vec<_>>(),
        [PQ],
        "a control-plane handshake was not post-quantum: {s}"
    );
    assert!(control[PQ].as_u64().unwrap_or_default() >= 3, "{s}");

    // A client without ML-KEM: classical groups only, still served.
    let o = std::process::Command::new("openssl")
        .args(["s_client", "-brief", "-groups", "X25519:P-256", "-connect"])
        .arg(format!("127.0.0.1:{}", auth.public_port))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("X25519"), "{}", text(&o));
    // The local admin socket has no TLS; the public listener counted the
    // classical handshake.
    let s = status_json(&auth.admin(&["status", "--format", "json"]));
    assert_eq!(s["key_exchange"], "", "the local socket has no TLS: {s}");
    let public = s["public_key_exchanges"].as_object().expect("counts");
    assert!(public.contains_key("X25519"), "{s}");
    let text_status = auth.ok(&["status"]);
    assert!(
        text_status
            .contains("Key exchange:  local socket (no TLS); control plane: X25519MLKEM768 ×"),
        "{text_status}"
    );
}
