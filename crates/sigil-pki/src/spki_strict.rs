//! What x509-parser lets through in a SubjectPublicKeyInfo that the CA must
//! not certify (found by the `x509` fuzz target, crates/sigil-fuzz): bytes
//! inside the SEQUENCE after the key, a BIT STRING with unused bits, and key
//! bytes that are no key of the named algorithm (a 4-byte "Ed25519 key", an
//! EC point off its curve). The SPKI is copied verbatim into the certificate,
//! so what is certified must be exactly one well-formed key.

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};

use crate::der::{self, TAG_BIT_STRING, TAG_SEQUENCE};

/// `Some(why)` unless `spki` is one DER SEQUENCE holding exactly an
/// AlgorithmIdentifier and a BIT STRING without unused bits.
pub(crate) fn layout_problem(spki: &[u8]) -> Option<&'static str> {
    let Some((TAG_SEQUENCE, body, [])) = der::read_tlv(spki) else {
        return Some("not exactly one DER SEQUENCE");
    };
    let Some((TAG_SEQUENCE, _, rest)) = der::read_tlv(body) else {
        return Some("no AlgorithmIdentifier");
    };
    match der::read_tlv(rest) {
        Some((TAG_BIT_STRING, [0, ..], [])) => None,
        Some((TAG_BIT_STRING, _, [])) => Some("a key BIT STRING with unused bits"),
        Some((TAG_BIT_STRING, _, _)) => Some("bytes after the key inside the SEQUENCE"),
        _ => Some("no key BIT STRING"),
    }
}

/// Whether `key` (the BIT STRING's bytes) is an Ed25519 public key.
pub(crate) fn ed25519_key_ok(key: &[u8]) -> bool {
    key.len() == 32 && ParsedPublicKey::new(&signature::ED25519, key).is_ok()
}

/// Whether `point` is a SEC1 point on the named curve (OID content bytes).
pub(crate) fn ec_point_ok(curve: &[u8], point: &[u8]) -> bool {
    let alg: &'static dyn VerificationAlgorithm = match curve {
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07] => &signature::ECDSA_P256_SHA256_ASN1,
        [0x2b, 0x81, 0x04, 0x00, 0x22] => &signature::ECDSA_P384_SHA384_ASN1,
        [0x2b, 0x81, 0x04, 0x00, 0x23] => &signature::ECDSA_P521_SHA512_ASN1,
        _ => return false,
    };
    // SEC1 only (0x04 uncompressed, 0x02/0x03 compressed): aws-lc would also
    // take a whole SPKI here.
    matches!(point.first(), Some(0x02..=0x04)) && ParsedPublicKey::new(alg, point).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_spki_with_bytes_after_the_key_or_a_short_ed25519_key_is_refused() {
        // Found by the x509 fuzz target: Ed25519, a 4-byte key, then junk
        // inside the outer SEQUENCE.
        let found: &[u8] = &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x05, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0xa3, 0x6c, 0x89, 0x9b, 0x82, 0xfc, 0xff, 0x4a, 0x0a, 0x30,
            0x98, 0x82, 0x16, 0xa2, 0x1e, 0xd3, 0xe4, 0xe5, 0x8b, 0x26, 0xd4, 0xcd, 0x0a, 0x24,
            0x15, 0x46,
        ];
        assert_eq!(
            layout_problem(found),
            Some("bytes after the key inside the SEQUENCE")
        );
        assert!(!ed25519_key_ok(&[0, 0, 0, 0]));
    }

    #[test]
    fn real_keys_pass_and_a_point_off_the_curve_does_not() {
        // `openssl pkey -pubout -outform DER` of an Ed25519 and a P-256 key.
        let ed = hex(
            "302a300506032b657003210039f17450fb1da36c899b82fcff4a0a30988216a21ed3e4e58b26d4cd0a241546",
        );
        let p256 = hex(
            "3059301306072a8648ce3d020106082a8648ce3d030107034200048fa5f310189189b9eab2a06e2f8bd8553a142ded6d9af30e82c3285834d5d87df95a52d18de93165ef3b3359640e0c6880cca845b8f292965f215947eebf820f",
        );
        assert_eq!(layout_problem(&ed), None);
        assert_eq!(layout_problem(&p256), None);
        assert!(ed25519_key_ok(&ed[12..]));
        let curve = &p256[15..23];
        let point = &p256[26..];
        assert!(ec_point_ok(curve, point));
        let mut off = point.to_vec();
        off[64] ^= 1;
        assert!(!ec_point_ok(curve, &off));
        assert!(!ec_point_ok(curve, &p256), "a whole SPKI is no SEC1 point");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
