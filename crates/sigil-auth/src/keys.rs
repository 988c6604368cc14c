//! Store key layout. Every resource lives under `/<kind>s/`; join tokens are
//! keyed by the SHA-256 of the token so a key in an error or log never
//! reveals the secret.

use sigil_pki::CaPurpose;

pub const CLUSTER: &str = "/cluster/name";
/// Set by `sigil auth migrate` while it copies into a PostgreSQL database (migrate.rs).
pub const MIGRATION: &str = "/migration/in_progress";

pub fn ca(p: CaPurpose) -> String {
    format!("/cas/{}", p.as_str())
}

pub const CAS: &str = "/cas/";
/// The common prefix of [`CAS`] and [`CA_ROTATIONS`] (and [`CA_REQUESTS`]): one
/// `list` reads the CAs and their rotations as of one revision.
pub const CA_RECORDS_PREFIX: &str = "/ca";
pub const CA_REQUESTS: &str = "/ca_requests/";

/// A key made for an intermediate `p` CA, waiting for its certificate (`sigil ca request`).
pub fn ca_request(p: CaPurpose) -> String {
    format!("{CA_REQUESTS}{}", p.as_str())
}
pub const CA_ROTATIONS: &str = "/ca_rotations/";

/// A rotation of the `p` CA in progress (ca_rotation.rs).
pub fn ca_rotation(p: CaPurpose) -> String {
    format!("{CA_ROTATIONS}{}", p.as_str())
}

pub const ROLES: &str = "/roles/";
pub const BOTS: &str = "/bots/";
pub const TOKENS: &str = "/tokens/";
pub const LOCKS: &str = "/locks/";
pub const BOT_INSTANCES: &str = "/bot_instances/";
pub const WORKLOAD_IDENTITIES: &str = "/workload_identities/";
pub const REVOCATIONS: &str = "/workload_identity_x509_revocations/";
pub const BOUND_KEYPAIR_STATES: &str = "/bound_keypair_states/";
pub const SPENT_TOKENS: &str = "/spent_tokens/";
pub const KUBERNETES_CLUSTERS: &str = "/kubernetes_clusters/";
pub const DATABASES: &str = "/databases/";
/// `app` resources (app_access), by name.
pub const APPS: &str = "/apps/";
/// One record per issued database client certificate, by serial (db_access):
/// what a lock puts on the database's CRL. Expires with the certificate.
pub const DB_CERTS: &str = "/db_certs/";

/// `spiffe_federation` resources, by foreign trust domain.
pub const SPIFFE_FEDERATIONS: &str = "/spiffe_federations/";
/// The current bundle of each federated trust domain, written by the fetcher
/// (federation/) so that every server and every restart serves the same one.
pub const FEDERATED_BUNDLES: &str = "/spiffe_federation_bundles/";

pub fn spiffe_federation(trust_domain: &str) -> String {
    format!("{SPIFFE_FEDERATIONS}{trust_domain}")
}
pub fn federated_bundle(trust_domain: &str) -> String {
    format!("{FEDERATED_BUNDLES}{trust_domain}")
}

pub fn app(name: &str) -> String {
    format!("{APPS}{name}")
}
pub fn database(name: &str) -> String {
    format!("{DATABASES}{name}")
}
pub fn db_cert(serial_hex: &str) -> String {
    format!("{DB_CERTS}{serial_hex}")
}

pub fn role(name: &str) -> String {
    format!("{ROLES}{name}")
}
pub fn bot(name: &str) -> String {
    format!("{BOTS}{name}")
}
pub fn token(secret_or_ref: &str) -> String {
    let r = token_ref(secret_or_ref);
    format!("{TOKENS}{}", r.trim_start_matches("sha256:"))
}
pub fn lock(id: &str) -> String {
    format!("{LOCKS}{id}")
}
pub fn bot_instance(bot: &str, id: &str) -> String {
    format!("{BOT_INSTANCES}{bot}/{id}")
}
pub fn workload_identity(name: &str) -> String {
    format!("{WORKLOAD_IDENTITIES}{name}")
}
pub fn kubernetes_cluster(name: &str) -> String {
    format!("{KUBERNETES_CLUSTERS}{name}")
}
pub fn revocation(serial_hex: &str) -> String {
    format!("{REVOCATIONS}{serial_hex}")
}
/// A bound_keypair token's key state, by the SHA-256 of the token's name.
pub fn bound_keypair_state(token_name: &str) -> String {
    format!(
        "{BOUND_KEYPAIR_STATES}{}",
        sigil_pki::sha256_hex(token_name.as_bytes())
    )
}
/// The short-lived record of a consumed `token`-method secret
/// (join/retry.rs), under the same SHA-256 as the token itself.
pub fn spent_token(secret: &str) -> String {
    let r = token_ref(secret);
    format!("{SPENT_TOKENS}{}", r.trim_start_matches("sha256:"))
}
pub fn bot_instances_of(bot: &str) -> String {
    format!("{BOT_INSTANCES}{bot}/")
}

/// The key a resource of `kind` named `name` is stored under.
pub fn for_kind(kind: &str, name: &str) -> Option<String> {
    Some(match kind {
        "role" => role(name),
        "bot" => bot(name),
        "token" => token(name),
        "lock" => lock(name),
        "workload_identity" => workload_identity(name),
        "workload_identity_x509_revocation" => revocation(name),
        "kubernetes_cluster" => kubernetes_cluster(name),
        "database" => database(name),
        "app" => app(name),
        "spiffe_federation" => spiffe_federation(name),
        "bot_instance" => {
            // bot_instance names are "<bot>/<id>" or just "<id>" (looked up by scan).
            let (b, id) = name.split_once('/')?;
            bot_instance(b, id)
        }
        _ => return None,
    })
}

/// How a join token is referred to anywhere but its own record: locks,
/// listings, removal. Accepts the secret or this form itself.
pub fn token_ref(secret_or_ref: &str) -> String {
    if secret_or_ref.starts_with("sha256:") && secret_or_ref.len() == 71 {
        secret_or_ref.to_string()
    } else {
        format!("sha256:{}", sigil_pki::sha256_hex(secret_or_ref.as_bytes()))
    }
}

/// Short, non-reversible form of a secret for logs and audit events.
pub fn secret_hint(secret: &str) -> String {
    let h = sigil_pki::sha256_hex(secret.as_bytes());
    format!("sha256:{}", &h[..16])
}
