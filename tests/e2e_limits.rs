//! Issue 10, classes 4 and 7: every document is bounded (size, count,
//! depth, no YAML aliases) before it is parsed, on the CLI and on the raw
//! admin API; names and logins follow one rule on every path; what the CLI
//! prints from storage cannot drive the terminal; slow clients are cut off.

mod common;

use common::*;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use sigil_proto::v1::{CreateResourceRequest, ListResourcesRequest};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const ROLE: &str =
    "kind: role\nversion: v1\nmetadata: {name: r}\nspec:\n  allow: {logins: [ubuntu]}\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(auth: &Auth) -> AdminServiceClient<Channel> {
    let ch = sigil_cli::admin::connect::local_channel(&auth.data)
        .await
        .expect("admin socket");
    // The client's own limit must not hide the server's: allow big sends.
    AdminServiceClient::new(ch).max_decoding_message_size(64 << 20)
}

fn write(auth: &Auth, name: &str, text: &str) -> PathBuf {
    let p = auth.dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every resource of `kind` the server lists (raw, so nothing is hidden).
fn names(auth: &Auth, kind: &str) -> Vec<String> {
    runtime().block_on(async {
        let mut c = client(auth).await;
        let r = c
            .list_resources(ListResourcesRequest {
                kind: kind.into(),
                filter: String::new(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        r.json
            .iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).expect("json");
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    })
}

/// `s` for a YAML double-quoted scalar: everything outside printable ASCII
/// as a `\uXXXX` escape.
fn yaml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c.to_string(),
            c => format!("\\u{:04x}", c as u32),
        })
        .collect()
}

/// Hostile documents: each must be refused by the limits, not parsed.
fn hostile_documents() -> Vec<(&'static str, String, &'static str)> {
    let laughs = {
        let mut s = String::from("kind: role\nversion: v1\nmetadata: {name: lol}\nspec:\n");
        s.push_str(
            "  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (n, p) in [
            ("b", "a"),
            ("c", "b"),
            ("d", "c"),
            ("e", "d"),
            ("f", "e"),
            ("g", "f"),
        ] {
            s.push_str(&format!(
                "  {n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            ));
        }
        s
    };
    vec![
        ("flow", "[".repeat(100_000), "nesting"),
        ("json", "{\"a\":".repeat(50_000), "nesting"),
        (
            "block",
            (0..1_000)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>(),
            "nesting",
        ),
        ("aliases", laughs, "aliases"),
        (
            "documents",
            "kind: role\nversion: v1\nmetadata: {name: x}\n---\n".repeat(2_000),
            "documents",
        ),
    ]
}

#[test]
fn deep_and_aliased_documents_are_refused_and_healthz_stays_up() {
    let auth = Auth::start();
    // The CLI refuses locally, naming the file and the limit (exit 2).
    for (name, doc, says) in hostile_documents() {
        let file = write(&auth, &format!("{name}.yaml"), &doc);
        let o = auth.admin(&["create", "-f", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let err = stderr(&o);
        assert!(err.contains(&format!("{name}.yaml")), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(says == "aliases" || err.contains("limit"), "{name}: {err}");
    }

    // The raw admin API refuses the same documents, many times over, while
    // the public /healthz keeps answering.
    let url = format!("https://127.0.0.1:{}/healthz", auth.public_port);
    let prober = std::thread::spawn(move || {
        let mut answered = 0;
        for _ in 0..20 {
            let o = run("curl", &["-sfk", "--max-time", "20", &url]);
            assert!(
                o.status.success() && stdout(&o).contains("ok"),
                "{}",
                text(&o)
            );
            answered += 1;
        }
        answered
    });
    runtime().block_on(async {
        let mut c = client(&auth).await;
        for _ in 0..10 {
            for (name, json, says) in hostile_documents() {
                let err = c
                    .create_resource(CreateResourceRequest {
                        json,
                        upsert: false,
                    })
                    .await
                    .expect_err(name);
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
                assert!(err.message().contains(says), "{name}: {}", err.message());
                assert!(
                    err.message().starts_with("request"),
                    "{name}: {}",
                    err.message()
                );
            }
        }
    });
    assert_eq!(prober.join().expect("prober"), 20);
    assert!(
        names(&auth, "role").is_empty(),
        "a hostile document created something"
    );
}

#[test]
fn oversized_documents_are_refused() {
    let auth = Auth::start();
    // 10 MB through the CLI: refused before it is read whole or sent.
    let mut big = String::from(
        "kind: role\nversion: v1\nmetadata: {name: big}\nspec:\n  allow:\n    logins:\n",
    );
    while big.len() < 10 << 20 {
        big.push_str("    - ubuntu\n");
    }
    let file = write(&auth, "big.yaml", &big);
    let o = auth.admin(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("big.yaml") && stderr(&o).contains("limit"),
        "{}",
        text(&o)
    );
    let o = Command::new(sigil_bin())
        .arg("--data-dir")
        .arg(&auth.data)
        .args(["create", "-f", "-"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("sigil");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    runtime().block_on(async {
        let mut c = client(&auth).await;
        // 10 MB on the wire: the transport's message limit refuses it.
        let err = c
            .create_resource(CreateResourceRequest {
                json: big.clone(),
                upsert: false,
            })
            .await
            .expect_err("10 MB accepted");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        // Under the transport limit, over the document limit.
        let just_over = format!(
            "{}{}",
            &big[..big.find("    - ").unwrap()],
            "    - ubuntu\n".repeat((1 << 20) / 13 + 10)
        );
        let err = c
            .create_resource(CreateResourceRequest {
                json: just_over,
                upsert: false,
            })
            .await
            .expect_err("over 1 MiB accepted");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("1048576 bytes"), "{}", err.message());
    });
    assert!(names(&auth, "role").is_empty());
}

#[test]
fn bad_names_and_logins_are_refused_on_every_path() {
    let auth = Auth::start();
    auth.create("role.yaml", ROLE);
    let bad_names = [
        "../x",
        "..",
        "a/b",
        "x\u{1b}[31mred",
        "x\u{202E}gnp.exe",
        "x\u{200B}y",
    ];
    for name in bad_names {
        let o = auth.admin(&["bots", "add", name, "--roles", "r"]);
        assert_eq!(o.status.code(), Some(2), "{name:?}: {}", text(&o));
        assert!(
            !stderr(&o).contains('\u{1b}'),
            "raw ESC echoed: {:?}",
            stderr(&o)
        );
        assert!(
            !stderr(&o).contains('\u{202E}'),
            "raw bidi echoed: {:?}",
            stderr(&o)
        );
    }
    // NUL cannot be an argument; it comes in through a file, and through
    // the raw API (JSON escapes).
    for name in ["x\\u0000y", "x\\u001b[2J", "x\\u202egnp", "../x"] {
        // `\uXXXX` means the same in YAML double quotes and in JSON.
        let yaml = format!(
            "kind: bot\nversion: v1\nmetadata: {{name: \"{name}\"}}\nspec: {{roles: [r]}}\n"
        );
        let file = write(&auth, "bot.yaml", &yaml);
        let o = auth.admin(&["create", "-f", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(stderr(&o).contains("metadata.name"), "{}", text(&o));
        let json = format!(
            r#"{{"kind":"bot","version":"v1","metadata":{{"name":"{name}"}},"spec":{{"roles":["r"]}}}}"#
        );
        let err = runtime()
            .block_on(async {
                client(&auth)
                    .await
                    .create_resource(CreateResourceRequest {
                        json,
                        upsert: false,
                    })
                    .await
            })
            .expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
    }
    // Logins: zero-width, bidi override and control characters.
    for login in ["ro\u{200B}ot", "ro\u{202E}ot", "root\u{7}", "a b"] {
        let yaml = ROLE
            .replace("[ubuntu]", &format!("[\"{}\"]", yaml_escape(login)))
            .replace("name: r}", "name: r2}");
        let file = write(&auth, "role2.yaml", &yaml);
        let o = auth.admin(&["create", "-f", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{login:?}: {}", text(&o));
        let o = auth.admin(&["locks", "add", "--login", login]);
        assert_eq!(o.status.code(), Some(2), "{login:?}: {}", text(&o));
    }
    let o = auth.admin(&["locks", "add", "--bot", "../x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = auth.admin(&["tokens", "add", "--bot", "../x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A TTL past any date the clock can hold is refused, not a crash.
    let o = auth.admin(&[
        "bots",
        "add",
        "ok",
        "--roles",
        "r",
        "--token-ttl",
        "99999999d",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Nothing was created.
    assert!(names(&auth, "bot").is_empty(), "{:?}", names(&auth, "bot"));
    assert_eq!(names(&auth, "role"), ["r"]);
    assert!(names(&auth, "lock").is_empty());
    assert!(names(&auth, "token").is_empty());
    // The service is still up.
    auth.ok(&["status"]);
}

#[test]
fn stored_hostile_text_is_escaped_when_printed() {
    let mut auth = Auth::start();
    auth.create("role.yaml", ROLE);
    auth.ok(&["bots", "add", "legacy", "--roles", "r"]);
    auth.stop();
    // Data written before names were checked: an ESC sequence and a bidi
    // override in a bot's name.
    let db = auth.data.join("sigil.db");
    // The key holds the characters; the JSON value their escapes.
    let sql = "UPDATE kv SET key = '/bots/legacy' || char(27) || '[2J' || char(8238) || 'x', \
         value = CAST(replace(CAST(value AS TEXT), '\"legacy\"', '\"legacy\\u001b[2J\\u202ex\"') AS BLOB) \
         WHERE key = '/bots/legacy';";
    let o = run("sqlite3", &[db.to_str().unwrap(), sql]);
    assert!(o.status.success(), "{}", text(&o));
    auth.spawn();
    for args in [&["bots", "ls"][..], &["bots", "ls", "--format", "json"][..]] {
        let o = auth.admin(args);
        assert!(o.status.success(), "{}", text(&o));
        let out = stdout(&o);
        assert!(out.contains("legacy"), "{out}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202E}'),
            "raw: {out:?}"
        );
    }
    let table = auth.ok(&["bots", "ls"]);
    assert!(table.contains("legacy\\u{1b}[2J\\u{202e}x"), "{table}");
    // JSON stays the same value, escaped the JSON way.
    let json: serde_json::Value =
        serde_json::from_str(&auth.ok(&["bots", "ls", "--format", "json"])).expect("json");
    assert!(
        json.to_string().contains("legacy\\u001b[2J\u{202E}x"),
        "{json}"
    );
}

/// Waits until the peer closes `s` (EOF or reset); false if it is still open
/// after `limit`.
fn closed_by_peer(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_clients_are_cut_off_on_public_https() {
    let auth = Auth::start();
    let addr = ("127.0.0.1", auth.public_port);
    // Connects and says nothing.
    let mut silent = TcpStream::connect(addr).unwrap();
    // Starts a TLS record and stops.
    let mut dripping = TcpStream::connect(addr).unwrap();
    dripping.write_all(&[0x16, 0x03]).unwrap();
    assert!(
        closed_by_peer(&mut silent, Duration::from_secs(90)),
        "silent client kept"
    );
    assert!(
        closed_by_peer(&mut dripping, Duration::from_secs(90)),
        "partial ClientHello kept"
    );

    // Completes TLS, then sends half a request's headers and waits.
    let partial = |request: &str| {
        let mut c = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{}", auth.public_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(request.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if c.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let exited = c.try_wait().unwrap().is_some();
        let _ = c.kill();
        drop(stdin);
        let out = c.wait_with_output().unwrap();
        (exited, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Control: a whole request is answered.
    let (_, out) = partial("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(out.contains("200 OK") && out.contains("ok"), "{out}");
    let (closed, out) = partial("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    assert!(
        closed,
        "a request whose headers never end kept the connection"
    );
    assert!(!out.contains("200 OK"), "{out}");
    // The listener still serves.
    let o = run(
        "curl",
        &[
            "-sfk",
            &format!("https://127.0.0.1:{}/healthz", auth.public_port),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_denied_join_exits_3() {
    let auth = Auth::start();
    let dirs = AgentDirs::new();
    // A well-formed token the service never issued.
    let o = dirs.oneshot(&auth, Some("0123456789abcdef0123456789abcdef"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stderr(&o).contains("join denied"), "{}", text(&o));
}
