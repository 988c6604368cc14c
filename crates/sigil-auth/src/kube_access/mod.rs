//! Kubernetes access with x509 client certificates: kube-apiserver trusts
//! the `kubernetes` CA (`--client-ca-file`) and reads the certificate's CN
//! as the user and each O as a group. Sigil issues such certificates to
//! agents whose bots' roles reach a `kubernetes_cluster` (by its labels),
//! for the users and groups those roles allow there ([`issue_cert`]), and
//! tells any caller what it may reach ([`list_access`]).
//!
//! kube-apiserver reads no CRL: a lock stops the next issuance, and the
//! certificates are short-lived (the bot's TTL cap), so access ends when the
//! last one expires.

use sigil_pki::ClientIdentity;
use sigil_proto::v1::{
    IssueKubernetesCertRequest, KubernetesCert, KubernetesClusterAccess,
    ListKubernetesAccessResponse,
};
use sigil_store::Txn;
use sigil_types::{Kind, KubernetesCluster};
use tonic::Status;

use crate::audit;
use crate::authz::{self, Caller};
use crate::issuance::{self, bot_authority, effective_ttl};
use crate::keys;
use crate::state::AuthState;

/// Issue a Kubernetes client certificate; a refusal is audited
/// (`cert.denied`, aggregated in a flood).
pub async fn issue_cert(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueKubernetesCertRequest,
) -> Result<KubernetesCert, Status> {
    let result = issue(state, id, req).await;
    if let Err(e) = &result
        && matches!(
            e.code(),
            tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
        )
    {
        let bounded = |s: &str| {
            sigil_types::text::escape_unsafe(&s.chars().take(255).collect::<String>()).into_owned()
        };
        let ev = audit::event(
            audit::CERT_DENIED,
            serde_json::json!({
                "kind": "kubernetes", "bot": id.bot, "bot_instance": id.instance_id,
                "cluster": bounded(&req.cluster), "user": bounded(&req.user),
                "reason": e.message(),
            }),
        );
        state.denials.record(state.store.as_ref(), ev).await;
    }
    result
}

async fn issue(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueKubernetesCertRequest,
) -> Result<KubernetesCert, Status> {
    let auth = bot_authority(state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
    // Output credentials: the bot's current roles, so a lock on any of them counts.
    let out_id = ClientIdentity {
        renewable: false,
        delegated: false,
        roles: auth.roles.clone(),
        ..id.clone()
    };
    issuance::check_locks(state, &out_id, &[])?;
    sigil_types::check_name("kubernetes_cluster", &req.cluster)
        .map_err(|e| Status::invalid_argument(format!("cluster: {}", e.message)))?;
    let requested = (!req.user.is_empty()).then_some(req.user.as_str());
    if let Some(u) = requested {
        sigil_types::kubernetes_cluster::validate_subject_name(u, false)
            .map_err(|e| Status::invalid_argument(format!("user: {e}")))?;
    }
    let cluster = read_cluster(state, &req.cluster).await?.ok_or_else(|| {
        Status::not_found(format!(
            "kubernetes cluster {:?} does not exist (`sigil kube ls` lists those this bot may reach)",
            req.cluster
        ))
    })?;
    let name = &cluster.metadata.name;
    let access = auth
        .role_set
        .kubernetes_access(&cluster.metadata.labels)
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "the roles of bot {:?} do not reach kubernetes cluster {name:?} (allow.kubernetes_labels, or a deny matches)",
                id.bot
            ))
        })?;
    let user = access.choose_user(name, requested).map_err(|e| {
        if requested.is_some() {
            Status::permission_denied(e)
        } else {
            Status::failed_precondition(e)
        }
    })?;
    let ttl = effective_ttl(req.ttl_seconds, auth.max_ttl);
    let cas = state.cas();
    let cert = crate::telemetry::issue("kubernetes", || {
        cas.kubernetes.signer.issue_kubernetes_client(
            &req.public_key_spki,
            &user,
            &access.groups,
            &id.bot,
            &id.instance_id,
            ttl,
        )
    })
    .map_err(issuance::pki_error)?;
    let event = audit::event(
        audit::CERT_ISSUED,
        serde_json::json!({
            "kind": "kubernetes", "ca": "kubernetes", "serial": cert.serial_hex,
            "ttl_seconds": ttl.as_secs(), "bot": id.bot, "bot_instance": id.instance_id,
            "cluster": name, "user": user, "groups": access.groups,
        }),
    );
    state
        .store
        .commit(Txn {
            ops: vec![],
            audit: vec![event],
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    metrics::counter!("sigil_certs_issued_total", "kind" => "kubernetes").increment(1);
    Ok(KubernetesCert {
        cert_pem: cert.pem,
        expires_unix: cert.not_after.unix_timestamp(),
        serial_hex: cert.serial_hex,
        user,
        groups: access.groups,
        server: cluster.spec.server.clone(),
        server_ca_pem: cluster.spec.ca_file_pem.clone(),
        cluster_name: name.clone(),
    })
}

/// The clusters the caller's current roles reach, with the users and groups
/// it would get; every cluster (without users or groups) for the local admin.
pub async fn list_access(
    state: &AuthState,
    caller: &Caller,
) -> Result<ListKubernetesAccessResponse, Status> {
    let roles = authz::current_roles(state, caller)?;
    let items = state
        .store
        .list(keys::KUBERNETES_CLUSTERS)
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    let mut clusters = Vec::new();
    for item in items {
        let Some(c) = decode(&item.value) else {
            tracing::warn!(key = %item.key, "skipping an undecodable kubernetes_cluster");
            continue;
        };
        let (users, groups) = match &roles {
            None => (Vec::new(), Vec::new()),
            Some(set) => match set.kubernetes_access(&c.metadata.labels) {
                Some(a) => (a.users, a.groups),
                None => continue,
            },
        };
        clusters.push(KubernetesClusterAccess {
            name: c.metadata.name,
            server: c.spec.server,
            labels: c.metadata.labels.into_iter().collect(),
            users,
            groups,
        });
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ListKubernetesAccessResponse {
        clusters,
        all_clusters: roles.is_none(),
    })
}

/// The stored cluster named `name`, if any.
async fn read_cluster(state: &AuthState, name: &str) -> Result<Option<KubernetesCluster>, Status> {
    let item = state
        .store
        .get(&keys::kubernetes_cluster(name))
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    match item {
        None => Ok(None),
        Some(i) => decode(&i.value).map(Some).ok_or_else(|| {
            Status::internal(format!(
                "kubernetes cluster {name:?} is undecodable in the store"
            ))
        }),
    }
}

/// A stored cluster, re-validated (fail closed on a record that would not
/// pass today's checks).
fn decode(value: &[u8]) -> Option<KubernetesCluster> {
    let c: KubernetesCluster = serde_json::from_slice(value).ok()?;
    sigil_types::KubernetesClusterSpec::validate(&c).ok()?;
    Some(c)
}
