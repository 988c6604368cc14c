//! gRPC service implementations.
pub mod admin_api;
pub mod auth_api;
pub mod resources;
pub mod workload_admin;
