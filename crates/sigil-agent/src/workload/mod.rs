//! Local pieces of the SPIFFE Workload API served on a Unix socket: the
//! HTTP/2 transport fix that lets grpcio clients in, and workload attestation.

pub mod attest;
pub mod authority;
