//! Join method `tpm`: prove this machine's TPM endorsement key (EK) by
//! activating the server's credential (TPM 2.0 Part 1 §24). The EK is the
//! RSA-2048 key of the TCG default template, recreated in the endorsement
//! hierarchy each time (it is deterministic); an attestation key (AK) is
//! created under it for each join. Wire formats: see the server's
//! `sigil-auth/src/join/tpm.rs`.
//!
//! tss-esapi contexts are not `Send`: each TPM session opens its own context
//! inside `spawn_blocking` and flushes every object it loaded, as a simulator
//! reached without a resource manager keeps them otherwise.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sigil_proto::v1::JoinInit;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{EncryptedSecret, IdObject, Private, Public, SymmetricDefinition};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

use super::{JoinProver, ProverContext};
use crate::config::{DEFAULT_TPM_DEVICE, Onboarding};

pub struct TpmProver {
    token: String,
    /// TCTI configuration string, e.g. `device:/dev/tpmrm0`.
    tcti: String,
    /// The AK of the join in progress, loaded again to answer the challenge.
    ak: Mutex<Option<AkBlob>>,
}

/// An attestation key outside the TPM: its TPM-wrapped private part and its
/// marshalled `TPMT_PUBLIC`.
struct AkBlob {
    private: Vec<u8>,
    public: Vec<u8>,
}

impl TpmProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        let token = o.token()?.filter(|t| !t.is_empty()).context(
            "join method tpm needs onboarding.token (or --token): the name of a tpm join token",
        )?;
        let section = o.tpm.clone().unwrap_or_default();
        let tcti = match (section.tcti, section.device) {
            (Some(tcti), _) => tcti,
            (None, device) => format!(
                "device:{}",
                device
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TPM_DEVICE))
                    .display()
            ),
        };
        TctiNameConf::from_str(&tcti).with_context(|| {
            format!("onboarding.tpm.tcti {tcti:?} is not a TCTI string like device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")
        })?;
        Ok(TpmProver {
            token,
            tcti,
            ak: Mutex::new(None),
        })
    }

    fn open(tcti: &str) -> anyhow::Result<Context> {
        let conf = TctiNameConf::from_str(tcti)
            .with_context(|| format!("bad TCTI string {tcti:?} (onboarding.tpm)"))?;
        Context::new(conf).with_context(|| {
            format!("cannot open the TPM via {tcti:?}: check onboarding.tpm.device / onboarding.tpm.tcti and that this user may use it (tss group)")
        })
    }
}

fn rsa2048() -> AsymmetricAlgorithmSelection {
    AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048)
}

/// Flush a transient object or session; failures only leak a slot until
/// the TPM resets, so they are logged, not fatal.
fn flush(ctx: &mut Context, handle: ObjectHandle) {
    if let Err(e) = ctx.flush_context(handle) {
        tracing::debug!("flushing a TPM handle failed: {e}");
    }
}

/// The EK as the server expects it, in the evidence, plus the AK blob.
fn gather(tcti: &str) -> anyhow::Result<(serde_json::Value, AkBlob)> {
    let mut ctx = TpmProver::open(tcti)?;
    let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, DefaultKey)
        .context("creating the endorsement key in the TPM failed")?;
    let out = gather_with_ek(&mut ctx, ek);
    flush(&mut ctx, ek.into());
    out
}

fn gather_with_ek(ctx: &mut Context, ek: KeyHandle) -> anyhow::Result<(serde_json::Value, AkBlob)> {
    let (ek_public, _, _) = ctx.read_public(ek).context("reading the EK failed")?;
    let ek_spki = match &ek_public {
        Public::Rsa {
            parameters, unique, ..
        } => {
            let exponent = match parameters.exponent().value() {
                0 => 65537u32,
                e => e,
            };
            sigil_pki::rsa_spki_der(unique.value(), &exponent.to_be_bytes())
        }
        _ => anyhow::bail!("the TPM returned a non-RSA endorsement key"),
    };
    let ek_certificate = match ek::retrieve_ek_pubcert(ctx, rsa2048()) {
        Ok(der) => Some(B64.encode(der)),
        Err(e) => {
            tracing::info!(
                "no RSA EK certificate in the TPM's NV storage ({e}); joining without one"
            );
            None
        }
    };
    let created = ak::create_ak(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::RsaSsa,
        None,
        DefaultKey,
    )
    .context("creating the attestation key failed")?;
    let ak_public = created
        .out_public
        .marshall()
        .context("encoding the AK public area failed")?;
    let ak_private = created.out_private.value().to_vec();
    let handle = ak::load_ak(ctx, ek, None, created.out_private, created.out_public)
        .context("loading the attestation key failed")?;
    let name = ctx.read_public(handle).map(|(_, name, _)| name);
    flush(ctx, handle.into());
    let name = name.context("reading the AK name failed")?;
    let evidence = serde_json::json!({
        "ek_public": B64.encode(ek_spki),
        "ek_certificate": ek_certificate,
        "ak_public": B64.encode(&ak_public),
        "ak_name": B64.encode(name.value()),
    });
    Ok((
        evidence,
        AkBlob {
            private: ak_private,
            public: ak_public,
        },
    ))
}

/// TPM2_ActivateCredential with the EK (policy: PolicySecret on the
/// endorsement hierarchy, empty endorsement auth) and the AK (empty password).
fn activate(
    tcti: &str,
    ak_blob: &AkBlob,
    credential_blob: Vec<u8>,
    encrypted_secret: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let private = Private::try_from(ak_blob.private.clone()).context("stored AK private part")?;
    let public = Public::unmarshall(&ak_blob.public).context("stored AK public part")?;
    let id_object = IdObject::try_from(credential_blob).context("credential_blob is too large")?;
    let secret =
        EncryptedSecret::try_from(encrypted_secret).context("encrypted_secret is too large")?;
    let mut ctx = TpmProver::open(tcti)?;
    let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, DefaultKey)
        .context("creating the endorsement key in the TPM failed")?;
    let out = ak::load_ak(&mut ctx, ek, None, private, public)
        .context("loading the attestation key failed")
        .and_then(|ak| {
            let out = activate_loaded(&mut ctx, ek, ak, id_object, secret);
            flush(&mut ctx, ak.into());
            out
        });
    flush(&mut ctx, ek.into());
    out
}

fn activate_loaded(
    ctx: &mut Context,
    ek: KeyHandle,
    ak: KeyHandle,
    id_object: IdObject,
    secret: EncryptedSecret,
) -> anyhow::Result<Vec<u8>> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .context("starting a TPM policy session failed")?
        .context("the TPM returned no policy session")?;
    let out = (|| {
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        ctx.tr_sess_set_attributes(session, attrs, mask)?;
        let policy = PolicySession::try_from(session)?;
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })?;
        ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
            c.activate_credential(ak, ek, id_object, secret)
        })
    })()
    .context("TPM credential activation failed (the challenge is not for this TPM's EK and AK)");
    flush(ctx, SessionHandle::from(session).into());
    Ok(out?.value().to_vec())
}

#[derive(serde::Deserialize)]
struct Challenge {
    credential_blob: String,
    encrypted_secret: String,
}

#[async_trait::async_trait]
impl JoinProver for TpmProver {
    async fn init(&self, _ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        let tcti = self.tcti.clone();
        let (evidence, ak) = tokio::task::spawn_blocking(move || gather(&tcti)).await??;
        *self
            .ak
            .lock()
            .map_err(|_| anyhow::anyhow!("TPM state poisoned"))? = Some(ak);
        init.token = self.token.clone();
        init.evidence = serde_json::to_vec(&evidence)?;
        Ok(())
    }

    async fn answer(&self, _ctx: &ProverContext, challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
        let challenge: Challenge =
            serde_json::from_slice(challenge).context("malformed TPM challenge from the server")?;
        let credential_blob = B64
            .decode(&challenge.credential_blob)
            .context("malformed TPM challenge from the server")?;
        let encrypted_secret = B64
            .decode(&challenge.encrypted_secret)
            .context("malformed TPM challenge from the server")?;
        let ak = self
            .ak
            .lock()
            .map_err(|_| anyhow::anyhow!("TPM state poisoned"))?
            .take()
            .context("TPM challenge without a join in progress")?;
        let tcti = self.tcti.clone();
        tokio::task::spawn_blocking(move || activate(&tcti, &ak, credential_blob, encrypted_secret))
            .await?
    }
}
