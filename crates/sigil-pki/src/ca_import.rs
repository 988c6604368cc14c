//! An X.509 CA that is an intermediate under an organisation's own root, brought in two
//! ways:
//!
//! - **Import** ([`import_x509_ca`]): the organisation hands over the CA's certificate
//!   chain and its private key (PKCS#8 or SEC1 PEM, ECDSA P-256). The key goes into the
//!   [`KeyManager`] with [`KeyManager::import`] (on an HSM: a sensitive, non-extractable
//!   token object, but it did exist outside the token).
//! - **CSR** ([`new_x509_ca_request`] then [`complete_x509_ca_request`]): Sigil makes the
//!   key inside the key manager (with an HSM it never leaves the token) and a PKCS#10
//!   request; the organisation's CA signs it; the signed chain comes back and is checked
//!   against the key kept from the first step.
//!
//! Both run the same checks (`ca_validate.rs`): the first certificate is a CA for exactly
//! this key, every certificate is valid now and for at least [`MIN_CA_REMAINING`], each
//! is signed by the next, no pathLenConstraint forbids the CA, no extendedKeyUsage or
//! name constraint that Sigil's leaves would break (DNS/IP constraints are enforced at each
//! issuance instead), and for `spiffe` a URI SAN, if any, is `spiffe://<cluster>`. Both return a [`StoredCa`] with [`StoredCa::chain_pem`] set when
//! there are certificates above the CA's own; [`X509Ca::load`] loads it, and
//! [`X509Ca::chain_ders`] / [`X509Ca::trust_anchor_der`] give what to send and what to
//! trust.
//!
//! Only the `host`, `client`, `db-client`, `spiffe` and `kubernetes` CAs can be intermediates. Leaves
//! of an imported CA carry its SubjectKeyIdentifier as their AuthorityKeyIdentifier, so
//! [`crate::CertInfo::issuer_spki_pin`] is `None` for them unless that SKID happens to be
//! a 32-byte SHA-256 of the key.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use time::OffsetDateTime;

use crate::ca_validate::{chain_from_pem, validate_chain};
use crate::der;
use crate::imported_key::ImportedKey;
use crate::key_manager::{KeyContext, KeyManager};
use crate::keys::{CaPurpose, KeyAlgorithm, StoredCa, StoredKey, random_bytes};
use crate::x509_ca::{RcgenKey, X509Ca, check_uri_safe, pem_encode};
use crate::{PkiError, Result};

pub use crate::ca_validate::MIN_CA_REMAINING;

/// Refuse purposes that cannot be an intermediate CA.
fn check_importable(purpose: CaPurpose) -> Result<()> {
    match purpose {
        CaPurpose::Host
        | CaPurpose::Client
        | CaPurpose::DbClient
        | CaPurpose::Spiffe
        | CaPurpose::Kubernetes => Ok(()),
        CaPurpose::SshUser | CaPurpose::SshHost => Err(PkiError::NotImportable {
            purpose,
            reason: "OpenSSH CAs are bare keys with no certificate chain; only the host, client, db-client, spiffe and kubernetes CAs can be intermediates under an organisation's root",
        }),
        CaPurpose::Jwt => Err(PkiError::NotImportable {
            purpose,
            reason: "JWT-SVID keys are published as a JWKS, not chained to a root; only the host, client, db-client, spiffe and kubernetes CAs can be intermediates under an organisation's root",
        }),
    }
}

/// Import an intermediate CA: `cert_chain_pem` holds the CA's certificate first, then its
/// issuer, then that one's issuer, up to and optionally including the self-signed root;
/// `key_pem` the CA's private key (`PRIVATE KEY` or `EC PRIVATE KEY`, ECDSA P-256).
///
/// The chain is validated before the key manager stores anything (see the module docs);
/// the key is then imported under the context of the `purpose` CA of `cluster`, and the
/// result is loaded back and made to sign once. `created` is now. The record is not
/// stored anywhere: the caller stores it (for a rotation, as the new CA).
pub fn import_x509_ca(
    km: &dyn KeyManager,
    purpose: CaPurpose,
    cluster: &str,
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<StoredCa> {
    check_importable(purpose)?;
    check_uri_safe("cluster", cluster)?;
    let key = ImportedKey::from_pem(key_pem)?;
    let ders = chain_from_pem(purpose, cert_chain_pem)?;
    validate_chain(
        purpose,
        cluster,
        &ders,
        key.public_key_spki_der(),
        OffsetDateTime::now_utc(),
    )?;
    let stored_key = km.import(&KeyContext::ca(cluster, purpose), &key)?;
    drop(key);
    finish(km, purpose, cluster, stored_key, ders)
}

/// First step of the CSR flow: generate the `purpose` CA's key for `cluster` inside `km`
/// and return its record (keep it until the signed certificate comes back) and a PKCS#10
/// CSR (PEM) signed by that key.
///
/// The CSR asks for what a generated Sigil CA has: subject `O=<cluster>, CN=<cluster>
/// <purpose> CA, serialNumber=<random>`, and in its extension request
/// `basicConstraints = critical, CA:TRUE, pathlen:0` and `keyUsage = critical,
/// digitalSignature, keyCertSign, cRLSign`. The signing CA decides what the certificate
/// carries; [`complete_x509_ca_request`] checks what matters.
pub fn new_x509_ca_request(
    km: &dyn KeyManager,
    purpose: CaPurpose,
    cluster: &str,
) -> Result<(StoredKey, String)> {
    check_importable(purpose)?;
    check_uri_safe("cluster", cluster)?;
    let ctx = KeyContext::ca(cluster, purpose);
    let stored_key = km.generate(&ctx, KeyAlgorithm::EcdsaP256)?;
    let key = km.load(&ctx, &stored_key)?;
    let params = ca_params(purpose, cluster, &random_bytes::<16>()?)?;
    let signer = RcgenKey {
        key: key.as_ref(),
        raw: key.public_key_raw(),
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let csr = params
        .serialize_request(&signer)
        .and_then(|csr| csr.pem())
        .map_err(|e| PkiError::CertificateBuild(format!("certificate signing request: {e}")))?;
    Ok((stored_key, csr))
}

/// Second step of the CSR flow: `stored_key` is the record [`new_x509_ca_request`]
/// returned for the same `purpose` and `cluster`; `cert_chain_pem` the signed certificate
/// then its issuers (as for [`import_x509_ca`]). Checks the certificate is for that key,
/// runs the same validation as an import, and returns the CA record.
pub fn complete_x509_ca_request(
    km: &dyn KeyManager,
    purpose: CaPurpose,
    cluster: &str,
    stored_key: &StoredKey,
    cert_chain_pem: &str,
) -> Result<StoredCa> {
    check_importable(purpose)?;
    check_uri_safe("cluster", cluster)?;
    let key = km.load(&KeyContext::ca(cluster, purpose), stored_key)?;
    let ders = chain_from_pem(purpose, cert_chain_pem)?;
    validate_chain(
        purpose,
        cluster,
        &ders,
        &key.public_key_spki_der(),
        OffsetDateTime::now_utc(),
    )?;
    finish(km, purpose, cluster, stored_key.clone(), ders)
}

/// The record, loaded back through the key manager and tried with one signature, so that
/// what the caller stores is known to work.
fn finish(
    km: &dyn KeyManager,
    purpose: CaPurpose,
    cluster: &str,
    key: StoredKey,
    ders: Vec<Vec<u8>>,
) -> Result<StoredCa> {
    let mut certs = ders.iter();
    let cert_pem = certs.next().map(|d| pem_encode(d));
    let above: String = certs.map(|d| pem_encode(d)).collect();
    let stored = StoredCa {
        purpose,
        cluster: cluster.to_string(),
        key,
        cert_pem,
        chain_pem: (!above.is_empty()).then_some(above),
        ssh_public_key: None,
        created: OffsetDateTime::now_utc(),
    };
    let ca = X509Ca::load(km, &stored)?;
    const PROBE: &[u8] = b"sigil CA key check";
    let sig = ca.key.sign(PROBE)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, ca.key.public_key_raw())
        .verify(PROBE, &sig)
        .map_err(|_| PkiError::Signing {
            algorithm: KeyAlgorithm::EcdsaP256.as_str(),
        })?;
    Ok(stored)
}

/// Subject, basicConstraints and keyUsage of a Sigil X.509 CA, shared by a generated CA
/// and the CSR of an intermediate ([`crate::new_x509_ca_request`]). `serial` goes into the
/// subject's serialNumber attribute (2.5.4.5): every CA subject is unique, so a rotated CA
/// never shares a subject with its predecessor (path building picks the right one).
pub(crate) fn ca_params(
    purpose: CaPurpose,
    cluster: &str,
    serial: &[u8],
) -> Result<rcgen::CertificateParams> {
    let serial_hex = hex::encode(der::strip_leading_zeros(serial));
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, cluster);
    dn.push(
        rcgen::DnType::CommonName,
        format!("{cluster} {} CA", purpose.as_str()),
    );
    let serial_attr = rcgen::string::PrintableString::try_from(serial_hex)
        .map_err(|e| PkiError::CertificateBuild(e.to_string()))?;
    dn.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
        rcgen::DnValue::PrintableString(serial_attr),
    );
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}
