//! KRL tests: a small decoder of our own for fast round-trip properties, and checks against
//! the real `ssh-keygen` (`-k` to build a reference KRL, `-Q` to test certificates, `-Q -l`
//! to print what a KRL revokes). The ssh-keygen tests fail, never skip, when it is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

// ---------- decoder (test-only) ----------

/// What one certificate section of a KRL revokes, as decoded from the bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decoded {
    ca_blob: Vec<u8>,
    serials: BTreeSet<u64>,
    key_ids: BTreeSet<String>,
    subsection_kinds: Vec<u8>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.0.len() >= n, "truncated KRL");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().expect("8 bytes"))
    }
    fn string(&mut self) -> &'a [u8] {
        let len = self.u32() as usize;
        self.take(len)
    }
}

/// ((version, generated date, comment), certificate sections, SHA-256 hashes).
type DecodedKrl = ((u64, u64, String), Vec<Decoded>, Vec<Vec<u8>>);

/// Decode our KRL; panics on anything malformed.
fn decode(bytes: &[u8]) -> DecodedKrl {
    let mut r = Reader(bytes);
    assert_eq!(r.take(8), KRL_MAGIC);
    assert_eq!(r.u32(), KRL_FORMAT_VERSION);
    let version = r.u64();
    let date = r.u64();
    assert_eq!(r.u64(), 0, "flags");
    assert!(r.string().is_empty(), "reserved");
    let comment = String::from_utf8(r.string().to_vec()).expect("utf8 comment");
    let mut certs = Vec::new();
    let mut hashes = Vec::new();
    while !r.0.is_empty() {
        let kind = r.u8();
        let mut body = Reader(r.string());
        match kind {
            SECTION_CERTIFICATES => certs.push(decode_certs(&mut body)),
            SECTION_FINGERPRINT_SHA256 => {
                while !body.0.is_empty() {
                    let hash = body.string().to_vec();
                    assert_eq!(hash.len(), 32);
                    hashes.push(hash);
                }
                assert!(hashes.windows(2).all(|w| w[0] < w[1]), "hashes ascending");
            }
            other => panic!("unexpected section {other}"),
        }
    }
    ((version, date, comment), certs, hashes)
}

fn decode_certs(body: &mut Reader) -> Decoded {
    let mut out = Decoded {
        ca_blob: body.string().to_vec(),
        ..Decoded::default()
    };
    assert!(body.string().is_empty(), "reserved");
    while !body.0.is_empty() {
        let kind = body.u8();
        let mut sub = Reader(body.string());
        out.subsection_kinds.push(kind);
        match kind {
            CERT_SERIAL_LIST => {
                while !sub.0.is_empty() {
                    assert!(out.serials.insert(sub.u64()), "duplicate serial");
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (sub.u64(), sub.u64());
                assert!(lo <= hi && lo != 0);
                out.serials.extend(lo..=hi);
            }
            CERT_SERIAL_BITMAP => {
                let offset = sub.u64();
                let mpint = sub.string();
                assert!(!mpint.is_empty() && mpint[0] & 0x80 == 0, "positive mpint");
                assert!(mpint.len() <= 2049, "OpenSSH's bignum limit");
                for (i, byte) in mpint.iter().rev().enumerate() {
                    for bit in 0..8 {
                        if byte & (1 << bit) != 0 {
                            out.serials.insert(offset + (i as u64) * 8 + bit);
                        }
                    }
                }
            }
            CERT_KEY_ID => {
                while !sub.0.is_empty() {
                    let id = String::from_utf8(sub.string().to_vec()).expect("utf8 id");
                    out.key_ids.insert(id);
                }
            }
            other => panic!("unexpected cert subsection {other:#x}"),
        }
        assert!(sub.0.is_empty(), "trailing data in subsection {kind:#x}");
    }
    out
}

fn one_section(serials: Vec<u64>, key_ids: Vec<String>) -> Krl {
    Krl {
        certs: vec![KrlCertSection {
            ca_public_key_openssh: None,
            serials,
            key_ids,
        }],
        ..Krl::default()
    }
}

// ---------- pure tests ----------

#[test]
fn header_is_the_spec_layout() {
    let krl = Krl {
        version: 7,
        generated_unix: 1_700_000_000,
        comment: "sigil".into(),
        ..Krl::default()
    };
    let bytes = krl.to_bytes().expect("encode");
    let mut expected = b"SSHKRL\n\0".to_vec();
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(&7u64.to_be_bytes());
    expected.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    expected.extend_from_slice(&0u64.to_be_bytes());
    expected.extend_from_slice(&0u32.to_be_bytes());
    expected.extend_from_slice(&5u32.to_be_bytes());
    expected.extend_from_slice(b"sigil");
    assert_eq!(bytes, expected);
}

#[test]
fn section_choice_uses_range_list_and_bitmap() {
    let contiguous = one_section((1000..=5000).collect(), vec![]);
    let (_, certs, _) = decode(&contiguous.to_bytes().expect("encode"));
    assert_eq!(certs[0].subsection_kinds, vec![CERT_SERIAL_RANGE]);

    let sparse = one_section(vec![1 << 40, 1 << 50, 1 << 60], vec![]);
    let (_, certs, _) = decode(&sparse.to_bytes().expect("encode"));
    assert_eq!(certs[0].subsection_kinds, vec![CERT_SERIAL_LIST]);

    let every_third: Vec<u64> = (1..3000).step_by(3).collect();
    let dense = one_section(every_third.clone(), vec![]);
    let bytes = dense.to_bytes().expect("encode");
    let (_, certs, _) = decode(&bytes);
    assert_eq!(certs[0].subsection_kinds, vec![CERT_SERIAL_BITMAP]);
    assert_eq!(certs[0].serials, every_third.into_iter().collect());
    assert!(
        bytes.len() < 500,
        "1000 serials in a 3000-bit bitmap: {}",
        bytes.len()
    );
}

#[test]
fn bitmaps_stay_within_openssh_bignum_limit() {
    // Every other serial over 100,000: one bitmap would need 6,250 bytes, over OpenSSH's 2,048.
    let serials: Vec<u64> = (1..100_000).step_by(2).collect();
    let bytes = one_section(serials.clone(), vec![])
        .to_bytes()
        .expect("encode");
    let (_, certs, _) = decode(&bytes);
    assert!(certs[0].subsection_kinds.len() >= 4);
    assert_eq!(certs[0].serials, serials.into_iter().collect());

    // ssh-keygen loads it. (ssh-keygen 9.2's own `-k` output for this set is a single
    // 12 KB bitmap that its `-Q` then refuses: "bignum is too large".)
    let fx = Fixture::new();
    let mut krl = one_section((1..100_000).step_by(2).collect(), vec![]);
    krl.certs[0].ca_public_key_openssh = Some(fx.ca_line("ca"));
    fx.write("dense.krl", &krl.to_bytes().expect("encode"));
    let certs = vec![fx.cert("ca", "x", 99_999), fx.cert("ca", "x", 50_000)];
    assert_eq!(fx.revoked("dense.krl", &certs), vec![true, false]);
}

#[test]
fn invalid_input_is_refused_with_context() {
    let err = one_section(vec![3, 0], vec![]).to_bytes().unwrap_err();
    assert!(err.to_string().contains("serials[1] = 0"), "{err}");

    let err = one_section(vec![], vec!["".into()]).to_bytes().unwrap_err();
    assert!(err.to_string().contains("non-empty"), "{err}");

    let err = one_section(vec![], vec!["a\0b".into()])
        .to_bytes()
        .unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");

    let mut krl = one_section(vec![1], vec![]);
    krl.certs[0].ca_public_key_openssh = Some("ssh-ed25519 not-base64!".into());
    let err = krl.to_bytes().unwrap_err();
    assert!(
        err.to_string().contains("certs[0].ca_public_key_openssh"),
        "{err}"
    );

    let krl = Krl {
        revoked_keys_openssh: vec!["garbage".into()],
        ..Krl::default()
    };
    let err = krl.to_bytes().unwrap_err();
    assert!(err.to_string().contains("revoked_keys_openssh[0]"), "{err}");

    let krl = Krl {
        comment: "x\0".into(),
        ..Krl::default()
    };
    assert!(krl.to_bytes().is_err());
}

/// Serials from a few clusters (so runs, gaps and bitmaps all occur) plus scattered large ones.
fn serial_strategy() -> impl Strategy<Value = Vec<u64>> {
    let clustered = (1u64..6, 0u64..40_000).prop_map(|(cluster, off)| cluster * 1_000_000 + off);
    let near_max = (0u64..64).prop_map(|off| u64::MAX - off);
    prop::collection::vec(
        prop_oneof![6 => clustered, 2 => 1u64..u64::MAX, 1 => near_max, 1 => 1u64..50],
        0..400,
    )
}

proptest! {
    #[test]
    fn decoded_serials_and_ids_equal_the_input(
        serials in serial_strategy(),
        runs in prop::collection::vec((1u64..1_000_000, 1u64..3000), 0..5),
        ids in prop::collection::vec("[a-zA-Z0-9@._-]{1,12}", 0..20),
    ) {
        let mut all = serials.clone();
        for (lo, len) in runs {
            all.extend(lo..lo + len);
        }
        let bytes = one_section(all.clone(), ids.clone()).to_bytes().expect("encode");
        let (_, certs, _) = decode(&bytes);
        let expected: BTreeSet<u64> = all.into_iter().collect();
        let expected_ids: BTreeSet<String> = ids.into_iter().collect();
        if expected.is_empty() && expected_ids.is_empty() {
            prop_assert!(certs.is_empty());
        } else {
            prop_assert_eq!(&certs[0].serials, &expected);
            prop_assert_eq!(&certs[0].key_ids, &expected_ids);
        }
    }
}

// ---------- against the real ssh-keygen ----------

const SSH_KEYGEN: &str = "ssh-keygen";

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(SSH_KEYGEN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need OpenSSH's ssh-keygen on PATH (apt-get install openssh-client): {e}")
        })
}

fn run_ok(args: &[&str], dir: &Path) -> Output {
    let output = run(args, dir);
    assert!(
        output.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A temp dir with an Ed25519 CA `ca`, a second CA `other-ca`, a user key `user` and a
/// plain key `plain` (for revocation by fingerprint).
struct Fixture {
    dir: tempfile::TempDir,
    counter: std::cell::Cell<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["ca", "other-ca", "user", "plain"] {
            run_ok(
                &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", name],
                dir.path(),
            );
        }
        Fixture {
            dir,
            counter: Default::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_line(&self, ca: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{ca}.pub"))).expect("read CA pub")
    }

    /// Sign a fresh copy of the user key with `ca`; returns the certificate's file name.
    fn cert(&self, ca: &str, key_id: &str, serial: u64) -> String {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let stem = format!("probe{n}");
        std::fs::copy(self.path("user.pub"), self.path(&format!("{stem}.pub"))).expect("copy");
        let serial = serial.to_string();
        run_ok(
            &[
                "-q",
                "-s",
                ca,
                "-I",
                key_id,
                "-z",
                &serial,
                "-n",
                "user",
                &format!("{stem}.pub"),
            ],
            self.dir.path(),
        );
        format!("{stem}-cert.pub")
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).expect("write KRL");
    }

    /// `ssh-keygen -Q -f krl certs…`: whether each certificate is reported revoked.
    fn revoked(&self, krl: &str, certs: &[String]) -> Vec<bool> {
        let mut args = vec!["-Q", "-f", krl];
        args.extend(certs.iter().map(String::as_str));
        let output = run(&args, self.dir.path());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            certs.len(),
            "ssh-keygen -Q -f {krl} could not check (status {}): {stdout} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Vec<bool> = lines
            .iter()
            .zip(certs)
            .map(|(line, cert)| {
                assert!(line.starts_with(cert.as_str()), "line {line:?} for {cert}");
                match line.rsplit(": ").next() {
                    Some("REVOKED") => true,
                    Some("ok") => false,
                    _ => panic!("unexpected ssh-keygen -Q line {line:?}"),
                }
            })
            .collect();
        // Exit status: 1 when any key is revoked, 0 when none is.
        let expected_code = i32::from(result.iter().any(|&r| r));
        assert_eq!(output.status.code(), Some(expected_code), "{stdout}");
        result
    }

    /// `ssh-keygen -Q -l -f krl` without the local-time "Generated at" line.
    fn listing(&self, krl: &str) -> String {
        let output = run_ok(&["-Q", "-l", "-f", krl], self.dir.path());
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with("# Generated at"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn agrees_with_ssh_keygen_k() {
    let fx = Fixture::new();
    let fingerprint = {
        let out = run_ok(&["-l", "-E", "sha256", "-f", "plain.pub"], fx.dir.path());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string()
    };
    // Contiguous runs, a dense cluster (bitmap), scattered serials and key IDs.
    let mut spec = String::from(
        "serial: 5\nserial: 10-20\nserial: 1000000-1000999\nid: alice\nid: bob@example\n",
    );
    let dense: Vec<u64> = (50_000..52_000).step_by(3).collect();
    for serial in &dense {
        spec.push_str(&format!("serial: {serial}\n"));
    }
    spec.push_str("serial: 18446744073709551615\n");
    spec.push_str(&format!("hash: {fingerprint}\n"));
    std::fs::write(fx.path("spec"), &spec).expect("spec");
    run_ok(
        &[
            "-q", "-k", "-f", "ref.krl", "-s", "ca.pub", "-z", "42", "spec",
        ],
        fx.dir.path(),
    );

    let mut serials = vec![5, 18446744073709551615];
    serials.extend(10..=20);
    serials.extend(1_000_000..=1_000_999);
    serials.extend(&dense);
    let ours = Krl {
        version: 42,
        generated_unix: 1_700_000_000,
        comment: String::new(),
        certs: vec![KrlCertSection {
            ca_public_key_openssh: Some(fx.ca_line("ca")),
            serials,
            key_ids: vec!["bob@example".into(), "alice".into(), "alice".into()],
        }],
        revoked_keys_openssh: vec![fx.ca_line("plain")],
    };
    let bytes = ours.to_bytes().expect("encode");
    fx.write("ours.krl", &bytes);
    let reference = std::fs::read(fx.path("ref.krl")).expect("ref");
    // Bytes 20..28 are generated_date; the rest may differ only in how serials are sectioned.
    let same_apart_from_date = bytes.len() == reference.len()
        && bytes[..20] == reference[..20]
        && bytes[28..] == reference[28..];
    eprintln!(
        "KRL sizes: ours {} bytes, ssh-keygen {} bytes; identical apart from the date: {same_apart_from_date}",
        bytes.len(),
        reference.len()
    );

    assert_eq!(fx.listing("ours.krl"), fx.listing("ref.krl"));

    let probes = [
        ("ca", "x", 5, true),
        ("ca", "x", 4, false),
        ("ca", "x", 10, true),
        ("ca", "x", 20, true),
        ("ca", "x", 21, false),
        ("ca", "x", 1_000_999, true),
        ("ca", "x", 1_001_000, false),
        ("ca", "x", 50_003, true),
        ("ca", "x", 50_004, false),
        ("ca", "x", u64::MAX, true),
        ("ca", "alice", 0, true),
        ("ca", "carol", 0, false),
        // Same serial and ID, other CA: a CA-scoped section does not apply.
        ("other-ca", "alice", 5, false),
    ];
    let certs: Vec<String> = probes
        .iter()
        .map(|(ca, id, s, _)| fx.cert(ca, id, *s))
        .collect();
    let expected: Vec<bool> = probes.iter().map(|p| p.3).collect();
    assert_eq!(fx.revoked("ref.krl", &certs), expected, "reference KRL");
    assert_eq!(fx.revoked("ours.krl", &certs), expected, "our KRL");
    // The revoked plain key by SHA-256 fingerprint.
    let plain = vec!["plain.pub".to_string(), "ca.pub".to_string()];
    assert_eq!(fx.revoked("ours.krl", &plain), vec![true, false]);
    assert_eq!(fx.revoked("ref.krl", &plain), vec![true, false]);
}

#[test]
fn any_ca_key_ids_agree_with_ssh_keygen_k() {
    let fx = Fixture::new();
    std::fs::write(fx.path("spec"), "id: deploy-bot\n").expect("spec");
    // `-s none`: ssh-keygen's wildcard ("any CA") section.
    run_ok(
        &["-q", "-k", "-f", "ref.krl", "-s", "none", "spec"],
        fx.dir.path(),
    );
    let ours = Krl {
        certs: vec![KrlCertSection {
            ca_public_key_openssh: None,
            serials: vec![],
            key_ids: vec!["deploy-bot".into()],
        }],
        ..Krl::default()
    };
    fx.write("ours.krl", &ours.to_bytes().expect("encode"));
    assert_eq!(fx.listing("ours.krl"), fx.listing("ref.krl"));
    let certs = vec![
        fx.cert("ca", "deploy-bot", 9),
        fx.cert("other-ca", "deploy-bot", 9),
        fx.cert("ca", "deploy-bot2", 9),
    ];
    assert_eq!(fx.revoked("ours.krl", &certs), vec![true, true, false]);
    assert_eq!(fx.revoked("ref.krl", &certs), vec![true, true, false]);

    // A certificate line is not a CA key nor a plain key.
    let cert_line = std::fs::read_to_string(fx.path(&certs[0])).expect("cert");
    let krl = Krl {
        revoked_keys_openssh: vec![cert_line.clone()],
        ..Krl::default()
    };
    let err = krl.to_bytes().unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let mut krl = one_section(vec![1], vec![]);
    krl.certs[0].ca_public_key_openssh = Some(cert_line);
    assert!(krl.to_bytes().is_err());
}

#[test]
fn ssh_keygen_reports_exactly_the_revoked_certificates() {
    let fx = Fixture::new();
    let ca_line = fx.ca_line("ca");
    let strategy = (
        serial_strategy(),
        prop::collection::vec((1u64..1_000_000, 1u64..3000), 0..3),
        prop::collection::vec("[a-z0-9]{1,6}", 0..6),
        any::<prop::sample::Index>(),
        any::<u64>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&strategy, |(serials, runs, ids, pick, fresh)| {
            let mut all = serials;
            for (lo, len) in runs {
                all.extend(lo..lo + len);
            }
            let revoked: BTreeSet<u64> = all.iter().copied().collect();
            let krl = Krl {
                version: 1,
                generated_unix: 1_700_000_000,
                comment: "proptest".into(),
                certs: vec![KrlCertSection {
                    ca_public_key_openssh: Some(ca_line.clone()),
                    serials: all.clone(),
                    key_ids: ids.clone(),
                }],
                revoked_keys_openssh: vec![],
            };
            fx.write("case.krl", &krl.to_bytes().expect("encode"));

            // Probes: a revoked serial and its neighbours (edges of runs, bitmaps, ranges),
            // a random serial, and key IDs in and out of the set (serial 0: ID only).
            let mut probes: Vec<(String, u64)> = Vec::new();
            if !all.is_empty() {
                let s = all[pick.index(all.len())];
                probes.extend(
                    [s, s.wrapping_sub(1), s.wrapping_add(1)]
                        .map(|s| ("NOTREVOKED".to_string(), s)),
                );
            }
            probes.push(("NOTREVOKED".into(), fresh));
            if let Some(id) = ids.first() {
                probes.push((id.clone(), 0));
            }
            probes.push(("not-in-set-ID".into(), 0));
            let certs: Vec<String> = probes.iter().map(|(id, s)| fx.cert("ca", id, *s)).collect();
            let expected: Vec<bool> = probes
                .iter()
                .map(|(id, s)| ids.contains(id) || (*s != 0 && revoked.contains(s)))
                .collect();
            prop_assert_eq!(
                fx.revoked("case.krl", &certs),
                expected,
                "probes {:?}",
                probes
            );
            Ok(())
        })
        .expect("ssh-keygen disagrees with the KRL");
}
