//! `/metrics` of the auth service and of the agent, parsed by the Prometheus
//! reference client's text parser (PyPI `prometheus-client`): every series a
//! dashboard names is there from start at zero, latencies are histograms,
//! and the figures move when a bot joins, renews and calls the Workload API.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The exposition at `url`, parsed: `(family name, type, samples)`.
struct Scrape(Vec<Value>);

impl Scrape {
    fn get(url: &str) -> Scrape {
        let o = run("curl", &["-sfk", url]);
        assert!(o.status.success(), "GET {url}: {}", text(&o));
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/prom_parse.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&o.stdout)
            .expect("write");
        let out = child.wait_with_output().expect("parser");
        assert!(
            out.status.success(),
            "the Prometheus parser refused {url}: {}\n{}",
            text(&out),
            stdout(&o)
        );
        Scrape(serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("json"))
    }

    fn family(&self, name: &str) -> &Value {
        self.0
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("family {name} missing"))
    }

    fn kind(&self, name: &str) -> String {
        self.family(name)["type"].as_str().unwrap_or("").to_string()
    }

    /// The value of sample `sample` whose labels include `labels`.
    fn value(&self, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.family(family)["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .find(|s| {
                s["name"] == sample
                    && labels
                        .iter()
                        .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
            })
            .unwrap_or_else(|| panic!("{sample}{labels:?} missing in {family}"))["value"]
            .as_f64()
            .expect("number")
    }
}

const AUTH_COUNTERS: &[(&str, &str, &[&str])] = &[
    (
        "sigil_joins",
        "result",
        &["ok", "denied", "abandoned", "retry"],
    ),
    (
        "sigil_renewals",
        "result",
        &["ok", "denied", "generation_mismatch"],
    ),
    (
        "sigil_certs_issued",
        "kind",
        &[
            "x509",
            "ssh",
            "ssh_host",
            "database",
            "database_server",
            "kubernetes",
        ],
    ),
    ("sigil_svids_issued", "kind", &["x509", "jwt"]),
];

const AUTH_HISTOGRAMS: &[&str] = &[
    "sigil_join_duration_seconds",
    "sigil_renewal_duration_seconds",
    "sigil_cert_issue_duration_seconds",
    "sigil_store_commit_duration_seconds",
];

#[test]
fn auth_metrics_start_at_zero_and_follow_joins() {
    let auth = Auth::start();
    let url = format!("https://127.0.0.1:{}/metrics", auth.public_port);
    // The store-derived gauges are set by a task that starts with the service.
    wait_until("the first gauge refresh", Duration::from_secs(20), || {
        Scrape::get(&url)
            .0
            .iter()
            .any(|f| f["name"] == "sigil_ca_expiry_seconds")
    });
    let m = Scrape::get(&url);
    for (family, label, values) in AUTH_COUNTERS {
        assert_eq!(m.kind(family), "counter", "{family}");
        for v in *values {
            assert_eq!(
                m.value(family, &format!("{family}_total"), &[(label, v)]),
                0.0,
                "{family}{{{label}={v}}} before any join"
            );
        }
    }
    for h in AUTH_HISTOGRAMS {
        assert_eq!(m.kind(h), "histogram", "{h}");
    }
    assert_eq!(
        m.value(
            "sigil_renewal_duration_seconds",
            "sigil_renewal_duration_seconds_count",
            &[("result", "ok")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "sigil_build_info",
            "sigil_build_info",
            &[
                ("component", "auth"),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value("sigil_locks", "sigil_locks", &[("target", "bot")]),
        0.0
    );
    assert_eq!(
        m.value(
            "sigil_change_feed_lag_seconds",
            "sigil_change_feed_lag_seconds",
            &[]
        ),
        0.0,
        "the embedded store has no change feed"
    );
    // The client CA is valid for years.
    let client_ca = m.value(
        "sigil_ca_expiry_seconds",
        "sigil_ca_expiry_seconds",
        &[("type", "client")],
    );
    assert!(client_ca > 86_400.0 * 300.0, "client CA expiry {client_ca}");

    // A join, then two renewals (oneshot runs renew an existing identity).
    let token = auth.bot("metrics-bot", &["m"]);
    let agent = AgentDirs::new();
    for t in [Some(token.as_str()), None, None] {
        let o = agent.oneshot(&auth, t);
        assert!(o.status.success(), "{}", text(&o));
    }
    auth.ok(&[
        "locks",
        "add",
        "--bot",
        "someone-else",
        "--message",
        "metrics",
    ]);
    // Locks refresh every 15 s, instance counts every minute.
    wait_until("gauges after the join", Duration::from_secs(90), || {
        let m = Scrape::get(&url);
        m.value("sigil_locks", "sigil_locks", &[("target", "bot")]) == 1.0
            && m.value(
                "sigil_bot_instances",
                "sigil_bot_instances",
                &[("state", "current")],
            ) == 1.0
    });
    let m = Scrape::get(&url);
    assert_eq!(
        m.value("sigil_joins", "sigil_joins_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.value(
            "sigil_renewals",
            "sigil_renewals_total",
            &[("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "sigil_join_duration_seconds",
            "sigil_join_duration_seconds_count",
            &[("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "sigil_renewal_duration_seconds",
            "sigil_renewal_duration_seconds_count",
            &[("result", "ok")]
        ),
        2.0
    );
    assert!(
        m.value(
            "sigil_cert_issue_duration_seconds",
            "sigil_cert_issue_duration_seconds_count",
            &[("kind", "x509")]
        ) >= 3.0
    );
    // Join, two renewals, the lock: each a durable commit.
    assert!(
        m.value(
            "sigil_store_commit_duration_seconds",
            "sigil_store_commit_duration_seconds_count",
            &[("backend", "sqlite")]
        ) >= 4.0
    );
    assert_eq!(
        m.value(
            "sigil_bot_instances",
            "sigil_bot_instances",
            &[("state", "expired")]
        ),
        0.0
    );
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn agent_metrics_start_at_zero_and_count_workload_api_calls() {
    let auth = Auth::start();
    let token = auth.bot("diag-bot", &["m"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let diag = format!("127.0.0.1:{}", free_port());
    let sock = dir.path().join("run/workload.sock");
    let cfg = format!(
        "version: v1
auth_server: {addr}
ca_pins: [{pin}]
onboarding: {{join_method: token, token: {token}}}
storage: {{type: directory, path: {storage}}}
diag_addr: {diag}
outputs:
  - type: identity
    destination: {{type: directory, path: {out}}}
services:
  - type: workload-api
    listen: unix://{sock}
    selector: {{labels: {{env: nothing-matches}}}}
",
        addr = auth.addr(),
        pin = auth.pin,
        storage = dir.path().join("storage").display(),
        out = dir.path().join("out").display(),
        sock = sock.display(),
    );
    let cfg_path = dir.path().join("agent.yaml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let _agent = Agent(
        Command::new(sigil_bin())
            .args(["agent", "start", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent"),
    );
    let url = format!("http://{diag}/metrics");
    wait_until("the agent's first renewal", Duration::from_secs(60), || {
        run("curl", &["-sf", &url]).status.success()
            && sock.exists()
            && Scrape::get(&url).value(
                "sigil_agent_renewals",
                "sigil_agent_renewals_total",
                &[("result", "ok")],
            ) >= 1.0
    });
    let m = Scrape::get(&url);
    assert_eq!(
        m.value(
            "sigil_build_info",
            "sigil_build_info",
            &[("component", "agent")]
        ),
        1.0
    );
    for family in [
        "sigil_agent_reload_failures",
        "sigil_agent_auth_server_failures",
        "sigil_agent_auth_server_switches",
        "sigil_agent_svid_issuances",
        "sigil_agent_audit_witness_refusals",
    ] {
        assert_eq!(m.kind(family), "counter", "{family}");
        assert_eq!(
            m.value(family, &format!("{family}_total"), &[]),
            0.0,
            "{family}"
        );
    }
    assert_eq!(
        m.value(
            "sigil_agent_renewals",
            "sigil_agent_renewals_total",
            &[("result", "error")]
        ),
        0.0
    );
    assert!(
        m.value(
            "sigil_agent_credential_expiry_timestamp_seconds",
            "sigil_agent_credential_expiry_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(m.kind("sigil_agent_renewal_duration_seconds"), "histogram");
    assert_eq!(
        m.kind("sigil_agent_workload_api_call_duration_seconds"),
        "histogram"
    );
    for method in [
        "FetchX509SVID",
        "FetchX509Bundles",
        "ValidateJWTSVID",
        "StreamSecrets",
    ] {
        assert_eq!(
            m.value(
                "sigil_agent_workload_api_call_duration_seconds",
                "sigil_agent_workload_api_call_duration_seconds_count",
                &[("method", method)]
            ),
            0.0,
            "{method} before any call"
        );
    }

    // Two calls: bundles (answered) and an X.509-SVID nobody here may have.
    let client = {
        let exe = std::env::current_exe().expect("exe");
        let debug = exe.parent().and_then(Path::parent).expect("target dir");
        debug.join("examples/spiffe_client")
    };
    let sock_arg = sock.to_str().expect("utf-8");
    let o = Command::new(&client)
        .args(["--socket", sock_arg, "bundles"])
        .output()
        .expect("spiffe_client");
    assert!(o.status.success(), "bundles: {}", text(&o));
    let o = Command::new(&client)
        .args(["--socket", sock_arg, "x509"])
        .output()
        .expect("spiffe_client");
    assert!(!o.status.success(), "no identity matches: {}", text(&o));
    let m = Scrape::get(&url);
    assert_eq!(
        m.value(
            "sigil_agent_workload_api_calls",
            "sigil_agent_workload_api_calls_total",
            &[("method", "FetchX509Bundles"), ("code", "ok")]
        ),
        1.0
    );
    let refused: f64 = m.family("sigil_agent_workload_api_calls")["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["labels"]["method"] == "FetchX509SVID" && s["labels"]["code"] != "ok")
        .map(|s| s["value"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(refused, 1.0, "the refused FetchX509SVID, by its status");
    assert_eq!(
        m.value(
            "sigil_agent_workload_api_call_duration_seconds",
            "sigil_agent_workload_api_call_duration_seconds_count",
            &[("method", "FetchX509Bundles")]
        ),
        1.0
    );
}
