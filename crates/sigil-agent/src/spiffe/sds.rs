//! Envoy Secret Discovery Service (SDS v3, state of the world) on the
//! Workload API socket. Secret names: `default` (the workload's first
//! X.509-SVID), a SPIFFE ID or workload identity name (that SVID), and
//! `ROOTCA` or the trust domain's SPIFFE ID (the bundle, with the CRL while
//! revocations exist); a federated trust domain's SPIFFE ID (that domain's
//! bundle) and `ALL` (this domain's and every federated bundle, for mTLS
//! with peers of federated domains). Responses are pushed again on every rotation, bundle
//! or CRL change. Envoy sends no `workload.spiffe.io` header, so SDS calls are
//! attested without it.

use prost::Message;
use sigil_proto::ENVOY_SECRET_TYPE_URL;
use sigil_proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use sigil_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::api::{WorkloadApi, trust_ready};
use super::follow::RespStream;
use super::runtime::{EntryKind, EntryState, Issued, TrustView};

/// Names that select the trust bundle.
const ROOT_CA: &str = "ROOTCA";
const DEFAULT: &str = "default";

/// SDS over the Workload API's attestation and SVID cache.
#[derive(Clone)]
pub struct SdsService {
    api: WorkloadApi,
}

impl SdsService {
    pub fn new(api: WorkloadApi) -> Self {
        SdsService { api }
    }
}

/// Names the trust bundle and every federated one together.
const ALL_BUNDLES: &str = "ALL";

fn pem_source(label: &str, ders: &[&[u8]]) -> DataSource {
    let text: String = ders.iter().map(|d| super::pem_lf(label, d)).collect();
    DataSource {
        specifier: Some(Specifier::InlineBytes(text.into_bytes())),
    }
}

/// The secrets for `names` (all known ones when empty). Unknown names are left
/// out: Envoy keeps waiting for them rather than using something else.
pub fn secrets(names: &[String], issued: &Issued, view: &TrustView) -> Result<Vec<Secret>, Status> {
    if let Some(msg) = &view.locked {
        return Err(Status::permission_denied(msg.clone()));
    }
    let usable: Vec<_> = issued
        .x509
        .iter()
        .filter(|s| !view.locked_ids.contains(&s.spiffe_id))
        .collect();
    if usable.is_empty() {
        return Err(Status::permission_denied("no X.509-SVID for this workload"));
    }
    let td_id = view.trust_domain_id();
    let wanted: Vec<String> = if names.is_empty() {
        let mut all = vec![DEFAULT.to_string(), ROOT_CA.to_string()];
        all.extend(usable.iter().map(|s| s.spiffe_id.clone()));
        all
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for name in wanted {
        let kind = if name == ROOT_CA || name == td_id {
            let ders: Vec<&[u8]> = view.authorities.iter().map(|a| a.as_slice()).collect();
            let crls: Vec<&[u8]> = view.crls.iter().map(|c| c.as_slice()).collect();
            let crl = (!crls.is_empty()).then(|| pem_source("X509 CRL", &crls));
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(pem_source("CERTIFICATE", &ders)),
                crl,
            })
        } else if let Some(f) = name
            .strip_prefix("spiffe://")
            .and_then(|td| view.federated.get(td))
        {
            // A federated domain's bundle, by its trust domain ID (as SPIRE names them).
            let ders: Vec<&[u8]> = f.authorities.iter().map(|a| a.as_slice()).collect();
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(pem_source("CERTIFICATE", &ders)),
                crl: None,
            })
        } else if name == ALL_BUNDLES {
            // This domain's bundle and every federated one (SPIRE's `ALL`).
            let ders: Vec<&[u8]> = view
                .authorities
                .iter()
                .chain(view.federated.values().flat_map(|f| f.authorities.iter()))
                .map(|a| a.as_slice())
                .collect();
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(pem_source("CERTIFICATE", &ders)),
                crl: None,
            })
        } else {
            let svid = if name == DEFAULT {
                usable.first().copied()
            } else {
                usable
                    .iter()
                    .find(|s| s.spiffe_id == name || s.name == name)
                    .copied()
            };
            let Some(svid) = svid else { continue };
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(pem_source(
                    "CERTIFICATE",
                    &svid.chain().collect::<Vec<_>>(),
                )),
                private_key: Some(pem_source("PRIVATE KEY", &[&svid.key_pkcs8_der])),
            })
        };
        out.push(Secret {
            name,
            r#type: Some(kind),
        });
    }
    Ok(out)
}

fn response(secrets: Vec<Secret>, version: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources: secrets
            .into_iter()
            .map(|s| prost_types::Any {
                type_url: ENVOY_SECRET_TYPE_URL.to_string(),
                value: s.encode_to_vec(),
            })
            .collect(),
        canary: false,
        type_url: ENVOY_SECRET_TYPE_URL.to_string(),
        nonce: version.to_string(),
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = RespStream<DeltaDiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental SDS is not served; configure Envoy's sds_config with api_type: GRPC (StreamSecrets)",
        ))
    }

    type StreamSecretsStream = RespStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (entry, _) = self.api.attested_svids(&req, EntryKind::X509).await?;
        let rt = self.api.rt.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut names: Option<Vec<String>> = None;
            let mut last: Option<Vec<Secret>> = None;
            let mut version: u64 = 0;
            let mut state = entry.subscribe();
            let mut trust = rt.subscribe_trust();
            loop {
                // Wait for the first request before answering anything.
                if let Some(names) = &names {
                    let view = rt.trust();
                    let built = match state.borrow().clone() {
                        EntryState::Ready(i) => secrets(names, &i, &view),
                        EntryState::Denied(msg, _) => Err(Status::permission_denied(msg)),
                        EntryState::Empty => Ok(last.clone().unwrap_or_default()),
                    };
                    match built {
                        Ok(s) if last.as_ref() == Some(&s) => {}
                        Ok(s) => {
                            version += 1;
                            last = Some(s.clone());
                            if tx.send(Ok(response(s, version))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => {
                            if let Some(err) = &r.error_detail {
                                tracing::warn!(nonce = %r.response_nonce, error = %err.message, "Envoy rejected an SDS response");
                            }
                            if names.as_ref() != Some(&r.resource_names) {
                                names = Some(r.resource_names);
                                last = None; // a new subscription gets a full answer
                            }
                        }
                        _ => return,
                    },
                    r = state.changed() => if r.is_err() { return },
                    r = trust.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let (_, issued) = self.api.attested_svids(&req, EntryKind::X509).await?;
        let view = trust_ready(&self.api.rt).await;
        let s = secrets(&req.get_ref().resource_names, &issued, &view)?;
        Ok(Response::new(response(s, view.sequence)))
    }
}
