//! The admin API reached remotely with bots' `identity` outputs: RBAC
//! escalation (granting what one does not hold), calls outside one's rules,
//! a locked or role-less caller. Each is PermissionDenied on the raw gRPC
//! API (past any CLI check), audited as `admin.denied`, and changes nothing.

use crate::common::*;
use crate::harness::*;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use sigil_proto::v1::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tonic::Code;
use tonic::transport::Channel;

static AUTH: Slot = Slot::new(None);
/// Cases count the shared log's `admin.denied` events: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const ROLES: &str = "kind: role\nversion: v1\nmetadata: {name: superadmin}\nspec:\n  allow:\n    rules: [{resources: ['*'], verbs: ['*']}]\n---\nkind: role\nversion: v1\nmetadata: {name: bot-editor}\nspec:\n  allow:\n    rules:\n      - {resources: [bot], verbs: [create, update, read, list]}\n      - {resources: [token], verbs: [create]}\n---\nkind: role\nversion: v1\nmetadata: {name: role-editor}\nspec:\n  allow:\n    rules: [{resources: [role], verbs: [create, update, read, list]}]\n---\nkind: role\nversion: v1\nmetadata: {name: no-role-delete}\nspec:\n  deny:\n    rules: [{resources: [role], verbs: [delete]}]\n---\nkind: role\nversion: v1\nmetadata: {name: reader}\nspec:\n  allow:\n    rules: [{resources: [role, bot], verbs: [read, list]}]\n---\nkind: role\nversion: v1\nmetadata: {name: logins-only}\nspec:\n  allow:\n    logins: [ubuntu]\n";

/// A bot holding `roles`, joined; its identity output copied into the
/// service's directory (it outlives the agent's).
fn admin_bot(auth: &Auth, name: &str, roles: &str) -> PathBuf {
    let out = auth.ok(&["bots", "add", name, "--roles", roles, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let agent = AgentDirs::new();
    let o = agent.oneshot(auth, v["token"].as_str());
    assert!(o.status.success(), "{}", text(&o));
    let idf = auth.dir.path().join(format!("{name}.identity"));
    std::fs::copy(agent.out.join("identity"), &idf).expect("copy identity");
    idf
}

fn auth() -> (Arc<Auth>, std::sync::MutexGuard<'static, ()>) {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let a = shared(&AUTH, || {
        let a = Auth::start();
        a.create("roles.yaml", ROLES);
        a.ok(&["bots", "add", "root-bot", "--roles", "superadmin"]);
        a.ok(&["bots", "add", "peer", "--roles", "bot-editor"]);
        admin_bot(&a, "editor", "bot-editor");
        admin_bot(&a, "roler", "role-editor,no-role-delete");
        admin_bot(&a, "reader", "reader");
        admin_bot(&a, "plain", "logins-only");
        a
    });
    (a, g)
}

fn idf(auth: &Auth, bot: &str) -> String {
    auth.dir
        .path()
        .join(format!("{bot}.identity"))
        .display()
        .to_string()
}

/// Runs `f` on a raw admin client presenting `bot`'s identity output.
fn as_bot<T>(
    auth: &Auth,
    bot: &str,
    f: impl AsyncFnOnce(&mut AdminServiceClient<Channel>) -> T,
) -> T {
    rt().block_on(async {
        use clap::Parser;
        let cli = sigil_cli::cli::Cli::parse_from([
            "sigil",
            "--auth-server",
            &auth.addr(),
            "--identity",
            &idf(auth, bot),
            "status",
        ]);
        let mut c = sigil_cli::admin::connect::connect(&cli.global)
            .await
            .expect("connect");
        f(&mut c).await
    })
}

fn get_json(auth: &Auth, what: &str) -> String {
    let o = auth.admin(&["get", what, "-o", "json"]);
    stdout(&o)
}

fn denied_count(auth: &Auth) -> usize {
    auth.audit("admin.denied").len()
}

/// `r` is PermissionDenied saying `says`, one `admin.denied` event more, and
/// `unchanged` (what the attack aimed at) reads the same before and after.
#[track_caller]
fn escalation_refused<T: std::fmt::Debug>(
    auth: &Auth,
    unchanged: &str,
    says: &str,
    attack: impl FnOnce() -> Result<T, tonic::Status>,
) {
    let (before, denied) = (get_json(auth, unchanged), denied_count(auth));
    refused(attack(), Code::PermissionDenied, says);
    assert_eq!(get_json(auth, unchanged), before, "{unchanged} changed");
    wait_until(
        "the admin.denied event",
        std::time::Duration::from_secs(15),
        || denied_count(auth) > denied,
    );
}

fn create(json: &str) -> CreateResourceRequest {
    CreateResourceRequest {
        json: json.into(),
        upsert: true,
    }
}

/// attack: admin | a bot editor adds superadmin to its own bot (UpdateBot) | PermissionDenied "does not hold"; roles unchanged; admin.denied
#[test]
fn bot_grants_itself_superadmin() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "bot/editor", "does not hold", || {
        as_bot(&auth, "editor", async |c| {
            c.update_bot(UpdateBotRequest {
                name: "editor".into(),
                set_roles: vec!["bot-editor".into(), "superadmin".into()],
            })
            .await
        })
    });
}

/// attack: admin | a bot editor creates a new bot holding superadmin (AddBot) | PermissionDenied "does not hold"; no bot; admin.denied
#[test]
fn bot_creates_a_superadmin_bot() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "bots", "does not hold", || {
        as_bot(&auth, "editor", async |c| {
            c.add_bot(AddBotRequest {
                name: "evil".into(),
                roles: vec!["superadmin".into()],
                ..Default::default()
            })
            .await
        })
    });
}

/// attack: admin | a bot editor rewrites its own bot resource with superadmin (CreateResource upsert) | PermissionDenied "does not hold"; admin.denied
#[test]
fn bot_upserts_itself_with_superadmin() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "bot/editor", "does not hold", || {
        as_bot(&auth, "editor", async |c| {
            c.create_resource(create(
                r#"{"kind":"bot","version":"v1","metadata":{"name":"editor"},"spec":{"roles":["bot-editor","superadmin"]}}"#,
            ))
            .await
        })
    });
}

/// attack: admin | a bot editor gives another existing bot superadmin | PermissionDenied "does not hold"; admin.denied
#[test]
fn bot_grants_a_peer_superadmin() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "bot/peer", "does not hold", || {
        as_bot(&auth, "editor", async |c| {
            c.update_bot(UpdateBotRequest {
                name: "peer".into(),
                set_roles: vec!["superadmin".into()],
            })
            .await
        })
    });
}

/// attack: admin | a token minter mints a join token for the superadmin bot (AddToken) | PermissionDenied "may not mint a join token for bot \"root-bot\""; no token; admin.denied
#[test]
fn token_for_a_more_privileged_bot() {
    let (auth, _g) = auth();
    escalation_refused(
        &auth,
        "tokens",
        "may not mint a join token for bot \"root-bot\": it would grant what the caller does not hold",
        || {
            as_bot(&auth, "editor", async |c| {
                c.add_token(AddTokenRequest {
                    bot: "root-bot".into(),
                    ..Default::default()
                })
                .await
            })
        },
    );
}

/// attack: admin | a token minter writes a `kind: token` resource for the superadmin bot | PermissionDenied "would grant what the caller does not hold"; no token; admin.denied
#[test]
fn token_resource_for_a_more_privileged_bot() {
    let (auth, _g) = auth();
    escalation_refused(
        &auth,
        "tokens",
        "would grant what the caller does not hold",
        || {
            as_bot(&auth, "editor", async |c| {
                c.create_resource(CreateResourceRequest {
                upsert: false,
                ..create(
                    r#"{"kind":"token","version":"v1","metadata":{"name":"0123456789abcdef0123456789abcdef"},"spec":{"bot_name":"root-bot","join_method":"token"}}"#,
                )
            })
            .await
            })
        },
    );
}

/// attack: admin | a role editor widens its own role to `*` on `*` | PermissionDenied "would grant what the caller does not hold (rule * on *"; role unchanged; admin.denied
#[test]
fn role_editor_widens_its_own_role() {
    let (auth, _g) = auth();
    escalation_refused(
        &auth,
        "role/role-editor",
        "it would grant what the caller does not hold (rule * on *",
        || {
            as_bot(&auth, "roler", async |c| {
                c.create_resource(create(
                r#"{"kind":"role","version":"v1","metadata":{"name":"role-editor"},"spec":{"allow":{"rules":[{"resources":["*"],"verbs":["*"]}]}}}"#,
            ))
            .await
            })
        },
    );
}

/// attack: admin | a role editor lifts the deny rule that binds it | PermissionDenied "lifting deny rule delete on role"; the deny stays; admin.denied
#[test]
fn role_editor_lifts_its_deny() {
    let (auth, _g) = auth();
    escalation_refused(
        &auth,
        "role/no-role-delete",
        "lifting deny rule delete on role",
        || {
            as_bot(&auth, "roler", async |c| {
                c.create_resource(create(
                r#"{"kind":"role","version":"v1","metadata":{"name":"no-role-delete"},"spec":{}}"#,
            ))
            .await
            })
        },
    );
}

/// attack: admin | a role editor creates a role granting the `escalate` verb | PermissionDenied "would grant ... (rule escalate on role)"; no role; admin.denied
#[test]
fn role_editor_grants_escalate() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "rule escalate on role", || {
        as_bot(&auth, "roler", async |c| {
            c.create_resource(create(
                r#"{"kind":"role","version":"v1","metadata":{"name":"escalator"},"spec":{"allow":{"rules":[{"resources":["role"],"verbs":["escalate"]}]}}}"#,
            ))
            .await
        })
    });
}

/// attack: admin | a role editor creates a role with SSH logins it does not hold (`root`) | PermissionDenied "would grant ... (login \"root\"; node_labels *=*)"; no role; admin.denied
#[test]
fn role_editor_grants_root_logins() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "login \"root\"; node_labels *=*", || {
        as_bot(&auth, "roler", async |c| {
            c.create_resource(create(
                r#"{"kind":"role","version":"v1","metadata":{"name":"sneaky"},"spec":{"allow":{"logins":["root"],"node_labels":{"*":"*"}}}}"#,
            ))
            .await
        })
    });
}

/// attack: admin | a role editor raises its own role's credential lifetime cap | PermissionDenied "max_ttl ... above the caller's own 12h"; role unchanged; admin.denied
#[test]
fn role_editor_raises_its_max_ttl() {
    let (auth, _g) = auth();
    escalation_refused(
        &auth,
        "role/role-editor",
        "above the caller's own 12h",
        || {
            as_bot(&auth, "roler", async |c| {
                c.create_resource(create(
                r#"{"kind":"role","version":"v1","metadata":{"name":"role-editor"},"spec":{"allow":{"rules":[{"resources":["role"],"verbs":["create","update","read","list"]}]},"options":{"max_ttl":"1000h"}}}"#,
            ))
            .await
            })
        },
    );
}

/// attack: admin | a role editor deletes a role while a deny forbids it | PermissionDenied "may not delete role"; role kept; admin.denied
#[test]
fn role_editor_deletes_against_a_deny() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "role/reader", "may not delete role", || {
        as_bot(&auth, "roler", async |c| {
            c.delete_resource(ResourceRef {
                kind: "role".into(),
                name: "reader".into(),
            })
            .await
        })
    });
}

/// attack: admin | a read-only bot deletes a bot | PermissionDenied "may not delete bot"; bot kept; admin.denied
#[test]
fn reader_deletes_a_bot() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "bot/root-bot", "may not delete bot", || {
        as_bot(&auth, "reader", async |c| {
            c.delete_resource(ResourceRef {
                kind: "bot".into(),
                name: "root-bot".into(),
            })
            .await
        })
    });
}

/// attack: admin | a read-only bot locks out the superadmin bot (AddLock) | PermissionDenied "may not create lock"; no lock; admin.denied
#[test]
fn reader_locks_out_the_admin() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "locks", "may not create lock", || {
        as_bot(&auth, "reader", async |c| {
            c.add_lock(AddLockRequest {
                target_kind: "bot".into(),
                target_value: "root-bot".into(),
                ..Default::default()
            })
            .await
        })
    });
}

/// attack: admin | a read-only bot reads the audit log (QueryAudit) | PermissionDenied "may not list audit"; admin.denied
#[test]
fn reader_reads_the_audit_log() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "may not list audit", || {
        as_bot(&auth, "reader", async |c| {
            let mut s = c
                .query_audit(AuditQueryRequest::default())
                .await?
                .into_inner();
            s.message().await
        })
    });
}

/// attack: admin | a read-only bot exports a CA (ExportCa) | PermissionDenied "may not read status"; admin.denied
#[test]
fn reader_exports_a_ca() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "may not read status", || {
        as_bot(&auth, "reader", async |c| {
            c.export_ca(ExportCaRequest {
                purpose: "client".into(),
            })
            .await
        })
    });
}

/// attack: admin | a read-only bot starts a CA rotation (RotateCa) | PermissionDenied "may not update cert_authority"; admin.denied
#[test]
fn reader_rotates_a_ca() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "may not update cert_authority", || {
        as_bot(&auth, "reader", async |c| {
            c.rotate_ca(RotateCaRequest {
                purpose: "client".into(),
                ..Default::default()
            })
            .await
        })
    });
}

/// attack: admin | a bot with logins but no admin rules calls Status | PermissionDenied "may not read status"; admin.denied
#[test]
fn login_only_bot_calls_the_admin_api() {
    let (auth, _g) = auth();
    escalation_refused(&auth, "roles", "bot:plain may not read status", || {
        as_bot(&auth, "plain", async |c| c.status(StatusRequest {}).await)
    });
}

/// attack: admin | a locked bot keeps using its identity output on the admin API | PermissionDenied "locked"
#[test]
fn locked_bot_calls_the_admin_api() {
    let (auth, _g) = auth();
    admin_bot(&auth, "adm-locked", "reader");
    auth.ok(&[
        "locks",
        "add",
        "--bot",
        "adm-locked",
        "--message",
        "incident",
    ]);
    let r = as_bot(&auth, "adm-locked", async |c| {
        c.get_resource(ResourceRef {
            kind: "role".into(),
            name: "reader".into(),
        })
        .await
    });
    refused(r, Code::PermissionDenied, "locked");
}

/// attack: admin | a role given to a bot after its identity output was issued is locked; the output (naming only its old role) uses the new role's rights | PermissionDenied "locked"; no role created
#[test]
fn caller_acting_with_a_locked_role_its_certificate_does_not_name() {
    let (auth, _g) = auth();
    admin_bot(&auth, "adm-regranted", "reader");
    auth.ok(&[
        "bots",
        "update",
        "adm-regranted",
        "--set-roles",
        "reader,role-editor",
    ]);
    let out = auth.ok(&[
        "locks",
        "add",
        "--role",
        "role-editor",
        "--message",
        "incident",
        "--format",
        "json",
    ]);
    let lock: serde_json::Value = serde_json::from_str(&out).expect("lock json");
    let r = as_bot(&auth, "adm-regranted", async |c| {
        c.create_resource(create(
            r#"{"kind":"role","version":"v1","metadata":{"name":"by-regranted"},"spec":{}}"#,
        ))
        .await
    });
    // Lifted before asserting, so a failure leaves the other cases unlocked.
    auth.ok(&[
        "locks",
        "rm",
        lock["metadata"]["name"].as_str().expect("lock id"),
    ]);
    refused(r, Code::PermissionDenied, "locked");
    assert!(
        !get_json(&auth, "roles").contains("by-regranted"),
        "the role was created"
    );
}

/// attack: admin | an identity output still naming an admin role the bot no longer holds (roles in the certificate are stale) | PermissionDenied "may not list role"; admin.denied
#[test]
fn caller_whose_admin_role_was_taken_away() {
    let (auth, _g) = auth();
    admin_bot(&auth, "adm-demoted", "reader");
    auth.ok(&[
        "bots",
        "update",
        "adm-demoted",
        "--set-roles",
        "logins-only",
    ]);
    escalation_refused(
        &auth,
        "roles",
        "may not list role: no role rule allows it",
        || {
            as_bot(&auth, "adm-demoted", async |c| {
                c.list_resources(ListResourcesRequest {
                    kind: "role".into(),
                    ..Default::default()
                })
                .await
            })
        },
    );
}

/// attack: admin | an identity output used after its bot was removed | PermissionDenied "bot was removed: access revoked"
#[test]
fn caller_whose_bot_was_removed() {
    let (auth, _g) = auth();
    admin_bot(&auth, "adm-removed", "reader");
    auth.ok(&["bots", "rm", "adm-removed"]);
    let r = as_bot(&auth, "adm-removed", async |c| {
        c.get_resource(ResourceRef {
            kind: "role".into(),
            name: "reader".into(),
        })
        .await
    });
    refused(r, Code::PermissionDenied, "bot was removed: access revoked");
}

/// attack: admin | the remote CLI: a bot editor adds superadmin to itself | exit 3, "does not hold"; roles unchanged
#[test]
fn cli_bot_grants_itself_superadmin() {
    let (auth, _g) = auth();
    let before = get_json(&auth, "bot/editor");
    let o = auth.remote(
        std::path::Path::new(&idf(&auth, "editor")),
        &[
            "bots",
            "update",
            "editor",
            "--set-roles",
            "bot-editor,superadmin",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not hold"),
        "{}",
        text(&o)
    );
    assert_eq!(get_json(&auth, "bot/editor"), before);
}
