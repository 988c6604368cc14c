//! Join method `tpm`: the agent proves it holds a TPM with an allowed
//! endorsement key (EK) by activating a credential the server made for it
//! (TPM 2.0 Part 1 §24). The server needs no TPM: `tpm_credential` does
//! MakeCredential in software.
//!
//! Evidence (`JoinInit.evidence`), JSON with standard base64 fields:
//! - `ek_public`: the EK's SubjectPublicKeyInfo DER (RSA only);
//! - `ek_certificate` (optional): the EK certificate DER from the TPM's NV;
//! - `ak_public`: the attestation key's marshalled `TPMT_PUBLIC` (no size prefix);
//! - `ak_name`: the AK's Name as the TPM reported it (0x000B || SHA-256).
//!
//! Challenge, JSON: `credential_blob` and `encrypted_secret`, base64 of the
//! contents (no u16 size prefix) of the TPM2B_ID_OBJECT and
//! TPM2B_ENCRYPTED_SECRET that `TPM2_ActivateCredential` takes. The answer is
//! the raw 32-byte secret the TPM recovers; a fresh one per join, so an
//! answer replayed from another join fails.
//!
//! Attributes: `ek_public_hash` (SHA-256 hex of the EK SubjectPublicKeyInfo
//! in its canonical DER: rsaEncryption with NULL parameters) and, with a
//! certificate verified against `ekcert_allowed_cas` (without CAs nothing
//! vouches for it), `ek_certificate_serial` (lowercase hex of the serial's
//! bytes, leading zero bytes dropped, at least one byte: serial 2 is "02").
//!
//! With `ekcert_allowed_cas`, the EK certificate must be present, within its
//! validity and signed directly by one of those CAs (list the CA that issues
//! the EK certificates, e.g. the TPM vendor's intermediate; no intermediates
//! are taken from the agent). TPM vendors, and swtpm's local CA, issue EK
//! certificates valid until 9999-12-31 (RFC 5280's "no expiry"), which parses
//! and checks as an ordinary date.

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sigil_proto::v1::JoinInit;
use sigil_types::{JoinAttributes, JoinMethodKind, TpmJoin};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::tpm_credential::{attestation_key_name, make_credential};
use super::{Conversation, JoinDenied, JoinMethod, Verified, check_rules, delegated, load_token};
use crate::state::AuthState;
use sigil_pki::rsa_spki_der;

/// Evidence larger than this is refused before decoding (an EK certificate
/// is 1-2 KiB).
const MAX_EVIDENCE: usize = 64 * 1024;
const SECRET_LEN: usize = 32;

pub struct TpmJoinMethod;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Evidence {
    ek_public: String,
    #[serde(default)]
    ek_certificate: Option<String>,
    ak_public: String,
    ak_name: String,
}

#[derive(serde::Serialize)]
struct Challenge {
    credential_blob: String,
    encrypted_secret: String,
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, JoinDenied> {
    B64.decode(value)
        .map_err(|_| JoinDenied::new(format!("tpm evidence field {field} is not base64")))
}

#[async_trait]
impl JoinMethod for TpmJoinMethod {
    fn name(&self) -> &'static str {
        "tpm"
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::Tpm).await?;
        let section = token
            .spec
            .tpm
            .as_ref()
            .ok_or_else(|| JoinDenied::new("token has no tpm section"))?;
        if init.evidence.len() > MAX_EVIDENCE {
            return Err(JoinDenied::new("tpm evidence is too large"));
        }
        let evidence: Evidence = serde_json::from_slice(&init.evidence)
            .map_err(|e| JoinDenied::new(format!("tpm evidence is malformed: {e}")))?;
        let ek_spki = canonical_ek(&b64("ek_public", &evidence.ek_public)?)?;
        let mut attrs = JoinAttributes::new();
        attrs.insert("ek_public_hash".into(), sha256_hex(&ek_spki));
        let cert = evidence
            .ek_certificate
            .as_deref()
            .map(|c| b64("ek_certificate", c))
            .transpose()?;
        let shown = |attrs: &JoinAttributes| serde_json::json!({ "token": token.metadata.name, "claims": attrs });
        let serial = check_ek_certificate(section, cert.as_deref(), &ek_spki)
            .map_err(|d| d.with_audit(shown(&attrs)))?;
        if let Some(serial) = serial {
            attrs.insert("ek_certificate_serial".into(), serial);
        }
        // Rules first: an EK that is not allowed gets no challenge.
        let audit = check_rules(&token, &attrs)?;

        let ak_public = b64("ak_public", &evidence.ak_public)?;
        let ak_name = attestation_key_name(&ak_public)
            .map_err(|e| JoinDenied::new(e).with_audit(audit.clone()))?;
        if ak_name != b64("ak_name", &evidence.ak_name)? {
            return Err(
                JoinDenied::new("AK name does not match its public area").with_audit(audit.clone())
            );
        }

        let mut secret = [0u8; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut secret)
            .map_err(|_| JoinDenied::unavailable("no randomness for the TPM challenge"))?;
        let credential = make_credential(&ek_spki, &ak_name, &secret)
            .map_err(|e| JoinDenied::new(e).with_audit(audit.clone()))?;
        let challenge = serde_json::to_vec(&Challenge {
            credential_blob: B64.encode(&credential.credential_blob),
            encrypted_secret: B64.encode(&credential.encrypted_secret),
        })
        .map_err(|e| JoinDenied::new(format!("challenge encoding failed: {e}")))?;
        let answer = conv.challenge(challenge).await?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&answer, &secret).is_err() {
            return Err(
                JoinDenied::new("TPM credential activation answer is wrong").with_audit(audit)
            );
        }
        Ok(delegated(&token, attrs, audit))
    }
}

/// The EK's SubjectPublicKeyInfo re-encoded canonically (so one key has one
/// hash whatever DER variant the agent sent). RSA only: MakeCredential here
/// implements the RSA (OAEP) seed encryption.
fn canonical_ek(spki_der: &[u8]) -> Result<Vec<u8>, JoinDenied> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| JoinDenied::new("EK public key is not a SubjectPublicKeyInfo"))?;
    if !rest.is_empty() {
        return Err(JoinDenied::new("EK public key has trailing data"));
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => Ok(rsa_spki_der(rsa.modulus, rsa.exponent)),
        _ => Err(JoinDenied::new(
            "EK is not an RSA key (only RSA EKs are supported)",
        )),
    }
}

/// Check the EK certificate against the EK and the token's CAs; its serial.
fn check_ek_certificate(
    section: &TpmJoin,
    cert_der: Option<&[u8]>,
    ek_spki: &[u8],
) -> Result<Option<String>, JoinDenied> {
    let Some(cert_der) = cert_der else {
        if section.ekcert_allowed_cas.is_empty() {
            return Ok(None);
        }
        return Err(JoinDenied::new(
            "token requires an EK certificate (ekcert_allowed_cas) and the TPM presented none",
        ));
    };
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| JoinDenied::new(format!("EK certificate does not parse: {e}")))?;
    let cert_key = canonical_ek(cert.public_key().raw)
        .map_err(|_| JoinDenied::new("EK certificate does not certify an RSA key"))?;
    if cert_key != ek_spki {
        return Err(JoinDenied::new(
            "EK certificate is for a different key than the EK",
        ));
    }
    let serial = serial_hex(cert.raw_serial());
    if section.ekcert_allowed_cas.is_empty() {
        // Nothing vouches for a certificate the agent brought along: its
        // serial is not a verified claim (anyone can self-sign any serial).
        return Ok(None);
    }
    if !cert.validity().is_valid() {
        return Err(JoinDenied::new(format!(
            "EK certificate {serial} is outside its validity"
        )));
    }
    for ca_pem in &section.ekcert_allowed_cas {
        for ca_der in pem_certificates(ca_pem) {
            let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else {
                continue;
            };
            if ca.subject() == cert.issuer()
                && ca.validity().is_valid()
                && cert.verify_signature(Some(ca.public_key())).is_ok()
            {
                return Ok(Some(serial));
            }
        }
    }
    Err(JoinDenied::new(format!(
        "EK certificate {serial} (issuer {}) is not signed by any of the token's ekcert_allowed_cas",
        cert.issuer()
    )))
}

fn pem_certificates(pem_text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_drops_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x9a, 0x01]), "9a01");
        assert_eq!(serial_hex(&[0x02]), "02");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn certificate_is_required_when_cas_are_set() {
        let section = TpmJoin {
            allow: vec![],
            ekcert_allowed_cas: vec!["-----BEGIN CERTIFICATE-----".into()],
        };
        assert!(check_ek_certificate(&section, None, b"ek").is_err());
        assert_eq!(
            check_ek_certificate(&TpmJoin::default(), None, b"ek").unwrap(),
            None
        );
        assert!(check_ek_certificate(&section, Some(b"not a cert"), b"ek").is_err());
    }

    /// An RSA "EK" and a certificate for it from a fresh CA: (EK SPKI, cert DER, CA PEM).
    fn ek_with_certificate(serial: u64) -> (Vec<u8>, Vec<u8>, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test EK CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let ek = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = leaf.signed_by(&ek, &issuer).unwrap();
        (
            canonical_ek(&rcgen::PublicKeyData::subject_public_key_info(&ek)).unwrap(),
            cert.der().to_vec(),
            ca_cert.pem(),
        )
    }

    #[test]
    fn ek_certificate_must_certify_the_ek_and_chain_to_an_allowed_ca() {
        let (ek, cert, ca) = ek_with_certificate(0x9a01);
        let (other_ek, _, other_ca) = ek_with_certificate(7);
        let allow = |cas: Vec<String>| TpmJoin {
            allow: vec![],
            ekcert_allowed_cas: cas,
        };
        // Without CAs to check, a certificate the agent brought proves
        // nothing: its serial is not recorded (anyone can self-sign one).
        let got = check_ek_certificate(&allow(vec![]), Some(&cert), &ek).unwrap();
        assert_eq!(got, None);
        let got = check_ek_certificate(&allow(vec![other_ca.clone(), ca]), Some(&cert), &ek);
        assert_eq!(got.unwrap().as_deref(), Some("9a01"));
        // Another CA, or a certificate for another key, is refused.
        let err = check_ek_certificate(&allow(vec![other_ca]), Some(&cert), &ek).unwrap_err();
        assert!(err.reason.contains("ekcert_allowed_cas"), "{}", err.reason);
        let err = check_ek_certificate(&allow(vec![]), Some(&cert), &other_ek).unwrap_err();
        assert!(err.reason.contains("different key"), "{}", err.reason);
    }

    #[test]
    fn non_rsa_ek_is_refused() {
        let key = rcgen_free_ec_spki();
        assert!(canonical_ek(&key).is_err());
        assert!(canonical_ek(b"junk").is_err());
    }

    fn rcgen_free_ec_spki() -> Vec<u8> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        aws_lc_rs::encoding::AsDer::as_der(key.public_key())
            .unwrap()
            .as_ref()
            .to_vec()
    }
}
