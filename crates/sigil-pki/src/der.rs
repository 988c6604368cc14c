//! Minimal DER writer/reader for the leaf certificates we issue.
//!
//! Leaves are built by hand rather than through rcgen for two reasons: the identity
//! extension's OID is a UUID OID (2.25.<128-bit>), whose arc does not fit the `u64`
//! components rcgen/yasna use, and a fixed-layout writer keeps issuance within a small
//! constant of the raw signature cost.

use time::OffsetDateTime;

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// Append a TLV with the given tag and content.
pub(crate) fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// Build a TLV whose content is produced by `f`.
pub(crate) fn nested(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::with_capacity(128);
    f(&mut inner);
    tlv(out, tag, &inner);
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Append a non-negative INTEGER from big-endian magnitude bytes (minimal encoding).
pub(crate) fn unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let trimmed = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() || trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(out, TAG_INTEGER, &content);
}

/// DER of an RSA SubjectPublicKeyInfo (rsaEncryption with NULL parameters)
/// from the big-endian modulus and exponent: one encoding per key, so its
/// hash names the key (a TPM's endorsement key, for instance).
pub fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }.
    const RSA_ALG_ID: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut out = Vec::with_capacity(modulus.len() + 64);
    nested(&mut out, 0x30, |spki| {
        spki.extend_from_slice(&RSA_ALG_ID);
        nested(spki, 0x03, |bits| {
            bits.push(0); // no unused bits
            nested(bits, 0x30, |key| {
                unsigned_integer(key, modulus);
                unsigned_integer(key, exponent);
            });
        });
    });
    out
}

/// Drop leading zero bytes (the canonical magnitude of a serial number).
pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
}

/// Encode OID content bytes (no tag/length) from arcs; arcs may exceed u64 (UUID OIDs).
/// Used by tests to prove the pre-encoded identity OID constant is right.
#[cfg(test)]
pub(crate) fn oid_content(arcs: &[u128]) -> Vec<u8> {
    let mut out = Vec::new();
    if arcs.len() < 2 {
        return out;
    }
    push_base128(&mut out, arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        push_base128(&mut out, *arc);
    }
    out
}

#[cfg(test)]
fn push_base128(out: &mut Vec<u8>, mut v: u128) {
    let mut tmp = [0u8; 19];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8 | if i == tmp.len() - 1 { 0 } else { 0x80 };
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Decode OID content bytes into dotted decimal (arcs up to 128 bits).
pub(crate) fn oid_to_string(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u128> = Vec::new();
    let mut cur: u128 = 0;
    for (i, b) in content.iter().enumerate() {
        if cur > (u128::MAX >> 7) {
            return None;
        }
        cur = (cur << 7) | u128::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let (first, second) = match cur {
                    0..=39 => (0, cur),
                    40..=79 => (1, cur - 40),
                    _ => (2, cur - 80),
                };
                arcs.push(first);
                arcs.push(second);
            } else {
                arcs.push(cur);
            }
            cur = 0;
        } else if i == content.len() - 1 {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Append an X.509 Time: UTCTime for 1950..2050, GeneralizedTime otherwise (RFC 5280 4.1.2.5).
pub(crate) fn time(out: &mut Vec<u8>, t: OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if (1950..2050).contains(&y) {
        let txt = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(out, TAG_UTC_TIME, txt.as_bytes());
    } else {
        let txt = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        tlv(out, TAG_GENERALIZED_TIME, txt.as_bytes());
    }
}

/// Read one TLV from the front of `input`: (tag, content, rest).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high-tag-number form is never used by what we parse
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | usize::from(*b);
        }
        if len < 0x80 || rest[0] == 0 {
            return None; // not minimal: DER forbids it
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_and_long() {
        let mut v = Vec::new();
        tlv(&mut v, TAG_OCTET_STRING, &[7u8; 3]);
        assert_eq!(v, [0x04, 3, 7, 7, 7]);
        let mut v = Vec::new();
        tlv(&mut v, TAG_OCTET_STRING, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = read_tlv(&v).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (TAG_OCTET_STRING, 300, 0));
    }

    #[test]
    fn read_rejects_truncated_and_non_minimal() {
        assert!(read_tlv(&[0x04, 0x05, 1, 2]).is_none());
        assert!(read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none());
        assert!(read_tlv(&[]).is_none());
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut v = Vec::new();
        unsigned_integer(&mut v, &[0x00, 0x00, 0x81]);
        assert_eq!(v, [0x02, 0x02, 0x00, 0x81]);
        let mut v = Vec::new();
        unsigned_integer(&mut v, &[0x00, 0x7f]);
        assert_eq!(v, [0x02, 0x01, 0x7f]);
    }

    #[test]
    fn oid_round_trip_including_uuid_arc() {
        let c = oid_content(&[1, 3, 6, 1, 5, 5, 7, 3, 2]);
        assert_eq!(c, [0x2b, 6, 1, 5, 5, 7, 3, 2]);
        let big = 276308227552939987507662315743379325741u128;
        let c = oid_content(&[2, 25, big]);
        assert_eq!(
            oid_to_string(&c).unwrap(),
            "2.25.276308227552939987507662315743379325741"
        );
        assert_eq!(oid_to_string(&[0x2a, 0x86, 0x48]).unwrap(), "1.2.840");
        assert!(oid_to_string(&[0x2a, 0x86]).is_none());
    }

    #[test]
    fn times_switch_to_generalized_at_2050() {
        let mut v = Vec::new();
        time(&mut v, time::macros::datetime!(2049-12-31 23:59:59 UTC));
        assert_eq!(&v[2..], b"491231235959Z");
        let mut v = Vec::new();
        time(&mut v, time::macros::datetime!(2050-01-01 00:00:00 UTC));
        assert_eq!(v[0], 0x18);
        assert_eq!(&v[2..], b"20500101000000Z");
    }
}
