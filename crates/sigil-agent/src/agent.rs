//! The agent itself: joining, renewing and writing outputs for one configured
//! identity (`run` in lib.rs drives it and the tasks around it).

use anyhow::Context;
use sigil_pki::TlsKeyPair;
use sigil_proto::v1::auth_service_client::AuthServiceClient;
use sigil_proto::v1::join_client_message::Message as ClientMsg;
use sigil_proto::v1::join_server_message::Message as ServerMsg;
use sigil_proto::v1::{
    Credentials, Heartbeat, JoinChallengeResponse, JoinClientMessage, JoinInit, PingRequest,
    RenewRequest,
};
use time::OffsetDateTime;

use crate::config::AgentConfig;
use crate::error::join_status;
use crate::output::{self, Output, OutputContext};
use crate::storage::{Storage, StoredCredential};
use crate::witness::{self, Witness};
use crate::{JoinDeniedError, client, join, rfc3339, status_error};

pub(crate) struct Agent {
    pub(crate) cfg: AgentConfig,
    /// The auth servers and which one is in use, shared by every channel.
    pub(crate) servers: client::Servers,
    pub(crate) storage: Storage,
    /// The audit log witness (witness.rs).
    pub(crate) witness: Witness,
    pub(crate) outputs: Vec<Box<dyn Output>>,
    pub(crate) started: std::time::Instant,
    pub(crate) oneshot: bool,
    /// A first join's key (PKCS#8 PEM), the same for every attempt of this run, so
    /// a retry on another server after a lost answer presents the same key (and
    /// persisted before sending, for a restart: storage.rs).
    pub(crate) join_key: std::sync::Mutex<Option<String>>,
}

impl Agent {
    /// The key of a first join: a persisted pending key if there is one (and
    /// `false`), else one kept in memory for this run and not persisted yet
    /// (`true`; `join` persists it before sending, and forgets it if refused).
    fn first_join_key(&self) -> anyhow::Result<(TlsKeyPair, bool)> {
        if let Some(k) = self.storage.pending_key()? {
            return Ok((k, false));
        }
        let mut slot = self.join_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pem) = slot.as_ref() {
            return Ok((TlsKeyPair::from_pkcs8_pem(pem)?, true));
        }
        let k = TlsKeyPair::generate()?;
        *slot = Some(k.to_pkcs8_pem());
        Ok((k, true))
    }

    /// One round: join or renew, then refresh every output.
    /// `renewed` sees the new credential as soon as it is saved, before the
    /// outputs are written: tasks that talk to the auth service must switch
    /// to it then, or an output failing (a server dying mid-cycle) leaves
    /// them presenting a superseded credential, which the server refuses.
    pub(crate) async fn cycle(
        &self,
        renewed: impl FnOnce(&StoredCredential) -> anyhow::Result<()>,
    ) -> anyhow::Result<StoredCredential> {
        // A server that failed the call is marked down (client/failover.rs):
        // try the others at once. Repeating is safe: a renewal's next key is
        // persisted first, so the other server sees a retry (storage.rs).
        let mut tries = self.servers.addrs().len();
        let cred = loop {
            tries -= 1;
            match self.obtain().await {
                Err(e)
                    if tries > 0
                        && client::server_failed(&e)
                        && self.servers.another_ready(None) =>
                {
                    tracing::warn!(error = %format!("{e:#}"), "trying the next auth server");
                }
                r => break r?,
            }
        };
        renewed(&cred)?;
        if !self.outputs.is_empty() {
            let client = self.client(&cred)?;
            for o in &self.outputs {
                o.generate(OutputContext {
                    client: client.clone(),
                    credential: &cred,
                    auth_servers: &self.cfg.auth_servers,
                    ttl: self.cfg.credential_ttl,
                })
                .await
                .with_context(|| format!("output {}", o.describe()))?;
                output::reload::run(o.reload_command()).await;
            }
        }
        Ok(cred)
    }

    /// Join or renew, as the stored credential allows.
    async fn obtain(&self) -> anyhow::Result<StoredCredential> {
        let now = OffsetDateTime::now_utc();
        let cred = match self.storage.load()? {
            Some(c) if c.expires > now && c.renewable => self.renew(&c).await?,
            // A delegated method re-proves, keeping its bot instance.
            Some(c) if c.expires > now => self.join(Some(&c)).await?,
            Some(c) => {
                if self.cfg.onboarding.token()?.is_none() {
                    anyhow::bail!(
                        "the stored credential expired at {}; create a new token (`sigil tokens add --bot {}`) and configure it",
                        rfc3339(c.expires),
                        c.bot
                    );
                }
                tracing::warn!(
                    "stored credential expired; joining again with the configured token"
                );
                self.join(None).await?
            }
            None => self.join(None).await?,
        };
        Ok(cred)
    }

    pub(crate) fn client(
        &self,
        cred: &StoredCredential,
    ) -> anyhow::Result<AuthServiceClient<client::AuthChannel>> {
        Ok(AuthServiceClient::new(self.channel(cred)?))
    }

    fn channel(&self, cred: &StoredCredential) -> anyhow::Result<client::AuthChannel> {
        let tls = client::tls_config(
            &self.pins(Some(cred)),
            Some(client::ClientCert {
                cert_pem: &cred.cert_pem,
                key_pem: &cred.key_pem,
            }),
        )?;
        Ok(client::failover_channel(&self.servers, tls))
    }

    /// The configured pins plus the CAs of the last credentials: during a host CA
    /// rotation both host CAs, so the auth service may serve with either. (The
    /// client CAs in the bundle never sign server certificates, which the pinned
    /// verifier requires; the CLI's identity file pins the same set.)
    fn pins(&self, cred: Option<&StoredCredential>) -> Vec<String> {
        let mut pins = self.cfg.ca_pins.clone();
        if let Some(c) = cred
            && let Ok(ders) = sigil_pki::pem_to_ders(&c.ca_certs_pem, "CERTIFICATE")
        {
            for d in ders {
                if let Ok(p) = sigil_pki::spki_pin_of_cert(&d)
                    && !pins.contains(&p)
                {
                    pins.push(p);
                }
            }
        }
        pins
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            hostname: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            uptime_seconds: self.started.elapsed().as_secs(),
            one_shot: self.oneshot,
        }
    }

    /// Join: a new bot instance, or with `cur` (a delegated method's current
    /// credential) a re-proof that keeps the instance.
    async fn join(&self, cur: Option<&StoredCredential>) -> anyhow::Result<StoredCredential> {
        let prover = join::prover(&self.cfg.onboarding)?;
        // The same key on every attempt: if the answer is lost (the server died
        // after committing), the retry on another server presents it again, which
        // the server recognises (a re-proof: the persisted next key, storage.rs; a
        // spent token: the auth service's join/retry.rs).
        let (key, fresh) = match cur {
            Some(c) => (self.storage.next_key_after(c)?, false),
            None => self.first_join_key()?,
        };
        // What a refused first join removes again: the directories it creates.
        let created_top = if fresh {
            self.storage.first_missing_ancestor()
        } else {
            None
        };
        // A re-proof presents the instance's current certificate.
        let channel = match cur {
            Some(c) => self.channel(c)?,
            None => client::failover_channel(
                &self.servers,
                client::tls_config(&self.cfg.ca_pins, None)?,
            ),
        };
        let mut client = AuthServiceClient::new(channel.clone());
        // The pinned auth service names the cluster: the audience the OIDC
        // methods ask their platform for.
        // A server whose audit log went backwards is not joined either.
        let cluster = self
            .witnessed_ping(&mut client, &channel, None)
            .await?
            .cluster_name;
        let ctx = join::ProverContext {
            storage: self.cfg.storage.clone(),
            cluster,
        };
        let mut init = JoinInit {
            join_method: self.cfg.onboarding.join_method.clone(),
            public_key_spki: key.spki_der(),
            ttl_seconds: self.cfg.credential_ttl.as_secs(),
            heartbeat: Some(self.heartbeat()),
            instance_id: cur.map(|c| c.instance_id.clone()).unwrap_or_default(),
            ..Default::default()
        };
        prover
            .init(&ctx, &mut init)
            .await
            .with_context(|| format!("join method {}", init.join_method))?;
        // Persisted before sending: the server may commit this join and the
        // answer be lost (or this process killed); a restart retries with it.
        if fresh {
            self.storage.keep_pending_key(&key)?;
        }
        fault_point!(JoinBeforeSend);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(JoinClientMessage {
            message: Some(ClientMsg::Init(init)),
        })
        .await?;
        let answer = async {
            let mut inbound = client
                .join(tokio_stream_rx(rx))
                .await
                .map_err(join_status)?
                .into_inner();
            loop {
                #[cfg(feature = "fault-injection")]
                crate::fault::lose_answer(crate::fault::Point::JoinAfterSend, inbound.message())
                    .await;
                let msg = inbound.message().await.map_err(join_status)?;
                match msg.and_then(|m| m.message) {
                    Some(ServerMsg::Challenge(c)) => {
                        let payload = prover.answer(&ctx, &c.payload).await?;
                        tx.send(JoinClientMessage {
                            message: Some(ClientMsg::ChallengeResponse(JoinChallengeResponse {
                                payload,
                            })),
                        })
                        .await?;
                    }
                    Some(ServerMsg::Result(creds)) => {
                        fault_point!(JoinAfterAnswer);
                        refusing(
                            &channel,
                            self.witness.observe(
                                &creds.cluster_name,
                                &creds.audit_public_key,
                                creds.audit_checkpoint.as_ref(),
                            ),
                        )?;
                        prover.joined(&ctx, &creds)?;
                        fault_point!(JoinAfterMethodState);
                        let cred = stored(creds, &key)?;
                        self.storage.save(&cred)?;
                        fault_point!(JoinAfterCredential);
                        return Ok(cred);
                    }
                    None => {
                        anyhow::bail!("the auth service closed the join stream without a result")
                    }
                }
            }
        }
        .await;
        match answer {
            Err(e) => {
                // This join's own key, refused: nothing was committed for it, so
                // nothing is left behind. (A key persisted by an earlier attempt
                // stays: that attempt may have been committed, and a join refused
                // now, e.g. while a lock holds, may be retried later.)
                if fresh
                    && e.downcast_ref::<JoinDeniedError>().is_some()
                    && let Err(k) = self.storage.forget_refused_key(created_top.as_deref())
                {
                    tracing::warn!(error = %format!("{k:#}"), "could not remove the refused join's key");
                }
                Err(e)
            }
            Ok(cred) => {
                self.storage.clear_next_key()?;
                *self.join_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if cur.is_some() {
                    tracing::info!(bot = %cred.bot, instance = %cred.instance_id, generation = cred.generation, "re-proved");
                } else {
                    tracing::info!(bot = %cred.bot, instance = %cred.instance_id, "joined");
                }
                Ok(cred)
            }
        }
    }

    /// Ping the auth service and check its audit checkpoint as a witness
    /// (for `cluster`, or the one the server names when joining afresh).
    async fn witnessed_ping(
        &self,
        client: &mut AuthServiceClient<client::AuthChannel>,
        channel: &client::AuthChannel,
        cluster: Option<&str>,
    ) -> anyhow::Result<sigil_proto::v1::PingResponse> {
        let ping = client
            .ping(PingRequest {})
            .await
            .map_err(status_error)
            .context("contacting the auth service")?
            .into_inner();
        refusing(
            channel,
            self.witness.precheck(
                cluster.unwrap_or(&ping.cluster_name),
                &ping.audit_public_key,
                ping.audit_checkpoint.as_ref(),
            ),
        )?;
        Ok(ping)
    }

    async fn renew(&self, cur: &StoredCredential) -> anyhow::Result<StoredCredential> {
        // Persist the next key before asking (crash safety, see storage.rs).
        let next = self.storage.next_key_after(cur)?;
        let channel = self.channel(cur)?;
        let mut client = AuthServiceClient::new(channel.clone());
        // Witness first: a server whose audit log went backwards (e.g. its database
        // was rolled back) must not be asked to renew, or it would act on old state.
        self.witnessed_ping(&mut client, &channel, Some(&cur.cluster))
            .await?;
        let req = RenewRequest {
            public_key_spki: next.spki_der(),
            ttl_seconds: self.cfg.credential_ttl.as_secs(),
            heartbeat: Some(self.heartbeat()),
        };
        fault_point!(RenewBeforeSend);
        #[cfg(feature = "fault-injection")]
        crate::fault::lose_answer(
            crate::fault::Point::RenewAfterSend,
            client.clone().renew(req.clone()),
        )
        .await;
        let creds = client
            .renew(req)
            .await
            .map_err(status_error)
            .context("renewing the agent's identity")?
            .into_inner();
        fault_point!(RenewAfterAnswer);
        // Refused: the next key stays persisted, so the next attempt is a retry the
        // server recognises (renewal.rs), not a generation mismatch.
        refusing(
            &channel,
            self.witness.observe(
                &creds.cluster_name,
                &creds.audit_public_key,
                creds.audit_checkpoint.as_ref(),
            ),
        )?;
        let cred = stored(creds, &next)?;
        self.storage.save(&cred)?;
        fault_point!(RenewAfterCredential);
        self.storage.clear_next_key()?;
        Ok(cred)
    }
}

/// A witness refusal also marks the server it came from down, so the next
/// attempt (client::server_failed) goes to another server.
fn refusing(channel: &client::AuthChannel, r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = &r
        && let Some(w) = e.downcast_ref::<witness::WitnessRefusal>()
    {
        channel.refuse_server(&format!("failed the audit log witness check: {}", w.0));
    }
    r
}

fn tokio_stream_rx(
    rx: tokio::sync::mpsc::Receiver<JoinClientMessage>,
) -> impl tokio_stream::Stream<Item = JoinClientMessage> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn stored(c: Credentials, key: &TlsKeyPair) -> anyhow::Result<StoredCredential> {
    Ok(StoredCredential {
        cluster: c.cluster_name,
        bot: c.bot_name,
        instance_id: c.instance_id,
        generation: c.generation,
        roles: c.roles,
        cert_pem: c.tls_cert_pem,
        key_pem: key.to_pkcs8_pem(),
        ca_certs_pem: c.ca_certs_pem,
        expires: OffsetDateTime::from_unix_timestamp(c.expires_unix)?,
        renewable: c.renewable,
    })
}

/// The SPKI pin of the CA that signed `cert_pem` ("" if it cannot be read).
pub(crate) fn issuer_pin(cert_pem: &str) -> String {
    sigil_pki::pem_to_ders(cert_pem, "CERTIFICATE")
        .ok()
        .and_then(|d| d.into_iter().next())
        .and_then(|d| sigil_pki::cert_info(&d).ok())
        .and_then(|i| i.issuer_spki_pin)
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
