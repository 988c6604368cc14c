//! Generated gRPC code for Sigil's control plane (`sigil.v1`).
//! The SPIFFE Workload API (no proto package) joins this crate in its own module.

/// The auth and admin API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sigil.v1");
}
