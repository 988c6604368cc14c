//! `sigil.v1.AuthService`: ping, join, renewal and output issuance.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use sigil_pki::ClientIdentity;
use sigil_proto::v1::auth_service_server::AuthService;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{
    CaState, Credentials, IdentityCredentials, IssueIdentityRequest, IssueSshHostCertRequest,
    IssueWorkloadIdentitiesRequest, IssueWorkloadIdentitiesResponse, JoinChallenge,
    JoinClientMessage, JoinServerMessage, PingRequest, PingResponse, RenewRequest, SshHostCert,
    SshHostState, WatchCasRequest, WatchSshHostRequest, WatchWorkloadStateRequest, WorkloadState,
};
use sigil_store::Txn;
use sigil_types::{RoleSet, WorkloadIdentitySelector};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit;
use crate::authz::{self, Caller};
use crate::issuance::{self, bot_authority, effective_ttl};
use crate::join::{self, Conversation, JoinDenied};
use crate::renewal;
use crate::state::SharedState;
use crate::telemetry;
use crate::workload;

pub struct AuthApi {
    pub state: SharedState,
}

type JoinStream = Pin<Box<dyn Stream<Item = Result<JoinServerMessage, Status>> + Send>>;

/// Longest a join conversation may take, challenges included.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait]
impl AuthService for AuthApi {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            cluster_name: self.state.cluster.clone(),
            ca_pin: self.state.ca_pin(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            audit_checkpoint: self.state.checkpoints.latest_proto(),
            audit_public_key: self.state.checkpoints.public_key().to_string(),
        }))
    }

    type JoinStream = JoinStream;

    async fn join(
        &self,
        req: Request<Streaming<JoinClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let remote = authz::remote_addr(&req);
        // A delegated method re-proving an instance presents its certificate.
        // Only a current certificate of this cluster counts (a long-lived
        // connection can outlive the certificate it was opened with).
        let now = time::OffsetDateTime::now_utc();
        let presented = authz::peer(&req)
            .filter(|p| authz::issuer_trusted(&self.state, p))
            .and_then(|p| p.identity.as_ref())
            .filter(|i| i.0.cluster == self.state.cluster && i.1.not_after > now)
            .map(|i| i.0.clone());
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<JoinServerMessage, Status>>(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            // A join that stalls (a silent client, an unanswered challenge)
            // must not hold server resources forever.
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(JOIN_TIMEOUT, async {
                let init = match inbound.message().await {
                    Ok(Some(JoinClientMessage {
                        message: Some(ClientMsg::Init(init)),
                    })) => init,
                    _ => {
                        return Err(Status::invalid_argument(
                            "the join stream must start with JoinInit",
                        ));
                    }
                };
                let mut conv = StreamConversation {
                    inbound,
                    outbound: tx.clone(),
                };
                join::join(&state, &init, &mut conv, &remote, presented.as_ref()).await
            })
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("the join took too long")));
            telemetry::observe(telemetry::JOIN_DURATION, started, &outcome);
            let msg = outcome.map(|creds| JoinServerMessage {
                message: Some(ServerMsg::Result(creds)),
            });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<Credentials>, Status> {
        let started = std::time::Instant::now();
        let r = self.renew_timed(req).await;
        telemetry::observe(telemetry::RENEWAL_DURATION, started, &r);
        r
    }

    async fn issue_identity(
        &self,
        req: Request<IssueIdentityRequest>,
    ) -> Result<Response<IdentityCredentials>, Status> {
        let id = &agent_identity(&self.state, &req).await?;
        let r = req.get_ref();
        let auth =
            bot_authority(&self.state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
        let ttl = effective_ttl(r.ttl_seconds, auth.max_ttl);
        // An output can never mint more: neither renewable nor delegated.
        let mut out_id = ClientIdentity {
            renewable: false,
            delegated: false,
            roles: auth.roles.clone(),
            ..id.clone()
        };
        out_id.logins = auth.logins_for(&out_id);
        let logins = out_id.logins.clone();
        issuance::check_locks(&self.state, &out_id, &[])?;
        let cas = self.state.cas();
        let tls = crate::telemetry::issue("x509", || {
            cas.client
                .signer
                .issue_client(&r.tls_public_key_spki, &out_id, ttl)
        })
        .map_err(issuance::pki_error)?;
        let mut events = vec![issuance::x509_issued_event(&out_id, &tls, ttl, "client")];
        let mut ssh_cert = String::new();
        // No logins, no SSH certificate (one without principals would be
        // valid for every user); the TLS identity still works for admin rules.
        // Likewise when the roles leave no source address to log in from.
        let ssh_permissions = auth.ssh_user_permissions();
        if let Some(permissions) =
            ssh_permissions.filter(|_| !r.ssh_public_key.is_empty() && !logins.is_empty())
        {
            let key_id = crate::ssh_access::user_key_id(&id.bot, &id.bot_uid, &id.instance_id);
            let c = crate::telemetry::issue("ssh", || {
                cas.ssh_user.signer.issue_user_cert(
                    &r.ssh_public_key,
                    &key_id,
                    &logins,
                    ttl,
                    &permissions,
                )
            })
            .map_err(issuance::pki_error)?;
            events.push(audit::event(
                audit::CERT_ISSUED,
                serde_json::json!({
                    "kind": "ssh_user", "ca": "ssh-user", "serial": c.serial.to_string(),
                    "ttl_seconds": ttl.as_secs(), "bot": id.bot, "bot_instance": id.instance_id,
                    "principals": logins,
                }),
            ));
            metrics::counter!("sigil_certs_issued_total", "kind" => "ssh").increment(1);
            ssh_cert = c.openssh;
        }
        self.state
            .store
            .commit(Txn {
                ops: vec![],
                audit: events,
            })
            .await
            .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
        metrics::counter!("sigil_certs_issued_total", "kind" => "x509").increment(1);
        Ok(Response::new(IdentityCredentials {
            tls_cert_pem: tls.pem,
            ca_certs_pem: cas.agent_bundle_pem(),
            ssh_cert,
            known_hosts: cas.known_hosts(),
            principals: logins,
            expires_unix: tls.not_after.unix_timestamp(),
            cluster_name: self.state.cluster.clone(),
            ssh_user_ca: cas.ssh_user_cas(),
        }))
    }

    async fn issue_workload_identities(
        &self,
        req: Request<IssueWorkloadIdentitiesRequest>,
    ) -> Result<Response<IssueWorkloadIdentitiesResponse>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let auth =
            bot_authority(&self.state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
        let roles = self
            .state
            .cache
            .roles(&auth.roles)
            .map_err(|r| Status::permission_denied(format!("role {r:?} no longer exists")))?;
        let r = req.into_inner();
        let mut attrs =
            workload::check_workload_attributes(&r.workload_attributes, &["workload."])?;
        attrs.extend(workload::bot_attributes(&id));
        let selector = selector_from_proto(r.selector)?;
        let mut candidates = workload::granted_identities(&self.state, &RoleSet::new(roles));
        if let Some(sel) = &selector {
            candidates.retain(|w| sel.matches(&w.metadata.name, &w.metadata.labels));
        }
        let resp = workload::issue(
            &self.state,
            workload::IssueRequest {
                candidates,
                attrs,
                x509_spki: &r.x509_public_key_spki,
                jwt_audiences: &r.jwt_audiences,
                x509_ttl_secs: r.x509_ttl_seconds,
                jwt_ttl_secs: r.jwt_ttl_seconds,
                only_spiffe_id: &r.spiffe_id,
                max_ttl: auth.max_ttl,
                actor: format!("bot:{}/{}", id.bot, id.instance_id),
                holder: Some(sigil_pki::SvidHolder {
                    bot: id.bot.clone(),
                    bot_uid: id.bot_uid.clone(),
                    instance_id: id.instance_id.clone(),
                }),
            },
        )
        .await?;
        Ok(Response::new(resp))
    }

    type WatchWorkloadStateStream = ReceiverStream<Result<WorkloadState, Status>>;

    async fn watch_workload_state(
        &self,
        req: Request<WatchWorkloadStateRequest>,
    ) -> Result<Response<Self::WatchWorkloadStateStream>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(workload::watch::run(self.state.clone(), id, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn issue_ssh_host_cert(
        &self,
        req: Request<IssueSshHostCertRequest>,
    ) -> Result<Response<SshHostCert>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let cert = crate::ssh_access::issue_host_cert(&self.state, &id, req.get_ref()).await;
        Ok(Response::new(cert?))
    }

    type WatchSshHostStream = ReceiverStream<Result<SshHostState, Status>>;

    async fn watch_ssh_host(
        &self,
        req: Request<WatchSshHostRequest>,
    ) -> Result<Response<Self::WatchSshHostStream>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let labels: std::collections::BTreeMap<String, String> =
            req.into_inner().labels.into_iter().collect();
        crate::ssh_access::check_labels(&labels)?;
        // Refused at once (not as a stream item) when this host may not watch.
        crate::ssh_access::host_state(&self.state, &id, &labels).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(crate::ssh_access::watch(self.state.clone(), id, labels, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn issue_database_cert(
        &self,
        req: Request<sigil_proto::v1::IssueDatabaseCertRequest>,
    ) -> Result<Response<sigil_proto::v1::DatabaseCert>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let cert = crate::db_access::issue_client_cert(&self.state, &id, req.get_ref()).await;
        Ok(Response::new(cert?))
    }

    async fn issue_database_server_cert(
        &self,
        req: Request<sigil_proto::v1::IssueDatabaseServerCertRequest>,
    ) -> Result<Response<sigil_proto::v1::DatabaseServerCert>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let cert = crate::db_access::issue_server_cert(&self.state, &id, req.get_ref()).await;
        Ok(Response::new(cert?))
    }

    type WatchDatabaseServerStream =
        ReceiverStream<Result<sigil_proto::v1::DatabaseServerState, Status>>;

    async fn watch_database_server(
        &self,
        req: Request<sigil_proto::v1::WatchDatabaseServerRequest>,
    ) -> Result<Response<Self::WatchDatabaseServerStream>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let service = req.into_inner().service;
        // Refused at once (not as a stream item) when this host may not serve it.
        crate::db_access::server_state(&self.state, &id, &service).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(crate::db_access::watch(self.state.clone(), id, service, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchCasStream = ReceiverStream<Result<CaState, Status>>;

    async fn watch_cas(
        &self,
        req: Request<WatchCasRequest>,
    ) -> Result<Response<Self::WatchCasStream>, Status> {
        agent_identity(&self.state, &req).await?;
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut epochs = state.ca_epoch.subscribe();
            loop {
                epochs.borrow_and_update();
                let cas = state.cas();
                let msg = CaState {
                    epoch: cas.epoch.clone(),
                    cas: super::ca_rotate::statuses(&cas),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                // End with the agent's stream, not at the next CA change: agents
                // reopen it on every renewal.
                tokio::select! {
                    r = epochs.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn issue_kubernetes_cert(
        &self,
        req: Request<sigil_proto::v1::IssueKubernetesCertRequest>,
    ) -> Result<Response<sigil_proto::v1::KubernetesCert>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        let cert = crate::kube_access::issue_cert(&self.state, &id, req.get_ref()).await;
        Ok(Response::new(cert?))
    }

    type WatchAppAccessStream = ReceiverStream<Result<sigil_proto::v1::AppAccessState, Status>>;

    async fn watch_app_access(
        &self,
        req: Request<sigil_proto::v1::WatchAppAccessRequest>,
    ) -> Result<Response<Self::WatchAppAccessStream>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        // Refused at once (not as a stream item) when this bot may serve nothing.
        crate::app_access::served_apps(&self.state, &id)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(crate::app_access::watch(self.state.clone(), id, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn authorize_app(
        &self,
        req: Request<sigil_proto::v1::AuthorizeAppRequest>,
    ) -> Result<Response<sigil_proto::v1::AuthorizeAppResponse>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        crate::app_access::authorize(&self.state, &id, req.get_ref())
            .await
            .map(Response::new)
    }

    async fn sign_app_jwt(
        &self,
        req: Request<sigil_proto::v1::AuthorizeAppRequest>,
    ) -> Result<Response<sigil_proto::v1::AppJwt>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        crate::app_access::sign_jwt(&self.state, &id, req.get_ref())
            .await
            .map(Response::new)
    }

    async fn report_app_requests(
        &self,
        req: Request<sigil_proto::v1::ReportAppRequestsRequest>,
    ) -> Result<Response<sigil_proto::v1::ReportAppRequestsResponse>, Status> {
        let id = agent_identity(&self.state, &req).await?;
        crate::app_access::report(&self.state, &id, req.get_ref())
            .await
            .map(Response::new)
    }
}

/// The agent's own (renewable) identity behind a call that mints credentials.
/// Output credentials cannot mint more, and a removed instance, a removed or
/// re-created bot, or a credential a renewal superseded mints nothing, even
/// with a certificate that has not expired yet.
async fn agent_identity<T>(
    state: &SharedState,
    req: &Request<T>,
) -> Result<ClientIdentity, Status> {
    let caller = match authz::current_caller(state, req).await? {
        Caller::Bot(b) => b,
        Caller::LocalAdmin => {
            return Err(Status::permission_denied(
                "use `sigil` verbs on the admin socket",
            ));
        }
    };
    let (id, _) = *caller;
    if !id.is_agent_identity() {
        return Err(Status::permission_denied(
            "output credentials cannot request further credentials",
        ));
    }
    Ok(id)
}

/// A selector from the wire; an empty one selects every granted identity.
fn selector_from_proto(
    s: Option<sigil_proto::v1::WorkloadIdentitySelector>,
) -> Result<Option<WorkloadIdentitySelector>, Status> {
    let Some(s) = s else { return Ok(None) };
    if s.name.is_empty() && s.labels.is_empty() {
        return Ok(None);
    }
    let sel = WorkloadIdentitySelector {
        name: (!s.name.is_empty()).then_some(s.name),
        labels: s.labels.into_iter().map(|(k, v)| (k, v.values)).collect(),
    };
    sel.validate()
        .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
    Ok(Some(sel))
}

/// Audit a refused mTLS call when the refusal is a lock (the interesting case).
async fn audit_refusal<T>(state: &SharedState, req: &Request<T>, err: &Status) {
    if err.code() != tonic::Code::PermissionDenied {
        return;
    }
    let id = authz::peer(req)
        .and_then(|p| p.identity.as_ref())
        .map(|i| &i.0);
    renewal::audit_denied(state, id, &authz::remote_addr(req), err.message()).await;
}

struct StreamConversation {
    inbound: Streaming<JoinClientMessage>,
    outbound: mpsc::Sender<Result<JoinServerMessage, Status>>,
}

#[async_trait]
impl Conversation for StreamConversation {
    async fn challenge(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, JoinDenied> {
        self.outbound
            .send(Ok(JoinServerMessage {
                message: Some(ServerMsg::Challenge(JoinChallenge { payload })),
            }))
            .await
            .map_err(|_| JoinDenied::abandoned())?;
        match self.inbound.message().await {
            Ok(Some(JoinClientMessage {
                message: Some(ClientMsg::ChallengeResponse(r)),
            })) => Ok(r.payload),
            // The stream ended: the agent died or lost its connection.
            Ok(None) | Err(_) => Err(JoinDenied::abandoned()),
            _ => Err(JoinDenied::new("expected a challenge response")),
        }
    }
}

impl AuthApi {
    async fn renew_timed(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<Credentials>, Status> {
        let remote = authz::remote_addr(&req);
        let caller = match authz::caller(&self.state, &req) {
            Ok(Caller::Bot(b)) => b,
            Ok(Caller::LocalAdmin) => {
                return Err(Status::permission_denied("the admin socket cannot renew"));
            }
            Err(e) => {
                audit_refusal(&self.state, &req, &e).await;
                return Err(e);
            }
        };
        let creds = renewal::renew(&self.state, &caller, req.get_ref(), &remote).await?;
        Ok(Response::new(creds))
    }
}
