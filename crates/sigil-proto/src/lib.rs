//! Generated gRPC code: Sigil's control plane (`sigil.v1`), the SPIFFE Workload
//! API (no proto package, so its wire paths are `/SpiffeWorkloadAPI/...`) and the
//! subset of Envoy's xDS v3 that Secret Discovery (SDS) needs.

pub mod codec;
pub mod deadline;
pub mod telemetry;

/// The auth and admin API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sigil.v1");
}

/// The SPIFFE Workload API (standard field numbers; `SpiffeWorkloadAPI` service).
pub mod workload {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("_");
}

/// Envoy xDS v3 messages and the Secret Discovery Service. Nested like the proto
/// packages because the generated code refers across them with `super::` paths.
pub mod envoy {
    #![allow(clippy::all, missing_docs)]
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        pub mod secret {
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
}

/// `google.rpc.Status` for xDS error details.
pub mod google {
    pub mod rpc {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("google.rpc");
    }
}

/// The `type_url` of an Envoy TLS `Secret` inside `google.protobuf.Any`.
pub const ENVOY_SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
