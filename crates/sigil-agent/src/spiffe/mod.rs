//! SPIFFE workload identity in the agent: the SVID cache and trust state
//! ([`runtime`]), the Workload API and Envoy SDS served on a Unix socket
//! ([`api`], [`sds`], [`server`]), and the `workload-identity-x509` /
//! `workload-identity-jwt` outputs ([`outputs`]).

pub mod api;
mod call_metrics;
mod federated;
mod follow;
pub mod outputs;
pub mod runtime;
pub mod sds;
pub mod server;

pub(crate) use crate::fsutil::pem_lf;
pub use runtime::Runtime;
