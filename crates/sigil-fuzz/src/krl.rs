//! KRL writer round trip: what `Krl::to_bytes` writes decodes to exactly the
//! serials and key IDs it was given, in OpenSSH's `PROTOCOL.krl` layout.

use std::collections::BTreeSet;

use sigil_pki::{Krl, KrlCertSection};

const CA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF5vzeiOihV9KdIKR25Su0xiKZL7PrxrodtkalaLyi96 fuzz-ca";

/// Input: byte 0 picks "any CA" (even) or a fixed CA key (odd); up to the
/// first `\n`, eight bytes of a base serial then one byte per further serial
/// (a step from the previous one, bytes ≥ 0xf0 jump by multiples of 2^32);
/// after it, comma-separated key IDs. A serial of 0, an empty key ID or a NUL
/// must be refused; anything else must round-trip.
pub fn krl(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (serial_bytes, ids) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(ids) = std::str::from_utf8(ids) else {
        return;
    };
    let (base, steps) = serial_bytes.split_at(serial_bytes.len().min(8));
    let mut serials = Vec::new();
    if !base.is_empty() {
        let mut b = [0u8; 8];
        b[8 - base.len()..].copy_from_slice(base);
        let mut serial = u64::from_be_bytes(b);
        serials.push(serial);
        for &step in steps {
            let step = if step >= 0xf0 {
                u64::from(step - 0xef) << 32
            } else {
                u64::from(step)
            };
            serial = serial.wrapping_add(step);
            serials.push(serial);
        }
    }
    let key_ids: Vec<String> = if ids.is_empty() {
        Vec::new()
    } else {
        ids.split(',').map(str::to_string).collect()
    };
    let krl = Krl {
        version: 7,
        generated_unix: 1_700_000_000,
        comment: "fuzz".into(),
        certs: vec![KrlCertSection {
            ca_public_key_openssh: (flags & 1 == 1).then(|| CA_KEY.to_string()),
            serials: serials.clone(),
            key_ids: key_ids.clone(),
        }],
        revoked_keys_openssh: Vec::new(),
    };
    let must_fail =
        serials.contains(&0) || key_ids.iter().any(|k| k.is_empty() || k.contains('\0'));
    let bytes = match krl.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            assert!(must_fail, "KRL refused: {e}");
            return;
        }
    };
    assert!(
        !must_fail,
        "a KRL with serial 0, an empty key ID or NUL was written"
    );
    let (got_serials, got_ids, ca_blob) = decode(&bytes).expect("our KRL decodes");
    let want_serials: BTreeSet<u64> = serials.into_iter().collect();
    let want_ids: BTreeSet<String> = key_ids.into_iter().collect();
    assert_eq!(got_serials, want_serials, "serials round trip");
    assert_eq!(got_ids, want_ids, "key IDs round trip");
    let nothing = want_serials.is_empty() && want_ids.is_empty();
    assert_eq!(
        ca_blob.is_none(),
        nothing,
        "a cert section iff something is revoked"
    );
    if let Some(blob) = ca_blob {
        assert_eq!(blob.is_empty(), flags & 1 == 0, "CA key blob");
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

type Decoded = (BTreeSet<u64>, BTreeSet<String>, Option<Vec<u8>>);

/// Decode a KRL with one certificate section; `None` on anything malformed
/// or outside what OpenSSH accepts.
fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut r = Reader(bytes);
    (r.take(8)? == b"SSHKRL\n\0").then_some(())?;
    (r.u32()? == 1).then_some(())?;
    r.u64()?; // version
    r.u64()?; // generated date
    (r.u64()? == 0).then_some(())?;
    r.string()?.is_empty().then_some(())?;
    (r.string()? == b"fuzz").then_some(())?;
    let mut serials = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut ca_blob = None;
    while !r.0.is_empty() {
        (r.u8()? == 1 && ca_blob.is_none()).then_some(())?;
        let mut body = Reader(r.string()?);
        ca_blob = Some(body.string()?.to_vec());
        body.string()?.is_empty().then_some(())?;
        while !body.0.is_empty() {
            let kind = body.u8()?;
            let mut sub = Reader(body.string()?);
            match kind {
                0x20 => {
                    while !sub.0.is_empty() {
                        serials.insert(sub.u64()?).then_some(())?;
                    }
                }
                0x21 => {
                    let (lo, hi) = (sub.u64()?, sub.u64()?);
                    (lo != 0 && lo <= hi && hi - lo < 1 << 24).then_some(())?;
                    serials.extend(lo..=hi);
                }
                0x22 => {
                    let offset = sub.u64()?;
                    let mpint = sub.string()?;
                    let ok = !mpint.is_empty() && mpint[0] & 0x80 == 0 && mpint.len() <= 2049;
                    ok.then_some(())?;
                    for (i, byte) in mpint.iter().rev().enumerate() {
                        for bit in 0..8 {
                            if byte & (1 << bit) != 0 {
                                serials.insert(offset.checked_add(i as u64 * 8 + bit)?);
                            }
                        }
                    }
                }
                0x23 => {
                    while !sub.0.is_empty() {
                        ids.insert(String::from_utf8(sub.string()?.to_vec()).ok()?);
                    }
                }
                _ => return None,
            }
            sub.0.is_empty().then_some(())?;
        }
    }
    Some((serials, ids, ca_blob))
}
