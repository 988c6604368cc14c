//! TPM 2.0 credential protection in software (TPM 2.0 Part 1 §24,
//! "Credential Protection"): what `TPM2_MakeCredential` does, so the server
//! can challenge a TPM without having one. Only an RSA endorsement key with
//! the default template's SHA-256 name algorithm and AES-128-CFB symmetric
//! scheme is supported (the RSA-2048 EK of the TCG EK profile, template L-1).
//!
//! Also: the few TPM structures the server reads (the attestation key's
//! `TPMT_PUBLIC` and its Name) and the canonical DER of an RSA public key.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};

/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const SHA256_LEN: usize = 32;

// TPMA_OBJECT bits (Part 2 §8.3).
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const USER_WITH_AUTH: u32 = 1 << 6;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN: u32 = 1 << 18;

/// KDFa (Part 1 §11.4.10.2): SP 800-108 counter-mode KDF with HMAC-SHA-256.
/// `label` is given without its terminating NUL, which is added here.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let want = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(want + SHA256_LEN);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// What `TPM2_MakeCredential` returns, as the contents of the two TPM2B
/// buffers (without their u16 size prefixes): what `TPM2_ActivateCredential`
/// takes as `credentialBlob` (TPM2B_ID_OBJECT) and `secret`
/// (TPM2B_ENCRYPTED_SECRET).
#[derive(Debug)]
pub struct Credential {
    pub credential_blob: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
}

/// Protect `secret` so that only the TPM holding the EK (`ek_spki_der`, an
/// RSA SubjectPublicKeyInfo) and a loaded object named `ak_name` can recover it.
pub fn make_credential(
    ek_spki_der: &[u8],
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Credential, String> {
    let mut seed = [0u8; SHA256_LEN];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| "no randomness for the credential seed".to_string())?;
    make_credential_with_seed(ek_spki_der, ak_name, secret, &seed)
}

fn make_credential_with_seed(
    ek_spki_der: &[u8],
    ak_name: &[u8],
    secret: &[u8],
    seed: &[u8; SHA256_LEN],
) -> Result<Credential, String> {
    if secret.len() > SHA256_LEN {
        return Err("credential secret longer than a digest".into());
    }
    // The seed travels RSA-OAEP-encrypted to the EK; the label is "IDENTITY"
    // with its NUL (Part 1 §B.10.3).
    let ek = PublicEncryptingKey::from_der(ek_spki_der)
        .map_err(|e| format!("EK is not a usable RSA key: {e}"))?;
    let ek = OaepPublicEncryptingKey::new(ek).map_err(|_| "EK is not a usable RSA key")?;
    let mut encrypted_seed = vec![0u8; ek.ciphertext_size()];
    let encrypted_seed = ek
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            seed,
            &mut encrypted_seed,
            Some(b"IDENTITY\0"),
        )
        .map_err(|_| "RSA-OAEP encryption of the seed failed")?
        .to_vec();

    // encIdentity = CFB(symKey, IV 0, TPM2B_DIGEST(secret)).
    let sym_key = kdfa_sha256(seed, "STORAGE", ak_name, &[], 128);
    let mut enc_identity = tpm2b(secret);
    let key = UnboundCipherKey::new(&AES_128, &sym_key).map_err(|_| "AES key setup failed")?;
    EncryptingKey::cfb128(key)
        .and_then(|k| {
            k.less_safe_encrypt(
                &mut enc_identity,
                EncryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
        })
        .map_err(|_| "AES-CFB encryption failed")?;

    // outerHMAC = HMAC(KDFa(seed, "INTEGRITY"), encIdentity || name).
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], (SHA256_LEN * 8) as u32);
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key));
    ctx.update(&enc_identity);
    ctx.update(ak_name);
    let outer_hmac = ctx.sign();

    let mut credential_blob = tpm2b(outer_hmac.as_ref());
    credential_blob.extend_from_slice(&enc_identity);
    Ok(Credential {
        credential_blob,
        encrypted_secret: encrypted_seed,
    })
}

fn tpm2b(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + data.len());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The Name of an object from its marshalled `TPMT_PUBLIC`, after checking
/// it is an attestation key: a restricted signing key (not a decryption key)
/// created inside the TPM and bound to it and its parent, with a SHA-256 name.
pub fn attestation_key_name(tpmt_public: &[u8]) -> Result<Vec<u8>, String> {
    let field = |at: usize, len: usize| {
        tpmt_public
            .get(at..at + len)
            .ok_or_else(|| "AK public area is truncated".to_string())
    };
    let key_type = u16::from_be_bytes([field(0, 2)?[0], field(0, 2)?[1]]);
    let name_alg = u16::from_be_bytes([field(2, 2)?[0], field(2, 2)?[1]]);
    let attrs = field(4, 4)?;
    let attrs = u32::from_be_bytes([attrs[0], attrs[1], attrs[2], attrs[3]]);
    if key_type != ALG_RSA && key_type != ALG_ECC {
        return Err(format!("AK type {key_type:#06x} is not RSA or ECC"));
    }
    if name_alg != ALG_SHA256 {
        return Err(format!("AK name algorithm {name_alg:#06x} is not SHA-256"));
    }
    let required =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
    if attrs & required != required || attrs & DECRYPT != 0 {
        return Err(format!(
            "AK attributes {attrs:#010x} are not those of a restricted signing key bound to this TPM"
        ));
    }
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, tpmt_public).as_ref(),
    );
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext};
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    #[test]
    fn kdfa_is_sp800_108_counter_mode() {
        // Independent computation of the first block: HMAC(key, 1 || label
        // NUL || u || v || bits), and the second block for a longer output.
        let key = b"seed-seed-seed-seed-seed-seed-32";
        let blocks: Vec<u8> = (1u32..=2)
            .flat_map(|i| {
                let mut msg = i.to_be_bytes().to_vec();
                msg.extend_from_slice(b"STORAGE\0nameuv");
                msg.extend_from_slice(&384u32.to_be_bytes());
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &msg)
                    .as_ref()
                    .to_vec()
            })
            .collect();
        assert_eq!(
            kdfa_sha256(key, "STORAGE", b"name", b"uv", 384),
            blocks[..48]
        );
        let short = kdfa_sha256(key, "STORAGE", b"name", b"uv", 128);
        assert_eq!(short.len(), 16);
        assert_ne!(short, blocks[..16], "the length is part of the input");
    }

    #[test]
    fn kdfa_known_answer_from_the_tpm_reference_self_test() {
        // The KDFa self-test vector of the TPM 2.0 reference implementation
        // (libtpms KdfTestData.h, SHA-256 case).
        let key = hex::decode("271fa08bbdc5060ec3dfa928ff9b73123a12da0c").unwrap();
        let u = hex::decode("ce244f395dca7391").unwrap();
        let v = hex::decode("da504031ddf12e83").unwrap();
        assert_eq!(
            hex::encode(kdfa_sha256(&key, "KDFSELFTESTLABEL", &u, &v, 160)),
            "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4"
        );
    }

    #[test]
    fn make_credential_round_trips_like_activate_credential() {
        // Undo each step the way TPM2_ActivateCredential does, with the EK's
        // private key, and check integrity binding to the AK name.
        let ek = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = ek.public_key().as_der().unwrap();
        let name = [&ALG_SHA256.to_be_bytes()[..], &[7u8; 32]].concat();
        let secret = [42u8; 32];
        let cred = make_credential(spki.as_ref(), &name, &secret).unwrap();

        let ek = OaepPrivateDecryptingKey::new(ek).unwrap();
        let mut seed = vec![0u8; 256];
        let seed = ek
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &cred.encrypted_secret,
                &mut seed,
                Some(b"IDENTITY\0"),
            )
            .unwrap()
            .to_vec();
        assert_eq!(seed.len(), 32);
        let blob = &cred.credential_blob;
        assert_eq!(&blob[..2], &[0, 32]);
        let (hmac_value, enc_identity) = (&blob[2..34], &blob[34..]);
        let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
        hmac::verify(&key, &[enc_identity, &name[..]].concat(), hmac_value).unwrap();
        let other_name = [&ALG_SHA256.to_be_bytes()[..], &[8u8; 32]].concat();
        assert!(hmac::verify(&key, &[enc_identity, &other_name[..]].concat(), hmac_value).is_err());

        let sym = kdfa_sha256(&seed, "STORAGE", &name, &[], 128);
        let mut plain = enc_identity.to_vec();
        let dec = DecryptingKey::cfb128(UnboundCipherKey::new(&AES_128, &sym).unwrap()).unwrap();
        let plain = dec
            .decrypt(
                &mut plain,
                DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
            .unwrap();
        assert_eq!(&plain[..2], &[0, 32]);
        assert_eq!(&plain[2..], &secret);

        // A fresh seed each time: the same secret never encrypts the same.
        let again = make_credential(spki.as_ref(), &name, &secret).unwrap();
        assert_ne!(again.credential_blob, cred.credential_blob);
    }

    fn ak_public(attrs: u32, name_alg: u16) -> Vec<u8> {
        let mut p = ALG_RSA.to_be_bytes().to_vec();
        p.extend_from_slice(&name_alg.to_be_bytes());
        p.extend_from_slice(&attrs.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0xde, 0xad]);
        p
    }

    #[test]
    fn attestation_key_checks() {
        let good =
            FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
        let p = ak_public(good, ALG_SHA256);
        let name = attestation_key_name(&p).unwrap();
        assert_eq!(&name[..2], &[0, 0x0b]);
        assert_eq!(
            &name[2..],
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &p).as_ref()
        );
        assert!(attestation_key_name(&ak_public(good | DECRYPT, ALG_SHA256)).is_err());
        assert!(attestation_key_name(&ak_public(good & !FIXED_TPM, ALG_SHA256)).is_err());
        assert!(attestation_key_name(&ak_public(good & !RESTRICTED, ALG_SHA256)).is_err());
        assert!(attestation_key_name(&ak_public(good, 0x0004)).is_err());
        assert!(attestation_key_name(&[0, 1, 0]).is_err());
    }

    #[test]
    fn rsa_spki_der_matches_aws_lc() {
        use sigil_pki::rsa_spki_der;
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = key.public_key().as_der().unwrap();
        let (_, parsed) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(spki.as_ref()).unwrap();
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = parsed.parsed() else {
            panic!("not RSA")
        };
        assert_eq!(rsa_spki_der(rsa.modulus, rsa.exponent), spki.as_ref());
    }
}
