//! The cluster's identity: its name and one CA per purpose, created on first
//! start and loaded from the store afterwards.

use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sigil_pki::{CaPurpose, KeyManager, SshCa, StoredCa, X509Ca};
use sigil_store::{Op, Store, Txn};
use sigil_types::RotationPhase;
use time::OffsetDateTime;

use crate::audit;
use crate::ca_rotation::{self, CaRotation};
use crate::key_source;
use crate::keys;

/// The stored record naming the cluster.
#[derive(Serialize, Deserialize)]
struct ClusterRecord {
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
}

/// The CAs of one purpose: outside a rotation one CA in every role; during one,
/// the phase decides (see `sigil_types::ca_rotation`).
pub struct CaSet<T> {
    /// Signs what the auth service issues.
    pub signer: Arc<T>,
    /// Signs the auth service's own TLS certificate (meaningful for `host`).
    pub server: Arc<T>,
    /// Every CA relying parties trust now, the signer first.
    pub trusted: Vec<Arc<T>>,
}

impl<T> CaSet<T> {
    fn single(ca: T) -> CaSet<T> {
        let ca = Arc::new(ca);
        CaSet {
            signer: ca.clone(),
            server: ca.clone(),
            trusted: vec![ca],
        }
    }

    fn rotating(old: T, new: T, phase: RotationPhase) -> CaSet<T> {
        let (old, new) = (Arc::new(old), Arc::new(new));
        let roles = phase.roles();
        let pick = |new_one: bool| if new_one { new.clone() } else { old.clone() };
        let signer = pick(roles.new_signs);
        let other = pick(!roles.new_signs);
        CaSet {
            server: pick(roles.new_serves),
            trusted: vec![signer.clone(), other],
            signer,
        }
    }
}

/// Every CA of the cluster, loaded and ready to sign, as of one read of the store.
pub struct Cas {
    pub host: CaSet<X509Ca>,
    pub client: CaSet<X509Ca>,
    pub ssh_user: CaSet<SshCa>,
    pub ssh_host: CaSet<SshCa>,
    /// Issues X.509-SVIDs and signs the SVID CRL; the trust domain's X.509 authority.
    pub spiffe: CaSet<X509Ca>,
    /// Signs JWT-SVIDs; its public keys are the trust domain's JWT authorities.
    pub jwt: CaSet<X509Ca>,
    /// Issues Kubernetes client certificates (kube-apiserver `--client-ca-file`).
    pub kubernetes: CaSet<X509Ca>,
    /// Issues database client certificates (`database` output); every
    /// trusted one is a database server's `ssl_ca_file` and signs its CRL.
    pub db_client: CaSet<X509Ca>,
    /// The established CA of every purpose, including those whose issuers arrive with
    /// later capabilities (db-client): created up front so the cluster's trust roots
    /// never change under running agents except through a rotation.
    pub stored: Vec<StoredCa>,
    /// Rotations in progress.
    pub rotations: Vec<CaRotation>,
    /// Changes whenever any CA's phase, signer or trusted set changes.
    pub epoch: String,
    /// [`Cas::agent_bundle_pem`], encoded once.
    bundle_pem: String,
}

impl Cas {
    /// PEM of the CAs an agent needs: every trusted host CA (to trust the auth
    /// service; the one it serves with first) then every trusted client CA (to
    /// trust peers' client certificates).
    pub fn agent_bundle_pem(&self) -> String {
        self.bundle_pem.clone()
    }

    /// `@cert-authority` lines for every trusted ssh-host CA.
    pub fn known_hosts(&self) -> String {
        self.ssh_host
            .trusted
            .iter()
            .map(|c| format!("{}\n", c.known_hosts_line("*")))
            .collect()
    }

    /// TrustedUserCAKeys lines for every trusted ssh-user CA.
    pub fn ssh_user_cas(&self) -> String {
        self.ssh_user
            .trusted
            .iter()
            .map(|c| format!("{}\n", c.public_key_openssh().trim_end()))
            .collect()
    }

    /// The rotation of `purpose` in progress, if any.
    pub fn rotation(&self, purpose: CaPurpose) -> Option<&CaRotation> {
        self.rotations.iter().find(|r| r.purpose == purpose)
    }

    /// The pin of the host CA the auth service serves with (what `bots add` prints).
    pub fn server_pin(&self) -> String {
        self.host.server.spki_pin()
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
    create_missing_cas(store, km, &name).await?;
    Ok((name, load(store, km).await?))
}

/// A cluster created before a CA purpose existed (e.g. `kubernetes`) gets
/// that CA at start: one conditional create of every missing one, audited.
/// Servers starting together on one store race; the loser reads the winner's.
async fn create_missing_cas(
    store: &dyn Store,
    km: &dyn KeyManager,
    name: &str,
) -> anyhow::Result<()> {
    let items = store.list(keys::CAS).await?;
    let missing: Vec<CaPurpose> = CaPurpose::ALL
        .into_iter()
        .filter(|p| !items.iter().any(|i| i.key == keys::ca(*p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::new();
    for p in &missing {
        ops.push(Op::Create {
            key: keys::ca(*p),
            value: serde_json::to_vec(&generate_ca(km, *p, name)?)?,
            expires: None,
        });
    }
    let names: Vec<&str> = missing.iter().map(CaPurpose::as_str).collect();
    let txn = Txn {
        ops,
        audit: vec![audit::event(
            audit::CA_CREATED,
            serde_json::json!({"cluster": name, "cas": names}),
        )],
    };
    match store.commit(txn).await {
        Ok(_) => {
            tracing::info!(cas = ?names, "created the CAs this cluster did not have yet");
            Ok(())
        }
        Err(sigil_store::StoreError::AlreadyExists(_)) => {
            tracing::info!(cas = ?names, "another auth server created the missing CAs first");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("creating the missing CAs")),
    }
}

/// A new CA of purpose `p` for cluster `name` (not stored).
fn generate_ca(km: &dyn KeyManager, p: CaPurpose, name: &str) -> anyhow::Result<StoredCa> {
    Ok(match p {
        CaPurpose::SshUser | CaPurpose::SshHost => SshCa::generate(km, p, name)?.1,
        // The jwt CA is a P-256 key too; its certificate is unused but harmless.
        _ => X509Ca::generate(km, p, name)?.1,
    })
}

/// Every CA as the store holds it now: the established ones and rotations in progress.
pub async fn load(store: &dyn Store, km: &dyn KeyManager) -> anyhow::Result<Cas> {
    let (stored, rotations) = read_records(store, km).await?;
    build(km, stored, rotations)
}

/// The established CA of every purpose and the rotations in progress, as stored.
pub async fn read_records(
    store: &dyn Store,
    km: &dyn KeyManager,
) -> anyhow::Result<(Vec<StoredCa>, Vec<CaRotation>)> {
    // One read covers `/cas/` and `/ca_rotations/`: a standby commit changes both,
    // and reading them apart could see the old CA with the rotation already gone.
    let items = store.list(keys::CA_RECORDS_PREFIX).await?;
    let find = |key: &str| items.iter().find(|i| i.key == key);
    let mut stored = Vec::new();
    let mut rotations = Vec::new();
    for p in CaPurpose::ALL {
        let item = find(&keys::ca(p))
            .with_context(|| format!("the {} CA is missing from the store", p.as_str()))?;
        let ca: StoredCa = serde_json::from_slice(&item.value)
            .with_context(|| format!("decoding the {} CA", p.as_str()))?;
        key_source::check_manager(&ca, km)?;
        stored.push(ca);
        if let Some(item) = find(&keys::ca_rotation(p)) {
            let r = ca_rotation::decode(p, &item.value)?;
            key_source::check_manager(&r.new, km)?;
            rotations.push(r);
        }
    }
    Ok((stored, rotations))
}

/// Loads the keys of `stored` and `rotations` into a ready CA set.
pub fn build(
    km: &dyn KeyManager,
    stored: Vec<StoredCa>,
    rotations: Vec<CaRotation>,
) -> anyhow::Result<Cas> {
    let find = |p: CaPurpose| -> anyhow::Result<(&StoredCa, Option<&CaRotation>)> {
        let s = stored
            .iter()
            .find(|s| s.purpose == p)
            .context("missing CA")?;
        Ok((s, rotations.iter().find(|r| r.purpose == p)))
    };
    let x509 = |p: CaPurpose| -> anyhow::Result<CaSet<X509Ca>> {
        let (s, r) = find(p)?;
        let load = |s: &StoredCa| {
            X509Ca::load(km, s).with_context(|| format!("loading the {} CA", p.as_str()))
        };
        Ok(match r {
            None => CaSet::single(load(s)?),
            Some(r) => CaSet::rotating(load(s)?, load(&r.new)?, r.phase),
        })
    };
    let ssh = |p: CaPurpose| -> anyhow::Result<CaSet<SshCa>> {
        let (s, r) = find(p)?;
        let load = |s: &StoredCa| {
            SshCa::load(km, s).with_context(|| format!("loading the {} CA", p.as_str()))
        };
        Ok(match r {
            None => CaSet::single(load(s)?),
            Some(r) => CaSet::rotating(load(s)?, load(&r.new)?, r.phase),
        })
    };
    let host = x509(CaPurpose::Host)?;
    let client = x509(CaPurpose::Client)?;
    let mut bundle_pem = host.server.cert_pem();
    for c in host
        .trusted
        .iter()
        .filter(|c| !Arc::ptr_eq(c, &host.server))
    {
        bundle_pem.push_str(&c.cert_pem());
    }
    for c in &client.trusted {
        bundle_pem.push_str(&c.cert_pem());
    }
    let mut cas = Cas {
        host,
        client,
        bundle_pem,
        ssh_user: ssh(CaPurpose::SshUser)?,
        ssh_host: ssh(CaPurpose::SshHost)?,
        spiffe: x509(CaPurpose::Spiffe)?,
        jwt: x509(CaPurpose::Jwt)?,
        kubernetes: x509(CaPurpose::Kubernetes)?,
        db_client: x509(CaPurpose::DbClient)?,
        epoch: String::new(),
        stored,
        rotations,
    };
    cas.epoch = epoch(&cas);
    Ok(cas)
}

/// A digest of every purpose's phase and of which key signs, serves and is
/// trusted: equal epochs mean agents hold nothing to re-issue.
fn epoch(cas: &Cas) -> String {
    let mut text = String::new();
    for s in &cas.stored {
        let phase = cas
            .rotation(s.purpose)
            .map_or("standby", |r| r.phase.as_str());
        let new = cas
            .rotation(s.purpose)
            .map(|r| ca_rotation::fingerprint(&r.new))
            .unwrap_or_default();
        text.push_str(&format!(
            "{}:{phase}:{}:{new};",
            s.purpose.as_str(),
            ca_rotation::fingerprint(s)
        ));
    }
    sigil_pki::sha256_hex(text.as_bytes())[..32].to_string()
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
        let stored = generate_ca(km, p, name)?;
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

#[cfg(test)]
mod tests;
