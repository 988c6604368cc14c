//! The cluster's identity: its name and one CA per purpose, created on first
//! start and loaded from the store afterwards.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sigil_pki::{CaPurpose, KeyManager, SshCa, StoredCa, X509Ca};
use sigil_store::{Op, Store, Txn};
use time::OffsetDateTime;

use crate::audit;
use crate::key_source;
use crate::keys;

/// The stored record naming the cluster.
#[derive(Serialize, Deserialize)]
struct ClusterRecord {
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
}

/// Every CA of the cluster, loaded and ready to sign.
pub struct Cas {
    pub host: X509Ca,
    pub client: X509Ca,
    pub ssh_user: SshCa,
    pub ssh_host: SshCa,
    /// Issues X.509-SVIDs and signs the SVID CRL; the trust domain's X.509 authority.
    pub spiffe: X509Ca,
    /// Signs JWT-SVIDs; its public key is the trust domain's JWT authority.
    pub jwt: X509Ca,
    /// Every stored CA, including those whose issuers arrive with later
    /// capabilities (db-client): created up front so the
    /// cluster's trust roots never change under running agents.
    pub stored: Vec<StoredCa>,
    /// [`Cas::agent_bundle_pem`], encoded once.
    bundle_pem: String,
}

impl Cas {
    /// PEM of the CAs an agent needs: the host CA (to trust the auth service)
    /// then the client CA (to trust peers' client certificates).
    pub fn agent_bundle_pem(&self) -> String {
        self.bundle_pem.clone()
    }
}

/// Load the cluster from the store, creating it (name and every CA) on first
/// start. A later start with a different `--cluster-name` is refused: the name
/// is baked into every certificate.
pub async fn load_or_create(
    store: &dyn Store,
    km: &dyn KeyManager,
    requested_name: Option<&str>,
) -> anyhow::Result<(String, Cas)> {
    let name = match read_name(store, requested_name).await? {
        Some(name) => name,
        None => match create(store, km, requested_name.unwrap_or("sigil.local")).await {
            Ok(name) => name,
            // Servers starting together on one shared store: another one created the
            // cluster first (its CAs, in the same transaction); ours were never stored.
            Err(e)
                if matches!(
                    e.downcast_ref::<sigil_store::StoreError>(),
                    Some(sigil_store::StoreError::AlreadyExists(_))
                ) =>
            {
                tracing::info!("another auth server created the cluster first; joining it");
                read_name(store, requested_name)
                    .await?
                    .context("the cluster record vanished right after it was created")?
            }
            Err(e) => return Err(e),
        },
    };
    let mut stored = Vec::new();
    for p in CaPurpose::ALL {
        let item = store
            .get(&keys::ca(p))
            .await?
            .with_context(|| format!("the {} CA is missing from the store", p.as_str()))?;
        let ca: StoredCa = serde_json::from_slice(&item.value)
            .with_context(|| format!("decoding the {} CA", p.as_str()))?;
        key_source::check_manager(&ca, km)?;
        stored.push(ca);
    }
    let x509 = |p: CaPurpose| -> anyhow::Result<X509Ca> {
        let s = stored
            .iter()
            .find(|s| s.purpose == p)
            .context("missing CA")?;
        X509Ca::load(km, s).with_context(|| format!("loading the {} CA", p.as_str()))
    };
    let ssh = |p: CaPurpose| -> anyhow::Result<SshCa> {
        let s = stored
            .iter()
            .find(|s| s.purpose == p)
            .context("missing CA")?;
        SshCa::load(km, s).with_context(|| format!("loading the {} CA", p.as_str()))
    };
    let host = x509(CaPurpose::Host)?;
    let client = x509(CaPurpose::Client)?;
    let bundle_pem = format!("{}{}", host.cert_pem(), client.cert_pem());
    let cas = Cas {
        host,
        client,
        bundle_pem,
        ssh_user: ssh(CaPurpose::SshUser)?,
        ssh_host: ssh(CaPurpose::SshHost)?,
        spiffe: x509(CaPurpose::Spiffe)?,
        jwt: x509(CaPurpose::Jwt)?,
        stored,
    };
    Ok((name, cas))
}

/// The stored cluster name, checked against `--cluster-name`; `None` before creation.
async fn read_name(
    store: &dyn Store,
    requested_name: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let Some(item) = store.get(keys::CLUSTER).await? else {
        return Ok(None);
    };
    let rec: ClusterRecord =
        serde_json::from_slice(&item.value).context("decoding the cluster record")?;
    if let Some(req) = requested_name
        && req != rec.name
    {
        bail!(
            "this store belongs to cluster {:?}, not {:?}: drop --cluster-name or use another --data-dir / --store",
            rec.name,
            req
        );
    }
    Ok(Some(rec.name))
}

async fn create(store: &dyn Store, km: &dyn KeyManager, name: &str) -> anyhow::Result<String> {
    sigil_types::validate_trust_domain(name)
        .map_err(|e| anyhow::anyhow!("--cluster-name {name:?} is not usable: {e}"))?;
    let now = OffsetDateTime::now_utc();
    let mut ops = vec![Op::Create {
        key: keys::CLUSTER.to_string(),
        value: serde_json::to_vec(&ClusterRecord {
            name: name.to_string(),
            created: now,
        })?,
        expires: None,
    }];
    let mut fields = Vec::new();
    for p in CaPurpose::ALL {
        let stored = match p {
            CaPurpose::SshUser | CaPurpose::SshHost => SshCa::generate(km, p, name)?.1,
            // The jwt CA is a P-256 key too; its certificate is unused but harmless.
            _ => X509Ca::generate(km, p, name)?.1,
        };
        fields.push(p.as_str());
        ops.push(Op::Create {
            key: keys::ca(p),
            value: serde_json::to_vec(&stored)?,
            expires: None,
        });
    }
    store
        .commit(Txn {
            ops,
            audit: vec![audit::event(
                audit::CLUSTER_CREATED,
                serde_json::json!({"cluster": name, "cas": fields}),
            )],
        })
        .await
        // Not wrapped in context: the caller tells AlreadyExists (lost a race) apart.
        ?;
    Ok(name.to_string())
}
