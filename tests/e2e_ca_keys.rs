//! End to end: CA private keys kept out of the database. The real auth service seals its
//! CA keys under a key-encryption key (`--ca-kek-file`, `SIGIL_CA_KEK`) or keeps them on a
//! SoftHSM2 token (`--hsm-module`); the database file then holds no private key, bots
//! still get certificates openssl accepts, and a start with the wrong key source fails
//! with a message saying what to pass.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Counts PKCS#8 private keys anywhere in the data dir's database: every kv value and audit
/// row read through python3's sqlite3 module, plus the raw bytes of the database files (WAL
/// and free pages included). A PKCS#8 is `SEQUENCE { INTEGER 0|1, SEQUENCE {OID ...} ...`;
/// certificates (`SEQUENCE { SEQUENCE {...`) do not match. Also lists each CA's key manager.
const SCAN: &str = r#"
import base64, glob, json, re, sqlite3, sys
data = sys.argv[1]
TOKEN = re.compile(rb'[A-Za-z0-9+/]{40,}={0,2}')
def is_pkcs8(der):
    if len(der) < 8 or der[0] != 0x30:
        return False
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    return der[i:i+3] in (b'\x02\x01\x00', b'\x02\x01\x01') and der[i+3:i+4] == b'\x30'
def count(blob):
    n = 1 if is_pkcs8(blob) else 0
    for t in TOKEN.findall(blob):
        try:
            d = base64.b64decode(t + b'=' * (-len(t) % 4))
        except Exception:
            continue
        n += is_pkcs8(d)
    n += blob.count(b'PRIVATE KEY')
    return n
db = sqlite3.connect('file:' + data + '/sigil.db?mode=ro', uri=True)
found, managers = 0, {}
for key, value in db.execute('SELECT key, value FROM kv'):
    value = value if isinstance(value, bytes) else str(value).encode()
    found += count(value)
    if key.startswith('/cas/'):
        managers[key] = json.loads(value)['key']['manager']
for (fields,) in db.execute('SELECT fields FROM audit'):
    found += count(fields.encode())
raw = 0
for f in glob.glob(data + '/sigil.db*'):
    raw += count(open(f, 'rb').read())
print(json.dumps({'rows': found, 'raw': raw, 'managers': managers}))
"#;

fn scan(data: &Path) -> serde_json::Value {
    let o = Command::new("python3")
        .args(["-c", SCAN])
        .arg(data)
        .output()
        .expect("python3 (scripts/test installs it)");
    assert!(o.status.success(), "scan failed:\n{}", text(&o));
    serde_json::from_str(&stdout(&o)).expect("scan json")
}

fn secret_file(dir: &Path, name: &str, data: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// Starts `sigil auth start` on `auth`'s data dir with `args`/`envs` instead of its own and
/// expects it to exit with an error; returns its stderr.
fn start_fails(auth: &Auth, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut child = Command::new(sigil_bin())
        .args(["auth", "start", "--data-dir"])
        .arg(&auth.data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--public-listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("SIGIL_CA_KEK")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sigil auth");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the auth service started with {args:?} but should have refused to");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert!(!status.success(), "expected a failure with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Joins a bot and checks its client certificate with `openssl verify` against ca.crt.
fn bot_gets_verifiable_certificate(auth: &Auth, bot: &str) {
    let token = auth.bot(bot, &["deploy"]);
    let agent = AgentDirs::new();
    let o = agent.oneshot(auth, Some(&token));
    assert!(o.status.success(), "agent failed:\n{}", text(&o));
    let ca = agent.out.join("ca.crt");
    let crt = agent.out.join("tls.crt");
    let v = run(
        "openssl",
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            ca.to_str().expect("utf8"),
            crt.to_str().expect("utf8"),
        ],
    );
    assert!(v.status.success(), "openssl verify failed:\n{}", text(&v));
    assert!(stdout(&v).contains(": OK"), "{}", text(&v));
    // The SSH certificate is signed by the Ed25519 ssh-user CA (on the token / sealed).
    let cert = agent.out.join("ssh.key-cert.pub");
    let k = run("ssh-keygen", &["-L", "-f", cert.to_str().expect("utf8")]);
    assert!(k.status.success(), "ssh-keygen -L failed:\n{}", text(&k));
    assert!(stdout(&k).contains("Signing CA: ED25519"), "{}", text(&k));
}

#[test]
fn kek_sealed_ca_keys_are_not_in_the_database() {
    let keys = tempfile::tempdir().expect("tempdir");
    let kek_hex = "5e".repeat(16) + &"a7".repeat(16);
    let kek = secret_file(keys.path(), "kek", &format!("{kek_hex}\n"), 0o600);
    let kek_arg = kek.to_str().expect("utf8");
    let mut auth = Auth::start_with(&["--ca-kek-file", kek_arg]);

    // The scanner finds the keys of a cluster that keeps them in the database...
    let plain = Auth::start();
    let control = scan(&plain.data);
    assert!(
        control["rows"].as_u64().unwrap_or(0) >= 8 && control["raw"].as_u64().unwrap_or(0) >= 8,
        "the scan must see the 8 software CA keys: {control}"
    );
    drop(plain);
    // ...and none in this one: every CA is sealed.
    let sealed = scan(&auth.data);
    assert_eq!(sealed["rows"], 0, "plaintext key in the database: {sealed}");
    assert_eq!(
        sealed["raw"], 0,
        "plaintext key in the database file: {sealed}"
    );
    let managers = sealed["managers"].as_object().expect("managers");
    assert_eq!(managers.len(), 8, "{sealed}");
    assert!(managers.values().all(|m| m == "encrypted"), "{sealed}");
    assert!(auth.log().contains("kek_id"), "{}", auth.log());

    bot_gets_verifiable_certificate(&auth, "sealed-bot");
    auth.stop();

    // Without the KEK: refused, naming the flag and the KEK id the keys need.
    let err = start_fails(&auth, &[], &[]);
    assert!(
        err.contains("--ca-kek-file")
            && err.contains("SIGIL_CA_KEK")
            && err.contains("KEK with id"),
        "{err}"
    );
    // With another KEK: refused, naming both ids.
    let other = secret_file(keys.path(), "other", &"11".repeat(32), 0o600);
    let err = start_fails(
        &auth,
        &["--ca-kek-file", other.to_str().expect("utf8")],
        &[],
    );
    assert!(
        err.contains("sealed with KEK id") && err.contains("this KEK is"),
        "{err}"
    );
    // A KEK file others can read is refused with the fix.
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = start_fails(&auth, &["--ca-kek-file", kek_arg], &[]);
    assert!(err.contains(kek_arg) && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Software keys are refused with a KEK: the cluster was not created with one.
    let mut plain_dir = Auth::start();
    plain_dir.stop();
    let err = start_fails(&plain_dir, &["--ca-kek-file", kek_arg], &[]);
    assert!(err.contains("without --ca-kek-file"), "{err}");
    drop(plain_dir);

    // The same KEK from the environment (base64 this time) opens the cluster again.
    let kek_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&kek_hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let kek_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, kek_bytes);
    assert_eq!(kek_b64.len(), 44, "base64 of 32 bytes: {kek_b64:?}");
    auth.extra_args.clear();
    auth.envs = vec![("SIGIL_CA_KEK".into(), kek_b64)];
    auth.spawn();
    bot_gets_verifiable_certificate(&auth, "after-restart");
}

/// A SoftHSM2 token in a temp dir; `conf` is what SOFTHSM2_CONF must point at.
struct SoftHsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
}

fn softhsm_token(label: &str, pin: &str) -> SoftHsm {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "{SOFTHSM_MODULE} is missing: install softhsm2 (scripts/test does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm conf");
    let o = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", pin])
        .args(["--so-pin", "so-secret-1234"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(o.status.success(), "init token failed:\n{}", text(&o));
    let pin_file = secret_file(dir.path(), "pin", &format!("{pin}\n"), 0o600);
    SoftHsm {
        _dir: dir,
        conf,
        pin_file,
    }
}

#[test]
fn hsm_ca_keys_stay_on_the_token() {
    let hsm = softhsm_token("sigil-e2e", "user-pin-5678");
    let conf = hsm.conf.to_str().expect("utf8").to_string();
    let pin_file = hsm.pin_file.to_str().expect("utf8").to_string();
    let mut auth = Auth::start_with_env(
        &[
            "--hsm-module",
            SOFTHSM_MODULE,
            "--hsm-token-label",
            "sigil-e2e",
            "--hsm-pin-file",
            &pin_file,
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    let st = scan(&auth.data);
    assert_eq!(st["rows"], 0, "{st}");
    assert_eq!(st["raw"], 0, "{st}");
    let managers = st["managers"].as_object().expect("managers");
    assert_eq!(managers.len(), 8, "{st}");
    assert!(managers.values().all(|m| m == "pkcs11"), "{st}");
    bot_gets_verifiable_certificate(&auth, "hsm-bot");
    auth.stop();

    // Started without the token: refused, naming the token label to pass.
    let err = start_fails(&auth, &[], &[("SOFTHSM2_CONF", &conf)]);
    assert!(
        err.contains("--hsm-module") && err.contains("\"sigil-e2e\""),
        "{err}"
    );
    // The PIN from the environment works as well as the file.
    auth.extra_args = [
        "--hsm-module",
        SOFTHSM_MODULE,
        "--hsm-token-label",
        "sigil-e2e",
    ]
    .map(String::from)
    .to_vec();
    auth.envs
        .push(("SIGIL_HSM_PIN".into(), "user-pin-5678".into()));
    auth.spawn();
    bot_gets_verifiable_certificate(&auth, "hsm-bot-2");

    // A standby destroys the key of the CA it drops on the token, and says so in
    // the audit log: the old CA after a rotation, the new one after a rollback.
    let before =
        serde_json::from_str::<serde_json::Value>(&auth.ok(&["ca", "status", "--format", "json"]))
            .expect("json");
    let old_client = before
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "client"))
        .map(|c| c["signing_fingerprint"].clone())
        .expect("client CA");
    for phase in ["init", "update_clients", "update_servers"] {
        auth.ok(&["ca", "rotate", "--type", "client", "--phase", phase]);
    }
    auth.ok(&[
        "ca", "rotate", "--type", "client", "--phase", "standby", "--force",
    ]);
    let destroyed = auth.audit("ca.key_destroyed");
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    assert_eq!(destroyed[0]["fields"]["ca"], "client");
    assert_eq!(destroyed[0]["fields"]["fingerprint"], old_client);
    for phase in ["init", "rollback", "standby"] {
        auth.ok(&["ca", "rotate", "--type", "spiffe", "--phase", phase]);
    }
    let destroyed = auth.audit("ca.key_destroyed");
    assert_eq!(destroyed.len(), 2, "{destroyed:?}");
    assert_eq!(destroyed[1]["fields"]["ca"], "spiffe");
    // Every key still named by a record is there: a restart loads them all.
    auth.stop();
    auth.spawn();
    bot_gets_verifiable_certificate(&auth, "hsm-bot-3");
}
