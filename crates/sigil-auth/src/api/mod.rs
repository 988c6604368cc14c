//! gRPC service implementations.
pub mod admin_api;
pub(crate) mod admin_tokens;
pub mod auth_api;
pub(crate) mod ca_export;
pub mod ca_rotate;
pub mod resources;
pub mod workload_admin;
