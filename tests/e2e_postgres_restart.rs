//! PostgreSQL restarted under load: two auth servers go unready while the database is
//! away and ready again after, renewals fail cleanly meanwhile (the agent keeps its
//! credential), and nothing is half-written: every renewal the agent saw succeed is one
//! generation step, the audit chain verifies, no instance was locked.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::postgres::{PrivatePostgres, psql};
use common::*;

#[test]
fn servers_go_unready_and_recover_and_nothing_is_half_written() {
    let pg = PrivatePostgres::start();
    let url = pg.fresh_db("restart");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit-key.json");
    let key = key.to_str().expect("utf8");
    let a = Auth::start_with(&["--store", &url, "--audit-key", key]);
    let b = Auth::start_with(&["--store", &url, "--audit-key", key]);
    for s in [&a, &b] {
        assert_eq!(
            readyz(s).0,
            200,
            "ready before the restart: {}",
            readyz(s).1
        );
    }

    // Four instances, each renewing in a loop through one of the servers.
    let agents: Vec<AgentDirs> = (0..4)
        .map(|i| {
            let token = a.bot(&format!("load{i}"), &["x"]);
            let dirs = AgentDirs::new();
            let out = dirs.oneshot(if i % 2 == 0 { &a } else { &b }, Some(&token));
            assert!(out.status.success(), "{}", text(&out));
            dirs
        })
        .collect();
    let agents = Arc::new(agents);
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = [a.addr(), b.addr()];
    let pin = a.pin.clone();
    let load: Vec<_> = (0..agents.len())
        .map(|i| {
            let (agents, stop, addr, pin) = (
                agents.clone(),
                stop.clone(),
                addrs[i % 2].clone(),
                pin.clone(),
            );
            std::thread::spawn(move || {
                let dirs = &agents[i];
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let before = dirs.generation();
                    let out = Command::new(sigil_bin())
                        .args(["agent", "start", "--auth-server", &addr, "--ca-pin", &pin])
                        .arg("--storage")
                        .arg(&dirs.storage)
                        .arg("--output")
                        .arg(format!("identity:{}", dirs.out.display()))
                        .args(["--credential-ttl", "1h", "--oneshot"])
                        .output()
                        .expect("run agent");
                    let after = dirs.generation();
                    if out.status.success() {
                        assert_eq!(after, before + 1, "one step per renewal");
                    } else {
                        // The run can fail after its renewal was saved (a later call
                        // met the database going away): then it is one step, never
                        // more; a failed renewal keeps the credential.
                        assert!(
                            after == before || after == before + 1,
                            "generation {before} -> {after} in a failed run"
                        );
                        failed += 1;
                    }
                    ok += after - before;
                }
                (ok, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1));
    pg.ctl("stop");
    for s in [&a, &b] {
        wait_until("the server to go unready", Duration::from_secs(15), || {
            readyz(s).0 == 503
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.ctl("resume");
    for s in [&a, &b] {
        wait_until(
            "the server to be ready again",
            Duration::from_secs(30),
            || readyz(s).0 == 200,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut total_ok = 0;
    let mut total_failed = 0;
    for (i, h) in load.into_iter().enumerate() {
        let (ok, failed) = h.join().expect("load thread");
        total_ok += ok;
        total_failed += failed;
        // Joined at generation 1; every saved renewal was one step.
        assert_eq!(
            agents[i].generation(),
            1 + ok,
            "agent {i}: generation vs renewals"
        );
    }
    assert!(total_ok > 0, "renewals succeeded around the restart");
    assert!(
        total_failed > 0,
        "renewals failed while the database was down"
    );

    let stored: u64 = psql(
        &url,
        // A renewal answered again for the same key after a lost answer is audited
        // again with "retry": true; it is not a new step.
        "SELECT count(*) FROM audit WHERE type = 'bot.renewal' \
         AND coalesce(fields::jsonb ->> 'retry', 'false') <> 'true'",
    )
    .parse()
    .expect("count");
    assert_eq!(
        stored, total_ok,
        "one renewal event per generation step the agents saved"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM audit WHERE type = 'bot.generation_mismatch'"
        ),
        "0"
    );
    assert_eq!(a.instances().len(), 4);
    let v = b.ok(&["audit", "verify"]);
    assert!(v.contains("intact"), "{v}");
}
