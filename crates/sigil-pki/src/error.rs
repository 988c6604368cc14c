//! The crate's error type. Messages say what to do next and never carry key material.

use crate::keys::CaPurpose;

/// Result alias used across sigil-pki.
pub type Result<T> = std::result::Result<T, PkiError>;

/// Everything that can go wrong while generating keys, loading CAs or issuing credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The crypto backend refused to generate a key (entropy or library failure).
    #[error("could not generate a {algorithm} key with aws-lc-rs; check the system RNG")]
    KeyGeneration {
        /// Algorithm that was requested.
        algorithm: &'static str,
    },
    /// A stored key names a key manager other than the one asked to load it.
    #[error(
        "stored key belongs to the '{stored}' key manager but was given to the '{manager}' manager; load it with the matching KeyManager"
    )]
    WrongKeyManager {
        /// Manager recorded in the stored key.
        stored: String,
        /// Manager asked to load it.
        manager: &'static str,
    },
    /// Stored key material could not be decoded or rejected by the backend.
    #[error("stored {algorithm} key is unusable: {reason}")]
    InvalidStoredKey {
        /// Algorithm the key claims to be.
        algorithm: &'static str,
        /// Why it was rejected (never the material itself).
        reason: &'static str,
    },
    /// A key-encryption key (KEK) could not be used.
    #[error("the CA key-encryption key (KEK) is unusable: {0}")]
    InvalidKek(&'static str),
    /// A sealed key was sealed under another KEK than the one given.
    #[error(
        "the CA keys were sealed with KEK id {sealed}; this KEK is {this}: give the auth service the KEK the cluster was created with"
    )]
    WrongKek {
        /// KEK id recorded in the sealed key.
        sealed: String,
        /// KEK id of the KEK that was given.
        this: String,
    },
    /// A sealed key was made for another CA (or cluster) than the record it was found in.
    #[error(
        "the sealed key was made for the {sealed_purpose} key of cluster {sealed_cluster:?} but is stored as the {purpose} key of cluster {cluster:?}: the record was altered or restored into the wrong place; restore it from backup"
    )]
    SealedForOtherKey {
        /// Cluster recorded in the sealed key.
        sealed_cluster: String,
        /// Purpose recorded in the sealed key.
        sealed_purpose: String,
        /// Cluster of the record it was loaded for.
        cluster: String,
        /// Purpose of the record it was loaded for.
        purpose: String,
    },
    /// The HSM (PKCS#11 token) refused or failed an operation.
    #[error("PKCS#11 {context} failed: {reason}")]
    Pkcs11 {
        /// What was being done.
        context: String,
        /// The token's or library's error (never a PIN or key material).
        reason: String,
    },
    /// The backend failed to produce a signature.
    #[error("signing with the {algorithm} CA key failed in the key manager")]
    Signing {
        /// Algorithm of the key.
        algorithm: &'static str,
    },
    /// A CA of one purpose was used where another kind was required.
    #[error("CA purpose '{purpose}' cannot be used here: {expected}")]
    WrongPurpose {
        /// Purpose that was supplied.
        purpose: CaPurpose,
        /// What was expected instead.
        expected: &'static str,
    },
    /// The CA's key has the wrong algorithm for this kind of CA.
    #[error("the {purpose} CA key is {actual} but {expected} is required")]
    WrongAlgorithm {
        /// Purpose of the CA.
        purpose: CaPurpose,
        /// Algorithm found.
        actual: &'static str,
        /// Algorithm required.
        expected: &'static str,
    },
    /// A stored CA lacks the public part needed to load it.
    #[error("stored {purpose} CA has no {field}; regenerate it or restore it from backup")]
    MissingStoredField {
        /// Purpose of the CA.
        purpose: CaPurpose,
        /// Missing field name.
        field: &'static str,
    },
    /// The stored certificate / public key does not belong to the stored private key.
    #[error(
        "the stored {purpose} CA public key does not match its private key; the CA record is corrupt or mixed up"
    )]
    KeyMismatch {
        /// Purpose of the CA.
        purpose: CaPurpose,
    },
    /// A certificate could not be parsed or lacks a required field.
    #[error("invalid X.509 certificate: {0}")]
    InvalidCertificate(String),
    /// A subject public key given for issuance is unusable.
    #[error("invalid subject public key: {0}")]
    InvalidPublicKey(String),
    /// PEM text could not be decoded.
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    /// A certificate does not carry the Sigil identity extension.
    #[error(
        "certificate has no Sigil identity extension (OID {oid}); it was not issued by a Sigil client CA"
    )]
    MissingIdentityExtension {
        /// The OID that was looked for.
        oid: &'static str,
    },
    /// The identity extension exists but cannot be decoded.
    #[error("Sigil identity extension is malformed: {0}")]
    MalformedIdentityExtension(String),
    /// A name that goes into a certificate is not acceptable.
    #[error("invalid {field} '{value}': {reason}")]
    InvalidName {
        /// Which field.
        field: &'static str,
        /// The rejected value (names are not secret).
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A TTL outside what a certificate can express.
    #[error("invalid TTL: {0}")]
    InvalidTtl(&'static str),
    /// Failure inside the OpenSSH encoding library.
    #[error("OpenSSH {context} failed: {reason}")]
    Ssh {
        /// What was being done.
        context: &'static str,
        /// Library error text.
        reason: String,
    },
    /// Failure inside rcgen while building the CA certificate.
    #[error("building the CA certificate failed: {0}")]
    CertificateBuild(String),
    /// Failure while building or signing a certificate revocation list.
    #[error("building the CRL failed: {0}")]
    CrlBuild(String),
    /// A JWT-SVID failed validation (or its claims could not be encoded).
    #[error("JWT-SVID rejected: {0}")]
    InvalidJwt(String),
    /// A private key handed in for import is of an algorithm the CA cannot use.
    #[error(
        "the private key given is {found}, but only {accepted} keys can be imported (what the X.509 CAs sign with): issue the CA for a P-256 key, e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`, or use the CSR flow"
    )]
    UnsupportedKeyAlgorithm {
        /// What the key is (e.g. "RSA", "ECDSA P-384").
        found: String,
        /// What is accepted.
        accepted: &'static str,
    },
    /// A private key handed in for import could not be read. Never carries key material.
    #[error("the private key given is unusable: {0}")]
    InvalidImportKey(&'static str),
    /// A CA of this purpose cannot be imported or requested under another root.
    #[error("the {purpose} CA cannot be imported: {reason}")]
    NotImportable {
        /// Purpose asked for.
        purpose: CaPurpose,
        /// Why, and what can be imported.
        reason: &'static str,
    },
    /// An imported CA certificate or its chain was refused; the message says which
    /// certificate and what to change.
    #[error("the {purpose} CA certificate chain is refused: {reason}")]
    CaChainRejected {
        /// Purpose of the CA being imported.
        purpose: CaPurpose,
        /// Which certificate (1 = the CA's own) and what is wrong with it.
        reason: String,
    },
    /// An audit checkpoint signature or audit public key failed verification.
    #[error("audit checkpoint rejected: {0}")]
    InvalidCheckpoint(String),
}
