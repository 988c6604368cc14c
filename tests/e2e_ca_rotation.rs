//! End to end: CA rotation without downtime. A real auth service and agent (identity,
//! X.509-SVID and JWT-SVID outputs) while every CA type is rotated through init,
//! update_clients, update_servers and standby. Throughout, a prober makes mTLS calls
//! to the auth service with the agent's identity file and checks the SVID against the
//! agent's bundle with openssl: none may fail. At each phase the agent must have
//! renewed with the CA that phase calls for; afterwards credentials of the old CAs are
//! refused. Also: rollback, the standby guards (instances still on the CA standby
//! drops), refusals, RBAC, an automatic rotation on its schedule, and a revoked SVID
//! of either CA listed by its issuer's CRL during the overlap.

mod common;

use common::rotation::*;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn every_ca_rotates_with_the_agent_renewing_and_nothing_failing() {
    let rig = Rig::start();
    let work = rig.dir.path();
    // Credentials from before the rotation, to show the old CAs are gone at the end.
    let old_identity = work.join("old-identity");
    std::fs::copy(rig.id().join("identity"), &old_identity).expect("copy identity");
    let old_tls = work.join("old-tls.crt");
    std::fs::copy(rig.id().join("tls.crt"), &old_tls).expect("copy tls.crt");
    let old_ssh_cert = work.join("old-ssh-cert.pub");
    std::fs::copy(rig.id().join("ssh.key-cert.pub"), &old_ssh_cert).expect("copy ssh cert");
    let old_kids = rig.kids();
    assert_eq!(old_kids.len(), 1, "{old_kids:?}");
    let old_pin = rig.auth.pin.clone();
    let before = rig.status();
    let prober = Prober::start(&rig);

    // init: the new CAs are trusted everywhere; the old ones still sign.
    for t in TYPES {
        rig.rotate(t, "init");
    }
    let st = rig.status();
    for (i, t) in TYPES.iter().enumerate() {
        assert_eq!(st[i]["type"], *t);
        assert_eq!(st[i]["phase"], "init", "{st}");
        assert_eq!(st[i]["mode"], "manual");
        assert_eq!(
            st[i]["signing_fingerprint"],
            before[i]["signing_fingerprint"]
        );
        assert_ne!(st[i]["new_fingerprint"], before[i]["signing_fingerprint"]);
    }
    let new_of = |t: &str| {
        let e = rig.export(t);
        assert_eq!(e.len(), 2, "{t} during a rotation exports both CAs: {e:?}");
        e[0].clone()
    };
    let (new_client, new_spiffe, new_ssh_user) =
        (new_of("client"), new_of("spiffe"), new_of("ssh-user"));
    let new_host = new_of("host");
    let kids = rig.kids();
    assert_eq!(kids.len(), 2, "the JWKS publishes both keys: {kids:?}");
    let new_kid = kids.iter().find(|k| !old_kids.contains(k)).unwrap().clone();
    rig.wait_agent("both CAs trusted in every output", || {
        count_certs(&rig.x509().join("bundle.pem")) == 2
            && count_certs(&rig.id().join("ca.crt")) == 4
            && std::fs::read_to_string(rig.id().join("known_hosts"))
                .unwrap_or_default()
                .lines()
                .count()
                == 2
    });
    assert!(
        !signed_by(work, &new_client, &rig.id().join("tls.crt")),
        "init: the old client CA still signs"
    );

    // update_clients: the new CAs sign what the agent is issued.
    for t in TYPES {
        rig.rotate(t, "update_clients");
    }
    let new_ssh_fp = ssh_fingerprint(work, &new_ssh_user);
    rig.wait_agent("credentials from the new CAs", || {
        signed_by(work, &new_client, &rig.id().join("tls.crt"))
            && signed_by(work, &new_spiffe, &rig.x509().join("svid.pem"))
            && jwt_kid(&rig.jwt().join("jwt_svid")) == new_kid
            && ssh_signing_ca(&rig.id().join("ssh.key-cert.pub")) == new_ssh_fp
    });

    // update_servers: the auth service serves with the new host CA.
    for t in TYPES {
        rig.rotate(t, "update_servers");
    }
    let status: serde_json::Value =
        serde_json::from_str(&rig.auth.ok(&["status", "--format", "json"])).expect("json");
    let new_pin = status["ca_pin"].as_str().unwrap().to_string();
    assert_ne!(new_pin, old_pin, "update_servers: the server's CA changed");
    let served = served_certs(&rig.auth.addr());
    assert!(
        pems(&served).contains(&new_host),
        "the auth service does not present the new host CA:\n{served}"
    );
    rig.wait_agent("a renewal through the new server certificate", || true);

    // standby: only the new CAs remain.
    for t in TYPES {
        rig.rotate(t, "standby");
    }
    rig.wait_agent("only the new CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
            && count_certs(&rig.id().join("ca.crt")) == 2
            && std::fs::read_to_string(rig.id().join("known_hosts"))
                .unwrap_or_default()
                .lines()
                .count()
                == 1
    });
    // A few more rounds of probing on the finished state.
    std::thread::sleep(Duration::from_secs(2));
    let (rounds, failures) = prober.finish();
    assert!(rounds >= 10, "only {rounds} probe rounds ran");
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed during the rotation: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(
        !rig.log().contains("renewal failed"),
        "a renewal failed during the rotation:\n{}",
        rig.log()
    );

    let st = rig.status();
    for (i, t) in TYPES.iter().enumerate() {
        assert_eq!(st[i]["phase"], "standby", "{t}: {st}");
        assert_ne!(
            st[i]["signing_fingerprint"], before[i]["signing_fingerprint"],
            "{t}"
        );
        assert_eq!(rig.export(t).len(), 1, "{t}");
    }
    assert_eq!(rig.kids(), vec![new_kid]);
    // The old CAs are gone: their credentials no longer work or verify.
    let o = rig.auth.remote(&old_identity, &["get", "roles"]);
    assert!(
        !o.status.success(),
        "an identity of the old client CA was accepted"
    );
    assert!(!signed_by(work, &rig.export("client")[0], &old_tls));
    assert_ne!(ssh_signing_ca(&old_ssh_cert), new_ssh_fp);
    assert_eq!(
        rig.export("client")[0],
        new_client,
        "standby made the new client CA the established one"
    );
    // A new agent joins with the pin `bots add` prints now.
    let token = bot_token(&rig.auth, "rot-late", "rot-role");
    let late = AgentDirs::new();
    let o = Command::new(sigil_bin())
        .args([
            "agent",
            "start",
            "--oneshot",
            "--auth-server",
            &rig.auth.addr(),
        ])
        .args(["--ca-pin", &new_pin, "--token", &token])
        .arg("--storage")
        .arg(&late.storage)
        .arg("--output")
        .arg(format!("identity:{}", late.out.display()))
        .output()
        .expect("agent");
    assert!(o.status.success(), "{}", text(&o));
    assert!(signed_by(work, &new_client, &late.out.join("tls.crt")));

    // Every step is audited, with who made it.
    let events = rig.auth.audit("ca.rotation");
    assert_eq!(events.len(), TYPES.len() * 4, "{events:#?}");
    assert!(
        events.iter().all(|e| e["fields"]["by"].is_string()),
        "{events:#?}"
    );
    let finished: Vec<_> = events
        .iter()
        .filter(|e| e["fields"]["outcome"] == "rotated")
        .collect();
    assert_eq!(finished.len(), TYPES.len());
}

#[test]
fn rollback_keeps_the_old_ca_and_standby_waits_for_instances_that_have_not_renewed() {
    let rig = Rig::start();
    let work = rig.dir.path();
    let old_client = rig.export("client").remove(0);
    // An instance that joins once and never renews (oneshot).
    let token = bot_token(&rig.auth, "rot-idle", "rot-role");
    let idle = AgentDirs::new();
    assert!(idle.oneshot(&rig.auth, Some(&token)).status.success());

    // Steps out of order are refused with the step that comes next.
    let o = rig.auth.admin(&[
        "ca",
        "rotate",
        "--type",
        "client",
        "--phase",
        "update_clients",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("the next phase is init"), "{}", text(&o));
    rig.rotate("client", "init");
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "client", "--phase", "standby"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("update_clients (or rollback)"),
        "{}",
        text(&o)
    );
    let o = rig.auth.admin(&["ca", "rotate", "--type", "client"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already in phase init"), "{}", text(&o));

    // A bot may not rotate a CA unless a rule grants it.
    let o = rig.auth.remote(
        &rig.id().join("identity"),
        &["ca", "rotate", "--type", "jwt", "--phase", "init"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("may not update cert_authority"),
        "{}",
        text(&o)
    );

    rig.rotate("client", "update_clients");
    let new_client = rig.export("client").remove(0);
    rig.wait_agent("a certificate from the new client CA", || {
        signed_by(work, &new_client, &rig.id().join("tls.crt"))
    });
    // An instance that joins while the new CA signs, then does not renew.
    let mid_token = bot_token(&rig.auth, "rot-mid", "rot-role");
    let mid = AgentDirs::new();
    assert!(mid.oneshot(&rig.auth, Some(&mid_token)).status.success());
    assert!(signed_by(work, &new_client, &mid.out.join("tls.crt")));
    rig.rotate("client", "update_servers");

    // The idle instance still holds a credential of the old CA: standby waits.
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "client", "--phase", "standby"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("rot-idle/") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );

    // Roll back: the old CA signs again, the new one stays trusted until standby.
    rig.rotate("client", "rollback");
    rig.wait_agent("a certificate from the old client CA again", || {
        signed_by(work, &old_client, &rig.id().join("tls.crt"))
    });
    assert_eq!(rig.export("client").len(), 2);
    // The instance that joined under the new CA holds its credential: standby waits
    // for it (and not for the idle one, whose credential is the old CA's).
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "client", "--phase", "standby"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("1 bot instance(s) last renewed while the new client CA signed")
            && text(&o).contains("rot-mid/")
            && !text(&o).contains("rot-idle/"),
        "{}",
        text(&o)
    );
    let o = mid.oneshot(&rig.auth, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(signed_by(work, &old_client, &mid.out.join("tls.crt")));
    rig.rotate("client", "standby");
    assert_eq!(rig.export("client"), vec![old_client.clone()]);
    let st = rig.status();
    assert_eq!(st[1]["type"], "client");
    assert_eq!(st[1]["phase"], "standby");
    // Both agents keep working with the old CA.
    let o = rig
        .auth
        .remote(&rig.id().join("identity"), &["get", "roles"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(signed_by(work, &old_client, &idle.out.join("tls.crt")));
    let outcome: Vec<_> = rig
        .auth
        .audit("ca.rotation")
        .into_iter()
        .map(|e| {
            format!(
                "{}->{}{}",
                e["fields"]["from"].as_str().unwrap_or_default(),
                e["fields"]["to"].as_str().unwrap_or_default(),
                e["fields"]["outcome"]
                    .as_str()
                    .map(|o| format!(" {o}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            "standby->init",
            "init->update_clients",
            "update_clients->update_servers",
            "update_servers->rollback",
            "rollback->standby rolled_back"
        ]
    );
}

#[test]
fn an_automatic_rotation_advances_on_its_schedule() {
    let rig = Rig::start();
    let work = rig.dir.path();
    let o = rig
        .auth
        .admin(&["ca", "rotate", "--type", "spiffe", "--grace-period", "10s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("shorter than the minimum"),
        "{}",
        text(&o)
    );
    let out = rig
        .auth
        .ok(&["ca", "rotate", "--type", "spiffe", "--grace-period", "30s"]);
    assert!(
        out.contains("phase init (auto)") && out.contains("next: update_clients at"),
        "{out}"
    );
    let new_spiffe = rig.export("spiffe").remove(0);
    let prober = Prober::start(&rig);
    wait_until(
        "the automatic rotation to finish",
        Duration::from_secs(90),
        || rig.status()[5]["phase"] == "standby",
    );
    rig.wait_agent("only the new spiffe CA in the bundle", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
    });
    let (rounds, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(signed_by(work, &new_spiffe, &rig.x509().join("svid.pem")));
    assert_eq!(rig.export("spiffe"), vec![new_spiffe]);
    let steps: Vec<String> = rig
        .auth
        .audit("ca.rotation")
        .iter()
        .map(|e| {
            assert_eq!(e["fields"]["mode"], "auto", "{e}");
            e["fields"]["to"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        steps,
        ["init", "update_clients", "update_servers", "standby"]
    );
}

/// Two auth servers on one PostgreSQL: the rotation is driven through A while the
/// agent only knows B. B learns of every step from the change feed, serves with the
/// new host CA at update_servers, and the agent follows it through B alone.
#[test]
fn a_rotation_made_through_one_server_reaches_agents_of_another() {
    let url = common::postgres::fresh_db();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit-key.json");
    let server = || Auth::start_with(&["--store", &url, "--audit-key", key.to_str().unwrap()]);
    let a = server();
    let rig = Rig::on(server());
    let work = rig.dir.path();
    let prober = Prober::start(&rig);
    let served_by_b = || served_certs(&rig.auth.addr());
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "init"]);
    }
    let new_host = rig.export("host").remove(0);
    let new_spiffe = rig.export("spiffe").remove(0);
    assert_eq!(rig.status()[0]["phase"], "init", "B follows A's step");
    rig.wait_agent("both CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 2
            && count_certs(&rig.id().join("ca.crt")) == 3
    });
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "update_clients"]);
    }
    rig.wait_agent("an SVID from the new spiffe CA", || {
        signed_by(work, &new_spiffe, &rig.x509().join("svid.pem"))
    });
    assert!(!pems(&served_by_b()).contains(&new_host));
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "update_servers"]);
    }
    wait_until(
        "B to serve with the new host CA",
        Duration::from_secs(10),
        || pems(&served_by_b()).contains(&new_host),
    );
    rig.wait_agent("a renewal through B's new certificate", || true);
    for t in ["host", "spiffe"] {
        a.ok(&["ca", "rotate", "--type", t, "--phase", "standby"]);
    }
    rig.wait_agent("only the new CAs trusted", || {
        count_certs(&rig.x509().join("bundle.pem")) == 1
            && count_certs(&rig.id().join("ca.crt")) == 2
    });
    let (rounds, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "{} of {rounds} probe rounds failed: {failures:#?}\nagent log:\n{}",
        failures.len(),
        rig.log()
    );
    assert!(!rig.log().contains("renewal failed"), "{}", rig.log());
    assert_eq!(rig.export("host"), vec![new_host.clone()]);
    assert_eq!(
        a.ok(&["ca", "export", "--type", "host"]).trim_end(),
        new_host.trim_end()
    );
}

#[test]
fn an_svid_of_either_spiffe_ca_can_be_revoked_during_the_overlap() {
    let rig = Rig::start();
    let work = rig.dir.path();
    let old_svid = work.join("old-svid.pem");
    std::fs::copy(rig.x509().join("svid.pem"), &old_svid).expect("copy svid");
    rig.rotate("spiffe", "init");
    rig.rotate("spiffe", "update_clients");
    let new_spiffe = rig.export("spiffe").remove(0);
    rig.wait_agent("an SVID from the new spiffe CA", || {
        signed_by(work, &new_spiffe, &rig.x509().join("svid.pem"))
    });

    // The SVID of the old CA leaks: revoked, its issuer's CRL must list it.
    let o = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            old_svid.to_str().unwrap(),
        ],
    );
    let serial = stdout(&o).trim().trim_start_matches("serial=").to_string();
    rig.auth.ok(&[
        "workload-identity",
        "revocations",
        "add",
        "--serial",
        &serial,
        "--reason",
        "leaked",
    ]);
    let crl = rig.x509().join("svid-crl.pem");
    rig.wait_agent("a CRL from each trusted spiffe CA", || {
        std::fs::read_to_string(&crl)
            .is_ok_and(|t| t.matches("-----BEGIN X509 CRL-----").count() == 2)
    });
    let verify = |cert: &std::path::Path| {
        run(
            "openssl",
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                rig.x509().join("bundle.pem").to_str().unwrap(),
                "-CRLfile",
                crl.to_str().unwrap(),
                cert.to_str().unwrap(),
            ],
        )
    };
    let o = verify(&old_svid);
    assert!(
        !o.status.success() && text(&o).contains("certificate revoked"),
        "{}",
        text(&o)
    );
    // The current SVID (new CA) checks against its own CRL and is not revoked.
    let o = verify(&rig.x509().join("svid.pem"));
    assert!(o.status.success(), "{}", text(&o));
}
