//! `sigil.v1.AdminService`: resource CRUD, bots, tokens, locks, audit and
//! status. Served on the owner-only Unix socket (full access) and on the mTLS
//! port (role `rules` decide).

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use sigil_proto::v1::admin_service_server::AdminService;
use sigil_proto::v1::*;
use sigil_store::{AuditQuery, Txn};
use sigil_types::{AnyResource, Bot, BotSpec, HumanDuration, Lock, LockSpec, LockTarget, Metadata};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::admin_tokens::{check_ref, expiry, invalid, method_token, new_token, ttl_or};
use super::ca_export;
use super::ca_rotate;
use super::resources::{self, store_err};
use super::workload_admin;
use crate::audit;
use crate::audit::checkpoint::Integrity;
use crate::authz::{self, Caller};
use crate::escalation;
use crate::keys;
use crate::state::SharedState;

pub struct AdminApi {
    pub state: SharedState,
}

/// Largest resource document the admin API reads (before any parsing).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

impl AdminApi {
    /// The caller, if it may `verb` `kind`; a refusal is audited.
    async fn authorize<T>(
        &self,
        req: &Request<T>,
        kind: &str,
        verb: &str,
    ) -> Result<Caller, Status> {
        let caller = authz::current_caller(&self.state, req).await?;
        self.audited(
            req,
            &caller,
            authz::authorize_admin(&self.state, &caller, kind, verb),
        )
        .await?;
        Ok(caller)
    }

    /// Pass `result` through, auditing a permission refusal with its reason.
    async fn audited<T>(
        &self,
        req: &Request<T>,
        caller: &Caller,
        result: Result<(), Status>,
    ) -> Result<(), Status> {
        if let Err(e) = &result
            && e.code() == tonic::Code::PermissionDenied
        {
            let ev = audit::event(
                audit::ADMIN_DENIED,
                serde_json::json!({
                    "by": authz::actor(caller), "reason": e.message(),
                    "remote_addr": authz::remote_addr(req),
                }),
            );
            // A flood of identical refusals is counted into one row.
            self.state
                .denials
                .record(self.state.store.as_ref(), ev)
                .await;
        }
        result
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<AuditEvent, Status>> + Send>>;

#[async_trait]
impl AdminService for AdminApi {
    async fn create_resource(
        &self,
        req: Request<CreateResourceRequest>,
    ) -> Result<Response<ResourceResponse>, Status> {
        let r = req.get_ref();
        let verb = if r.upsert { "update" } else { "create" };
        // Authorize, then bound, then parse: a caller with no right to write
        // anything never reaches the parser, nor does an oversized document.
        let caller = authz::current_caller(&self.state, &req).await?;
        self.audited(
            &req,
            &caller,
            authz::authorize_any(&self.state, &caller, verb),
        )
        .await?;
        if r.json.len() > MAX_DOCUMENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "the resource document is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes",
                r.json.len()
            )));
        }
        // Even bounded, a large legal document takes a while to parse: keep it
        // off the async workers that serve everyone else.
        let json = r.json.clone();
        let mut parsed =
            tokio::task::spawn_blocking(move || sigil_types::parse_resources(&json, "request"))
                .await
                .map_err(|e| Status::internal(format!("parsing the document: {e}")))?
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if parsed.len() != 1 {
            return Err(Status::invalid_argument(
                "send exactly one resource per request",
            ));
        }
        let res = parsed.remove(0);
        self.audited(
            &req,
            &caller,
            authz::authorize_admin(&self.state, &caller, res.kind(), verb),
        )
        .await?;
        self.audited(
            &req,
            &caller,
            escalation::check_resource(&self.state, &caller, &res),
        )
        .await?;
        let json = resources::create(&self.state, res, r.upsert, &authz::actor(&caller)).await?;
        Ok(Response::new(ResourceResponse { json }))
    }

    async fn get_resource(
        &self,
        req: Request<ResourceRef>,
    ) -> Result<Response<ResourceResponse>, Status> {
        let r = req.get_ref();
        let kind = resources::normalize_kind(&r.kind)?;
        self.authorize(&req, kind, "read").await?;
        check_ref(kind, &r.name)?;
        let json = resources::get(&self.state, kind, &r.name).await?;
        Ok(Response::new(ResourceResponse { json }))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let r = req.get_ref();
        let kind = resources::normalize_kind(&r.kind)?;
        self.authorize(&req, kind, "list").await?;
        let (json, next_page_token) = resources::list(
            &self.state,
            kind,
            &r.filter,
            r.limit as usize,
            &r.page_token,
        )
        .await?;
        Ok(Response::new(ListResourcesResponse {
            json,
            next_page_token,
        }))
    }

    async fn delete_resource(
        &self,
        req: Request<ResourceRef>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.get_ref();
        let kind = resources::normalize_kind(&r.kind)?;
        let caller = self.authorize(&req, kind, "delete").await?;
        check_ref(kind, &r.name)?;
        resources::delete(&self.state, kind, &r.name, &authz::actor(&caller)).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn add_bot(
        &self,
        req: Request<AddBotRequest>,
    ) -> Result<Response<AddBotResponse>, Status> {
        let caller = self.authorize(&req, "bot", "create").await?;
        self.authorize(&req, "token", "create").await?;
        let r = req.get_ref();
        self.audited(
            &req,
            &caller,
            escalation::check_bot_roles(&self.state, &caller, &r.name, &[], &r.roles),
        )
        .await?;
        let mut bot = Bot::new(
            Metadata {
                name: r.name.clone(),
                ..Default::default()
            },
            BotSpec {
                roles: r.roles.clone(),
                max_ttl: (r.max_ttl_seconds > 0)
                    .then(|| HumanDuration(Duration::from_secs(r.max_ttl_seconds))),
                uid: String::new(),
                created_at: None,
            },
        );
        let ttl = ttl_or(r.token_ttl_seconds, sigil_types::DEFAULT_TOKEN_TTL);
        let mut token = new_token(&r.name, ttl)?;
        let actor = authz::actor(&caller);
        bot.spec.created_at = Some(OffsetDateTime::now_utc());
        let mut bot_res = AnyResource::Bot(bot);
        resources::fill_defaults(&self.state, &mut bot_res, &actor)?;
        let AnyResource::Bot(bot) = bot_res else {
            return Err(Status::internal("bot defaults changed the kind"));
        };
        let (bot_op, bot_ev) = resources::ops_for(AnyResource::Bot(bot.clone()), false, &actor)?;
        // The token refers to the bot created in the same transaction, by uid.
        token.spec.bot_uid = bot.spec.uid.clone();
        let mut tok = AnyResource::Token(token.clone());
        resources::fill_defaults(&self.state, &mut tok, &actor)?;
        let (tok_op, tok_ev) = resources::ops_for(tok, false, &actor)?;
        let txn = Txn {
            ops: vec![bot_op, tok_op],
            audit: vec![bot_ev, tok_ev],
        };
        resources::commit_and_apply(&self.state, txn).await?;
        Ok(Response::new(AddBotResponse {
            bot_json: serde_json::to_string(&bot).map_err(|e| Status::internal(e.to_string()))?,
            token: token.metadata.name.clone(),
            expires_unix: token
                .metadata
                .expires
                .map(|e| e.unix_timestamp())
                .unwrap_or_default(),
            ca_pin: self.state.ca_pin(),
            auth_server: self.state.advertise_addr.clone(),
        }))
    }

    async fn update_bot(
        &self,
        req: Request<UpdateBotRequest>,
    ) -> Result<Response<ResourceResponse>, Status> {
        let caller = self.authorize(&req, "bot", "update").await?;
        let r = req.get_ref();
        sigil_types::check_name("bot", &r.name).map_err(invalid)?;
        let mut bot = self
            .state
            .cache
            .bot(&r.name)
            .ok_or_else(|| Status::not_found(format!("bot {:?} not found", r.name)))?;
        self.audited(
            &req,
            &caller,
            escalation::check_bot_roles(
                &self.state,
                &caller,
                &r.name,
                &bot.spec.roles,
                &r.set_roles,
            ),
        )
        .await?;
        bot.spec.roles = r.set_roles.clone();
        let json = resources::create(
            &self.state,
            AnyResource::Bot(bot),
            true,
            &authz::actor(&caller),
        )
        .await?;
        Ok(Response::new(ResourceResponse { json }))
    }

    async fn add_token(
        &self,
        req: Request<AddTokenRequest>,
    ) -> Result<Response<AddTokenResponse>, Status> {
        let caller = self.authorize(&req, "token", "create").await?;
        let r = req.get_ref();
        if self.state.cache.bot(&r.bot).is_none() {
            return Err(Status::not_found(format!(
                "bot {:?} not found: create it with `sigil bots add`",
                r.bot
            )));
        }
        self.audited(
            &req,
            &caller,
            escalation::check_token_for_bot(&self.state, &caller, &r.bot),
        )
        .await?;
        let mut registration_secret = String::new();
        let token = if r.join_method.is_empty() || r.join_method == "token" {
            new_token(
                &r.bot,
                ttl_or(r.ttl_seconds, sigil_types::DEFAULT_TOKEN_TTL),
            )?
        } else {
            let (token, secret) = method_token(r)?;
            registration_secret = secret;
            token
        };
        resources::create(
            &self.state,
            AnyResource::Token(token.clone()),
            false,
            &authz::actor(&caller),
        )
        .await?;
        Ok(Response::new(AddTokenResponse {
            token: token.metadata.name.clone(),
            expires_unix: token
                .metadata
                .expires
                .map(|e| e.unix_timestamp())
                .unwrap_or_default(),
            ca_pin: self.state.ca_pin(),
            auth_server: self.state.advertise_addr.clone(),
            bot: r.bot.clone(),
            join_method: token.spec.join_method.to_string(),
            registration_secret,
        }))
    }

    async fn add_lock(
        &self,
        req: Request<AddLockRequest>,
    ) -> Result<Response<ResourceResponse>, Status> {
        let caller = self.authorize(&req, "lock", "create").await?;
        let r = req.get_ref();
        let v = r.target_value.clone();
        if v.is_empty() {
            return Err(Status::invalid_argument("the lock target is empty"));
        }
        let target = match r.target_kind.as_str() {
            "bot" => LockTarget::Bot(v),
            "bot_instance" | "bot-instance" => LockTarget::BotInstance(v),
            "role" => LockTarget::Role(v),
            // Locks never hold the secret: the token's hash form.
            "token" => LockTarget::Token(keys::token_ref(&v)),
            "spiffe_id" | "spiffe-id" => LockTarget::SpiffeId(v),
            "login" => LockTarget::Login(v),
            "db_user" | "db-user" => LockTarget::DbUser(v),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown lock target {other:?}: use bot, bot_instance, role, token, spiffe_id, login or db_user"
                )));
            }
        };
        let now = OffsetDateTime::now_utc();
        let lock = Lock::new(
            Metadata {
                name: uuid::Uuid::new_v4().to_string(),
                expires: expiry(now, r.ttl_seconds)?,
                ..Default::default()
            },
            LockSpec {
                target,
                message: r.message.clone(),
                created_by: authz::actor(&caller),
                created_at: Some(now),
            },
        );
        let json = resources::create(
            &self.state,
            AnyResource::Lock(lock),
            false,
            &authz::actor(&caller),
        )
        .await?;
        Ok(Response::new(ResourceResponse { json }))
    }

    type QueryAuditStream = AuditStream;

    async fn query_audit(
        &self,
        req: Request<AuditQueryRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        self.authorize(&req, "audit", "list").await?;
        let r = req.get_ref();
        let q = AuditQuery {
            since: (r.since_unix_nanos > 0)
                .then(|| OffsetDateTime::from_unix_timestamp_nanos(r.since_unix_nanos as i128).ok())
                .flatten(),
            event_type: (!r.event_type.is_empty()).then(|| r.event_type.clone()),
            after_seq: None,
            limit: (r.limit > 0).then_some(r.limit as usize),
        };
        let records = self.state.store.audit_query(q).await.map_err(store_err)?;
        let items: Vec<Result<AuditEvent, Status>> = records
            .into_iter()
            .map(|rec| {
                serde_json::to_string(&rec)
                    .map(|json| AuditEvent { json })
                    .map_err(|e| Status::internal(e.to_string()))
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.authorize(&req, "audit", "read").await?;
        let r = req.get_ref();
        let head = match (r.head_seq, r.head_hash.as_str()) {
            (0, "") => None,
            (seq, hash) if seq >= 1 && sigil_types::audit_checkpoint::is_hash(hash) => {
                Some((seq, hash.to_string()))
            }
            _ => {
                return Err(Status::invalid_argument(
                    "head: give a seq of 1 or more and a 64-hex-digit hash",
                ));
            }
        };
        let cps = &self.state.checkpoints;
        let v = cps
            .verify(head)
            .await
            .map_err(|e| Status::unavailable(format!("verifying the audit log: {e:#}")))?;
        let (bad_seq, reason) = v.problem.clone().unwrap_or_default();
        Ok(Response::new(VerifyAuditResponse {
            intact: v.problem.is_none(),
            count: v.count,
            head_hash: v.head,
            bad_seq,
            reason,
            checkpoints_checked: v.checked as u64,
            audit_public_key: cps.public_key().to_string(),
            latest_checkpoint: cps.latest_proto(),
        }))
    }

    async fn sign_audit_checkpoint(
        &self,
        req: Request<SignAuditCheckpointRequest>,
    ) -> Result<Response<SignAuditCheckpointResponse>, Status> {
        self.authorize(&req, "audit", "read").await?;
        let cps = &self.state.checkpoints;
        let signed = cps
            .sign()
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(SignAuditCheckpointResponse {
            checkpoint: Some(crate::audit::checkpoint::to_proto(signed)),
            audit_public_key: cps.public_key().to_string(),
        }))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.authorize(&req, "status", "read").await?;
        let key_exchange = crate::authz::peer(&req)
            .and_then(|p| p.key_exchange.clone())
            .unwrap_or_default();
        let s = &self.state;
        let count =
            |prefix: &'static str| async move { s.store.count(prefix).await.map_err(store_err) };
        let cas = s
            .cas()
            .stored
            .iter()
            .map(|c| {
                let (fingerprint, not_after) = ca_export::fingerprint_and_expiry(c);
                let not_after_unix = not_after.map_or(0, |t| t.unix_timestamp());
                CaStatus {
                    purpose: c.purpose.as_str().to_string(),
                    fingerprint,
                    not_after_unix,
                }
            })
            .collect();
        Ok(Response::new(StatusResponse {
            cluster_name: s.cluster.clone(),
            ca_pin: s.ca_pin(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            cas,
            bots: s.cache.bots().len() as u64,
            bot_instances: count(keys::BOT_INSTANCES).await?,
            locks: s.cache.locks().len() as u64,
            uptime_seconds: s.started.elapsed().as_secs(),
            auth_listen: s.advertise_addr.clone(),
            public_listen: s.public_addr.clone(),
            data_dir: s.data_dir.display().to_string(),
            audit_public_key: s.checkpoints.public_key().to_string(),
            audit_integrity: match s.checkpoints.integrity() {
                Integrity::Intact => "intact".into(),
                Integrity::Checking => "checking".into(),
                Integrity::Broken { seq, reason } => format!("BROKEN at seq {seq}: {reason}"),
            },
            key_exchange,
            control_key_exchanges: s.key_exchanges.counts("control").into_iter().collect(),
            public_key_exchanges: s.key_exchanges.counts("public").into_iter().collect(),
        }))
    }

    async fn export_ca(
        &self,
        req: Request<ExportCaRequest>,
    ) -> Result<Response<ExportCaResponse>, Status> {
        // A CA's public key is what `status` already shows by fingerprint (and
        // the public listener serves for spiffe and jwt): reading it is reading
        // status, not a new power over secrets.
        self.authorize(&req, "status", "read").await?;
        ca_export::export(&self.state, &req.get_ref().purpose).map(Response::new)
    }

    async fn rotate_ca(
        &self,
        req: Request<RotateCaRequest>,
    ) -> Result<Response<CaRotationStatus>, Status> {
        let caller = self.authorize(&req, "cert_authority", "update").await?;
        ca_rotate::rotate(&self.state, &authz::actor(&caller), req.get_ref())
            .await
            .map(Response::new)
    }

    async fn ca_rotations(
        &self,
        req: Request<CaRotationsRequest>,
    ) -> Result<Response<CaRotationsResponse>, Status> {
        self.authorize(&req, "status", "read").await?;
        Ok(Response::new(CaRotationsResponse {
            cas: ca_rotate::statuses(&self.state.cas()),
        }))
    }

    async fn request_ca(
        &self,
        req: Request<RequestCaRequest>,
    ) -> Result<Response<RequestCaResponse>, Status> {
        let caller = self.authorize(&req, "cert_authority", "update").await?;
        ca_rotate::request(&self.state, &authz::actor(&caller), req.get_ref())
            .await
            .map(Response::new)
    }

    async fn import_ca(
        &self,
        req: Request<ImportCaRequest>,
    ) -> Result<Response<CaRotationStatus>, Status> {
        // What every agent will trust: admin-equivalent, like granting roles.
        let caller = self.authorize(&req, "cert_authority", "escalate").await?;
        ca_rotate::import(&self.state, &authz::actor(&caller), req.get_ref())
            .await
            .map(Response::new)
    }

    async fn list_database_access(
        &self,
        req: Request<sigil_proto::v1::ListDatabaseAccessRequest>,
    ) -> Result<Response<sigil_proto::v1::ListDatabaseAccessResponse>, Status> {
        // No admin rule needed: a bot sees only what its own roles give it.
        let caller = authz::current_caller(&self.state, &req).await?;
        let roles = authz::current_roles(&self.state, &caller)?;
        Ok(Response::new(crate::db_access::list_access(
            &self.state,
            roles.as_ref(),
        )))
    }

    async fn issue_workload_identity(
        &self,
        req: Request<AdminIssueWorkloadIdentityRequest>,
    ) -> Result<Response<IssueWorkloadIdentitiesResponse>, Status> {
        // Minting is as strong as creating an identity: it needs `create`.
        let caller = self.authorize(&req, "workload_identity", "create").await?;
        let resp =
            workload_admin::issue(&self.state, req.into_inner(), authz::actor(&caller)).await?;
        Ok(Response::new(resp))
    }

    async fn test_workload_identity(
        &self,
        req: Request<TestWorkloadIdentityRequest>,
    ) -> Result<Response<TestWorkloadIdentityResponse>, Status> {
        self.authorize(&req, "workload_identity", "read").await?;
        Ok(Response::new(workload_admin::test(
            &self.state,
            req.into_inner(),
        )?))
    }

    async fn list_kubernetes_access(
        &self,
        req: Request<ListKubernetesAccessRequest>,
    ) -> Result<Response<ListKubernetesAccessResponse>, Status> {
        // No rule needed: the answer is the caller's own access.
        let caller = authz::current_caller(&self.state, &req).await?;
        let resp = crate::kube_access::list_access(&self.state, &caller).await?;
        Ok(Response::new(resp))
    }

    async fn create_web_login(
        &self,
        req: Request<CreateWebLoginRequest>,
    ) -> Result<Response<CreateWebLoginResponse>, Status> {
        // A session is only ever as strong as the caller (every console call is
        // authorised like this API's); one that may list nothing has no use for it.
        let caller = authz::current_caller(&self.state, &req).await?;
        self.audited(
            &req,
            &caller,
            authz::authorize_any(&self.state, &caller, "list"),
        )
        .await?;
        let ca_pin = authz::peer(&req).and_then(|p| p.client_ca_pin.as_deref());
        let (url, expires_unix) =
            crate::web::session::create_login(&self.state, &caller, ca_pin).await?;
        Ok(Response::new(CreateWebLoginResponse { url, expires_unix }))
    }
}
