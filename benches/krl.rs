//! KRL build time and size: `sigil_pki::Krl::to_bytes` against `ssh-keygen -k` on the same input.
//!
//! Input: SERIALS random u64 serials (deterministic generator) under one Ed25519 CA; the same
//! with KEY_IDS key IDs added; and SERIALS serials in runs of 100 contiguous ones. Each is built RUNS times; medians are reported.
//! `ssh-keygen -k` reads the same revocations from a spec file (`serial: N`, `id: X`) and is
//! timed as a process, start to exit. Both KRLs are then printed with `ssh-keygen -Q -l` and
//! must list the same revocations, so the figures compare equal work.
//!
//! `cargo bench -p sigil-bench --bench krl` (env: SERIALS=100000 KEY_IDS=10000 RUNS=7)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sigil_bench::env;
use sigil_pki::{Krl, KrlCertSection};

fn main() -> anyhow::Result<()> {
    let serial_count = env("SERIALS", 100_000);
    let key_id_count = env("KEY_IDS", 10_000);
    let runs = env("RUNS", 7).max(1);

    let dir = tempfile::tempdir()?;
    ssh_keygen(
        &[
            "-q", "-t", "ed25519", "-N", "", "-C", "bench-ca", "-f", "ca",
        ],
        dir.path(),
    )?;
    let ca_line = std::fs::read_to_string(dir.path().join("ca.pub"))?;

    // splitmix64: reproducible serials without a rand dependency; 0 is not a valid serial.
    let mut state = 0x5147_494c_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    };
    let serials: Vec<u64> = (0..serial_count).map(|_| next()).collect();
    let key_ids: Vec<String> = (0..key_id_count)
        .map(|i| format!("user-{i:05}@bench"))
        .collect();

    println!(
        "KRL build: {serial_count} random u64 serials, {key_id_count} key IDs, {runs} runs each"
    );
    println!(
        "{:<34} {:>12} {:>14} {:>12} {:>9}",
        "scenario", "sigil ms", "ssh-keygen ms", "ratio", "bytes"
    );
    // The same count as 1,000 runs of contiguous serials (where ranges and bitmaps pay off).
    let run_len = 100;
    let runs_of_serials: Vec<u64> = (0..serial_count / run_len)
        .flat_map(|_| {
            let start = next() >> 1;
            start..start + run_len as u64
        })
        .collect();
    for (name, serials, ids) in [
        ("random serials", &serials, &[][..]),
        ("random serials + key IDs", &serials, &key_ids[..]),
        ("serials in runs of 100", &runs_of_serials, &[][..]),
    ] {
        let krl = Krl {
            version: 1,
            generated_unix: 1_700_000_000,
            comment: String::new(), // ssh-keygen -k writes none; the listings must match
            certs: vec![KrlCertSection {
                ca_public_key_openssh: Some(ca_line.clone()),
                serials: serials.clone(),
                key_ids: ids.to_vec(),
            }],
            revoked_keys_openssh: vec![],
        };
        let mut ours = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..runs {
            // The input clone is part of what a caller pays (the section owns its vectors).
            let start = Instant::now();
            let input = krl.clone();
            bytes = input.to_bytes()?;
            ours.push(start.elapsed());
        }
        std::fs::write(dir.path().join("ours.krl"), &bytes)?;

        let mut spec = String::with_capacity(serials.len() * 30);
        for serial in serials.iter() {
            spec.push_str(&format!("serial: {serial}\n"));
        }
        for id in ids {
            spec.push_str(&format!("id: {id}\n"));
        }
        std::fs::write(dir.path().join("spec"), spec)?;
        let mut theirs = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            ssh_keygen(
                &[
                    "-q", "-k", "-f", "ref.krl", "-s", "ca.pub", "-z", "1", "spec",
                ],
                dir.path(),
            )?;
            theirs.push(start.elapsed());
        }
        let reference = std::fs::read(dir.path().join("ref.krl"))?;

        let (ours_list, ref_list) = (
            listing("ours.krl", dir.path())?,
            listing("ref.krl", dir.path())?,
        );
        if let Some((a, b)) = ours_list
            .lines()
            .zip(ref_list.lines())
            .find(|(a, b)| a != b)
            .or((ours_list != ref_list).then_some(("(length)", "(length)")))
        {
            bail!(
                "{name}: ssh-keygen -Q -l lists different revocations: ours {a:?}, ssh-keygen {b:?}"
            );
        }
        let (a, b) = (median(&mut ours), median(&mut theirs));
        println!(
            "{:<34} {:>12.2} {:>14.2} {:>11.1}x {:>9}",
            format!("{name} (sigil)"),
            ms(a),
            ms(b),
            b.as_secs_f64() / a.as_secs_f64(),
            bytes.len()
        );
        println!(
            "{:<34} {:>12} {:>14} {:>12} {:>9}",
            format!("{name} (ssh-keygen -k size)"),
            "",
            "",
            "",
            reference.len()
        );
    }
    Ok(())
}

fn ssh_keygen(args: &[&str], dir: &Path) -> anyhow::Result<std::process::Output> {
    let output = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .context("this benchmark needs OpenSSH's ssh-keygen on PATH")?;
    if !output.status.success() {
        bail!(
            "ssh-keygen {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// `ssh-keygen -Q -l` output without the local-time "Generated at" line.
fn listing(krl: &str, dir: &Path) -> anyhow::Result<String> {
    let output = ssh_keygen(&["-Q", "-l", "-f", krl], dir)?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with("# Generated at"))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
