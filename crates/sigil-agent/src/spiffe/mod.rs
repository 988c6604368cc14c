//! SPIFFE workload identity in the agent: the SVID cache and trust state
//! ([`runtime`]), the Workload API and Envoy SDS served on a Unix socket
//! ([`api`], [`sds`], [`server`]), and the `workload-identity-x509` /
//! `workload-identity-jwt` outputs ([`outputs`]).

pub mod api;
pub mod outputs;
pub mod runtime;
pub mod sds;
pub mod server;

pub use runtime::Runtime;

/// One PEM block with LF line endings (the `pem` crate defaults to CRLF).
pub(crate) fn pem_lf(label: &str, der: impl Into<Vec<u8>>) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.into()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
