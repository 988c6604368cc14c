//! OpenSSH certificate authorities. Certificates are built with ssh-key's
//! `certificate::Builder`, but signed through our [`CaSigningKey`] (aws-lc-rs or a future
//! HSM) via the [`CaSigner`] adapter, never by an in-process ed25519-dalek key.

use std::sync::Arc;
use std::time::Duration;

use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, PublicKey, Signature};
use time::OffsetDateTime;

use crate::key_manager::{CaSigningKey, KeyContext, KeyManager};
use crate::keys::{CaPurpose, KeyAlgorithm, StoredCa, random_bytes};
use crate::{PkiError, Result};

/// Back-dating of valid_after for peers with slightly slow clocks.
const CLOCK_SKEW_SECS: u64 = 60;

/// What an OpenSSH user certificate permits: each `true` becomes its
/// `permit-*` extension, and `source_address` the `source-address` critical
/// option. Plain data so that sigil-pki needs no policy types; the auth
/// service fills it from the bot's roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshUserPermissions {
    /// `permit-port-forwarding`.
    pub port_forwarding: bool,
    /// `permit-agent-forwarding`.
    pub agent_forwarding: bool,
    /// `permit-X11-forwarding`.
    pub x11_forwarding: bool,
    /// `permit-pty`.
    pub pty: bool,
    /// `permit-user-rc`.
    pub user_rc: bool,
    /// `None`: any source address. `Some(list)`: the `source-address`
    /// critical option (addresses or CIDRs). `Some(empty)` allows no address
    /// at all: issuing is refused (the caller should issue no certificate).
    pub source_address: Option<Vec<String>>,
}

impl SshUserPermissions {
    /// A terminal and nothing else: a bot's default.
    pub const PTY_ONLY: SshUserPermissions = SshUserPermissions {
        port_forwarding: false,
        agent_forwarding: false,
        x11_forwarding: false,
        pty: true,
        user_rc: false,
        source_address: None,
    };

    /// Everything `ssh-keygen -s` permits by default (an interactive user).
    pub const ALL: SshUserPermissions = SshUserPermissions {
        port_forwarding: true,
        agent_forwarding: true,
        x11_forwarding: true,
        pty: true,
        user_rc: true,
        source_address: None,
    };

    /// The `permit-*` extensions these permissions grant.
    fn extensions(&self) -> Vec<&'static str> {
        [
            (self.x11_forwarding, "permit-X11-forwarding"),
            (self.agent_forwarding, "permit-agent-forwarding"),
            (self.port_forwarding, "permit-port-forwarding"),
            (self.pty, "permit-pty"),
            (self.user_rc, "permit-user-rc"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// The `source-address` value, checked: `None` for no restriction.
    fn source_address_option(&self) -> Result<Option<String>> {
        let Some(list) = &self.source_address else {
            return Ok(None);
        };
        if list.is_empty() {
            return Err(PkiError::InvalidName {
                field: "source-address",
                value: String::new(),
                reason: "an empty list allows no address: issue no certificate instead",
            });
        }
        for cidr in list {
            if !is_address_or_cidr(cidr) {
                return Err(PkiError::InvalidName {
                    field: "source-address",
                    value: cidr.escape_debug().to_string(),
                    reason: "each entry must be an IP address or CIDR such as 10.0.0.0/8",
                });
            }
        }
        Ok(Some(list.join(",")))
    }
}

/// An IPv4/IPv6 address, optionally with a `/prefix` no longer than the address.
fn is_address_or_cidr(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.len() <= 3
            && p.parse::<u8>().is_ok_and(|n| n <= max)
    })
}

/// An OpenSSH certificate issued by an [`SshCa`].
#[derive(Clone, Debug)]
pub struct IssuedSshCert {
    /// One line: `ssh-ed25519-cert-v01@openssh.com AAAA… <key id>`.
    pub openssh: String,
    /// Random certificate serial (what a KRL revokes).
    pub serial: u64,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Adapts a [`CaSigningKey`] to ssh-key's [`ssh_key::SigningKey`].
struct CaSigner {
    key: Arc<dyn CaSigningKey>,
    public: Ed25519PublicKey,
}

impl signature::Signer<Signature> for CaSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Signature, signature::Error> {
        let sig = self.key.sign(msg).map_err(|_| signature::Error::new())?;
        Signature::new(Algorithm::Ed25519, sig).map_err(|_| signature::Error::new())
    }
}

impl From<&CaSigner> for KeyData {
    fn from(s: &CaSigner) -> KeyData {
        KeyData::Ed25519(s.public)
    }
}

/// An OpenSSH CA (Ed25519) ready to issue user or host certificates.
pub struct SshCa {
    purpose: CaPurpose,
    signer: CaSigner,
    public_openssh: String,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("purpose", &self.purpose)
            .field("public_key", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

fn ssh_err(context: &'static str) -> impl FnOnce(ssh_key::Error) -> PkiError {
    move |e| PkiError::Ssh {
        context,
        reason: e.to_string(),
    }
}

impl SshCa {
    /// Generate an Ed25519 CA key in `km` for `ssh-user` or `ssh-host`.
    pub fn generate(
        km: &dyn KeyManager,
        purpose: CaPurpose,
        cluster: &str,
    ) -> Result<(SshCa, StoredCa)> {
        check_purpose(purpose)?;
        if cluster.is_empty() || cluster.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(PkiError::InvalidName {
                field: "cluster",
                value: cluster.to_string(),
                reason: "must be non-empty printable ASCII without spaces",
            });
        }
        let ctx = KeyContext::ca(cluster, purpose);
        let stored_key = km.generate(&ctx, KeyAlgorithm::Ed25519)?;
        let key = km.load(&ctx, &stored_key)?;
        let ca = Self::from_key(purpose, cluster, key)?;
        let stored = StoredCa {
            purpose,
            cluster: cluster.to_string(),
            key: stored_key,
            cert_pem: None,
            chain_pem: None,
            ssh_public_key: Some(ca.public_openssh.clone()),
            created: OffsetDateTime::now_utc(),
        };
        Ok((ca, stored))
    }

    /// Load a CA persisted by [`SshCa::generate`]; checks the stored public key matches.
    pub fn load(km: &dyn KeyManager, stored: &StoredCa) -> Result<SshCa> {
        check_purpose(stored.purpose)?;
        let key = km.load(
            &KeyContext::ca(&stored.cluster, stored.purpose),
            &stored.key,
        )?;
        let ca = Self::from_key(stored.purpose, &stored.cluster, key)?;
        if let Some(line) = &stored.ssh_public_key {
            let stored_pub =
                PublicKey::from_openssh(line).map_err(ssh_err("parse stored CA public key"))?;
            if stored_pub.key_data() != &KeyData::Ed25519(ca.signer.public) {
                return Err(PkiError::KeyMismatch {
                    purpose: stored.purpose,
                });
            }
        }
        Ok(ca)
    }

    fn from_key(purpose: CaPurpose, cluster: &str, key: Arc<dyn CaSigningKey>) -> Result<SshCa> {
        if key.algorithm() != KeyAlgorithm::Ed25519 {
            return Err(PkiError::WrongAlgorithm {
                purpose,
                actual: key.algorithm().as_str(),
                expected: KeyAlgorithm::Ed25519.as_str(),
            });
        }
        let public = Ed25519PublicKey::try_from(key.public_key_raw().as_slice())
            .map_err(ssh_err("decode CA public key"))?;
        let comment = format!("sigil-{cluster}-{}", purpose.as_str());
        let public_openssh = PublicKey::new(KeyData::Ed25519(public), comment)
            .to_openssh()
            .map_err(ssh_err("encode CA public key"))?;
        Ok(SshCa {
            purpose,
            signer: CaSigner { key, public },
            public_openssh,
        })
    }

    /// `ssh-ed25519 AAAA… sigil-<cluster>-<purpose>` (for `TrustedUserCAKeys` / authorized_keys).
    pub fn public_key_openssh(&self) -> String {
        self.public_openssh.clone()
    }

    /// `@cert-authority <pattern> ssh-ed25519 AAAA… <comment>` for known_hosts.
    pub fn known_hosts_line(&self, host_pattern: &str) -> String {
        format!("@cert-authority {host_pattern} {}", self.public_openssh)
    }

    /// Issue a user certificate (requires an `ssh-user` CA) with exactly the
    /// `permit-*` extensions and `source-address` that `permissions` give.
    pub fn issue_user_cert(
        &self,
        subject_public_key_openssh: &str,
        key_id: &str,
        principals: &[String],
        ttl: Duration,
        permissions: &SshUserPermissions,
    ) -> Result<IssuedSshCert> {
        self.require(CaPurpose::SshUser)?;
        self.issue(
            subject_public_key_openssh,
            key_id,
            principals,
            ttl,
            CertType::User,
            Some(permissions),
        )
    }

    /// Issue a host certificate (requires an `ssh-host` CA); principals are host names.
    pub fn issue_host_cert(
        &self,
        subject_public_key_openssh: &str,
        key_id: &str,
        principals: &[String],
        ttl: Duration,
    ) -> Result<IssuedSshCert> {
        self.require(CaPurpose::SshHost)?;
        self.issue(
            subject_public_key_openssh,
            key_id,
            principals,
            ttl,
            CertType::Host,
            None,
        )
    }

    fn require(&self, wanted: CaPurpose) -> Result<()> {
        if self.purpose == wanted {
            Ok(())
        } else {
            Err(PkiError::WrongPurpose {
                purpose: self.purpose,
                expected: match wanted {
                    CaPurpose::SshHost => "the ssh-host CA issues host certificates",
                    _ => "the ssh-user CA issues user certificates",
                },
            })
        }
    }

    fn issue(
        &self,
        subject_public_key_openssh: &str,
        key_id: &str,
        principals: &[String],
        ttl: Duration,
        cert_type: CertType,
        permissions: Option<&SshUserPermissions>,
    ) -> Result<IssuedSshCert> {
        // An empty principal list means "valid for every principal" to OpenSSH: never issue it.
        if principals.is_empty() || principals.iter().any(|p| p.is_empty() || p.contains(',')) {
            return Err(PkiError::InvalidName {
                field: "principals",
                value: principals.join(","),
                reason: "need at least one non-empty principal without ','",
            });
        }
        if key_id.chars().any(char::is_control) {
            return Err(PkiError::InvalidName {
                field: "key id",
                value: key_id.escape_debug().to_string(),
                reason: "must not contain control characters",
            });
        }
        if ttl.is_zero() {
            return Err(PkiError::InvalidTtl("must be greater than zero"));
        }
        let source_address = match permissions {
            Some(p) => p.source_address_option()?,
            None => None,
        };
        let subject = PublicKey::from_openssh(subject_public_key_openssh.trim())
            .map_err(ssh_err("parse subject public key"))?;
        check_ssh_key(subject.key_data())?;
        let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let valid_before = now
            .checked_add(ttl.as_secs())
            .filter(|v| *v < i64::MAX as u64)
            .ok_or(PkiError::InvalidTtl("too large to represent"))?;
        let not_after = OffsetDateTime::from_unix_timestamp(valid_before as i64)
            .map_err(|_| PkiError::InvalidTtl("too large to represent"))?;
        let nonce = random_bytes::<{ Builder::RECOMMENDED_NONCE_SIZE }>()?;
        // Serial 0 reads as "no serial" to KRL tooling; keep every serial non-zero.
        let serial = u64::from_be_bytes(random_bytes::<8>()?).max(1);

        let mut b = Builder::new(
            nonce.to_vec(),
            subject.key_data().clone(),
            now.saturating_sub(CLOCK_SKEW_SECS),
            valid_before,
        )
        .map_err(ssh_err("certificate builder"))?;
        let build = ssh_err("certificate builder");
        (|| -> ssh_key::Result<()> {
            b.serial(serial)?
                .cert_type(cert_type)?
                .key_id(key_id)?
                .comment(key_id)?;
            for p in principals {
                b.valid_principal(p.as_str())?;
            }
            if let Some(p) = permissions {
                for ext in p.extensions() {
                    b.extension(ext, "")?;
                }
            }
            if let Some(list) = source_address {
                b.critical_option("source-address", list)?;
            }
            Ok(())
        })()
        .map_err(build)?;
        let cert = b
            .sign(&self.signer)
            .map_err(ssh_err("certificate signing"))?;
        Ok(IssuedSshCert {
            openssh: cert.to_openssh().map_err(ssh_err("certificate encoding"))?,
            serial,
            not_after,
        })
    }
}

fn check_purpose(purpose: CaPurpose) -> Result<()> {
    if purpose.is_ssh() {
        Ok(())
    } else {
        Err(PkiError::WrongPurpose {
            purpose,
            expected: "ssh-user or ssh-host; use X509Ca for X.509 purposes",
        })
    }
}

/// The SSH key algorithms Sigil certifies, as said in errors and the README.
pub const ACCEPTED_SSH_KEYS: &str = "Ed25519 (also sk-ssh-ed25519) or RSA of 2048 to 16384 bits";

/// Refuse SSH keys below policy: DSA, RSA under 2048 bits, or an unknown
/// algorithm. Ed25519 (and its security-key form) and RSA pass.
pub fn check_ssh_key(key: &ssh_key::public::KeyData) -> Result<()> {
    use ssh_key::public::KeyData;
    let refuse = |what: String| {
        Err(PkiError::InvalidPublicKey(format!(
            "{what}; accepted SSH keys: {ACCEPTED_SSH_KEYS}"
        )))
    };
    use ssh_key::Algorithm;
    if matches!(key.algorithm(), Algorithm::Ed25519 | Algorithm::SkEd25519) {
        return Ok(());
    }
    match key {
        KeyData::Rsa(k) => {
            let bits = crate::x509_ca::rsa_modulus_bits(k.n.as_bytes());
            if (2048..=16384).contains(&bits) {
                Ok(())
            } else {
                refuse(format!("an SSH RSA key of {bits} bits"))
            }
        }
        KeyData::Dsa(_) => refuse("an SSH DSA key".into()),
        _ => refuse("an unsupported SSH key algorithm".into()),
    }
}
