//! OpenSSH Key Revocation Lists (KRLs), written from OpenSSH's `PROTOCOL.krl`.
//!
//! `sshd` reads the file named by `RevokedKeys`; `ssh-keygen -Q -f krl key` checks one key.
//! We write the certificate section (by serial and by key ID, per CA or for any CA) and the
//! SHA-256 fingerprint section for plain keys. No signature section: OpenSSH >= 9.4 refuses
//! KRLs that carry one.
//!
//! Serials are sorted, de-duplicated, grouped into runs, and each run is placed in a list,
//! range or bitmap subsection by a linear-time dynamic programme that minimises the encoded
//! size (within one byte per bitmap), so contiguous runs become ranges and dense clusters
//! become bitmaps.

use ssh_key::PublicKey;

use crate::error::{PkiError, Result};

/// `"SSHKRL\n\0"`.
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;

/// OpenSSH refuses bitmap mpints longer than 2048 bytes (`SSHBUF_MAX_BIGNUM`), so one bitmap
/// subsection spans at most this many serials.
const MAX_BITMAP_BITS: u64 = 2048 * 8;

/// Encoded sizes, in bytes, that the section choice minimises.
/// Subsection framing: type byte + u32 length.
const SUBSECTION_OVERHEAD: u64 = 1 + 4;
/// A range subsection: framing + two u64.
const RANGE_COST: u64 = SUBSECTION_OVERHEAD + 16;
/// A bitmap subsection without its bits: framing + u64 offset + mpint length.
const BITMAP_FIXED_COST: u64 = SUBSECTION_OVERHEAD + 8 + 4;

/// What a KRL revokes, for certificates of one CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KrlCertSection {
    /// The CA's public key line (`ssh-ed25519 AAAA… comment`); `None` revokes for certificates
    /// of any CA (the spec's empty `ca_key`), which is mostly useful for key IDs.
    pub ca_public_key_openssh: Option<String>,
    /// Certificate serials to revoke. Order and duplicates do not matter; 0 is refused
    /// because OpenSSH never treats serial 0 as revoked and rejects it in a KRL.
    pub serials: Vec<u64>,
    /// Certificate key IDs (`ssh-keygen -I`) to revoke: non-empty, no NUL.
    pub key_ids: Vec<String>,
}

/// An OpenSSH KRL (`RevokedKeys` file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krl {
    /// Increases each time the KRL changes (`ssh-keygen -k -z`).
    pub version: u64,
    /// When it was generated, seconds since the Unix epoch.
    pub generated_unix: u64,
    /// Free text, no NUL.
    pub comment: String,
    /// Certificate revocations, one entry per CA (or any CA).
    pub certs: Vec<KrlCertSection>,
    /// Plain (non-certificate) public key lines to revoke; written as SHA-256 fingerprints.
    pub revoked_keys_openssh: Vec<String>,
}

impl Krl {
    /// Encode the KRL in OpenSSH's binary format. Fails on an unparsable key, a serial of 0,
    /// an empty key ID or text containing NUL.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        check_no_nul("KRL comment", &self.comment)?;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(KRL_MAGIC);
        put_u32(&mut out, KRL_FORMAT_VERSION);
        put_u64(&mut out, self.version);
        put_u64(&mut out, self.generated_unix);
        put_u64(&mut out, 0); // flags: none defined
        put_string(&mut out, b"")?; // reserved
        put_string(&mut out, self.comment.as_bytes())?;

        for (index, section) in self.certs.iter().enumerate() {
            let body = cert_section(index, section)?;
            if let Some(body) = body {
                out.push(SECTION_CERTIFICATES);
                put_string(&mut out, &body)?;
            }
        }

        if let Some(body) = fingerprint_section(&self.revoked_keys_openssh)? {
            out.push(SECTION_FINGERPRINT_SHA256);
            put_string(&mut out, &body)?;
        }
        Ok(out)
    }
}

/// Body of one `KRL_SECTION_CERTIFICATES`, or `None` when it revokes nothing.
fn cert_section(index: usize, section: &KrlCertSection) -> Result<Option<Vec<u8>>> {
    let ca_blob = match &section.ca_public_key_openssh {
        Some(line) => plain_key_blob(line).map_err(|reason| {
            PkiError::InvalidPublicKey(format!(
                "KRL certs[{index}].ca_public_key_openssh: {reason}; give the CA's public key line (ssh-ed25519 AAAA…)"
            ))
        })?,
        None => Vec::new(),
    };
    if let Some(pos) = section.serials.iter().position(|&s| s == 0) {
        return Err(PkiError::InvalidName {
            field: "KRL certificate serial",
            value: format!("certs[{index}].serials[{pos}] = 0"),
            reason: "serial 0 means 'no serial' to OpenSSH and cannot be revoked; revoke the certificate by key ID instead",
        });
    }
    for key_id in &section.key_ids {
        if key_id.is_empty() {
            return Err(PkiError::InvalidName {
                field: "KRL certificate key ID",
                value: format!("certs[{index}]: \"\""),
                reason: "key IDs must be non-empty",
            });
        }
        check_no_nul("KRL certificate key ID", key_id)?;
    }
    if section.serials.is_empty() && section.key_ids.is_empty() {
        return Ok(None);
    }

    let mut body = Vec::new();
    put_string(&mut body, &ca_blob)?;
    put_string(&mut body, b"")?; // reserved
    encode_serials(&mut body, &serial_runs(&section.serials))?;

    let mut key_ids: Vec<&str> = section.key_ids.iter().map(String::as_str).collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    if !key_ids.is_empty() {
        let mut sub = Vec::new();
        for key_id in key_ids {
            put_string(&mut sub, key_id.as_bytes())?;
        }
        body.push(CERT_KEY_ID);
        put_string(&mut body, &sub)?;
    }
    Ok(Some(body))
}

/// `KRL_SECTION_FINGERPRINT_SHA256` body: SHA-256 of each key blob, ascending, no duplicates.
fn fingerprint_section(lines: &[String]) -> Result<Option<Vec<u8>>> {
    let mut hashes = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let blob = plain_key_blob(line).map_err(|reason| {
            PkiError::InvalidPublicKey(format!(
                "KRL revoked_keys_openssh[{index}]: {reason}; give a plain public key line (not a certificate)"
            ))
        })?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &blob);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        hashes.push(hash);
    }
    if hashes.is_empty() {
        return Ok(None);
    }
    // Byte-wise order of fixed-length hashes is their big-endian numeric order, as the spec asks.
    hashes.sort_unstable();
    hashes.dedup();
    let mut body = Vec::with_capacity(hashes.len() * 36);
    for hash in &hashes {
        put_string(&mut body, hash)?;
    }
    Ok(Some(body))
}

/// The SSH wire blob of a plain public key line. The error names what is wrong, never key bytes.
fn plain_key_blob(line: &str) -> std::result::Result<Vec<u8>, String> {
    let key = PublicKey::from_openssh(line.trim())
        .map_err(|e| format!("not an OpenSSH public key line ({e})"))?;
    // ssh-key reads unknown `name@domain` algorithms as opaque keys, certificates included.
    let algorithm = key.algorithm();
    if algorithm.as_str().contains("-cert-") {
        return Err(format!(
            "{} is a certificate, not a plain key",
            algorithm.as_str()
        ));
    }
    key.to_bytes()
        .map_err(|e| format!("could not encode the key ({e})"))
}

fn check_no_nul(field: &'static str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(PkiError::InvalidName {
            field,
            value: value.escape_debug().to_string(),
            reason: "must not contain NUL bytes (OpenSSH reads it as a C string)",
        });
    }
    Ok(())
}

/// Inclusive run of contiguous serials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lo: u64,
    hi: u64,
}

impl Run {
    fn len(self) -> u64 {
        self.hi - self.lo + 1
    }
}

/// Sorted, de-duplicated serials as maximal contiguous runs.
fn serial_runs(serials: &[u64]) -> Vec<Run> {
    let mut sorted = serials.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<Run> = Vec::new();
    for serial in sorted {
        match runs.last_mut() {
            Some(run) if run.hi.checked_add(1) == Some(serial) => run.hi = serial,
            _ => runs.push(Run {
                lo: serial,
                hi: serial,
            }),
        }
    }
    runs
}

/// How the runs ending at one position were encoded, for walking the plan backwards.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The run is the last entry of a list subsection (which may continue further back).
    List,
    /// The run is a range subsection of its own.
    Range,
    /// Runs `from..=here` share one bitmap subsection.
    Bitmap { from: usize },
}

/// One subsection of the chosen plan, as a span of run indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subsection {
    List { from: usize, to: usize },
    Range(usize),
    Bitmap { from: usize, to: usize },
}

/// Choose subsections for `runs` with the smallest encoded size.
///
/// `best[i]` is the cheapest encoding of `runs[..i]`; `open_list[i]` the cheapest one whose
/// last subsection is a list (so run `i` can join it for 8 bytes per serial). A bitmap over
/// runs `j..=i` costs `best[j] + fixed + ceil(bits / 8)`; since `8 * best[j]` is a multiple of
/// 8, minimising `8 * best[j] - lo_j` over a sliding window (bitmap span limit) finds the best
/// `j` exactly, up to the mpint sign byte.
fn plan_subsections(runs: &[Run]) -> Vec<Subsection> {
    let n = runs.len();
    let mut best = vec![0u64; n + 1];
    let mut open_list = vec![u64::MAX; n + 1];
    let mut list_continues = vec![false; n + 1];
    let mut step = vec![Step::Range; n + 1];
    // Candidate bitmap starts j, with increasing keys 8 * best[j] - lo_j.
    let mut window: std::collections::VecDeque<(usize, i128)> = Default::default();

    for (i, run) in runs.iter().enumerate() {
        let list_bytes = run.len().saturating_mul(8);
        let (list_base, continues) = if open_list[i] <= best[i].saturating_add(SUBSECTION_OVERHEAD)
        {
            (open_list[i], true)
        } else {
            (best[i].saturating_add(SUBSECTION_OVERHEAD), false)
        };
        open_list[i + 1] = list_base.saturating_add(list_bytes);
        list_continues[i + 1] = continues;

        let mut cost = open_list[i + 1];
        let mut chosen = Step::List;
        let range = best[i] + RANGE_COST;
        if range < cost {
            cost = range;
            chosen = Step::Range;
        }

        let key = 8 * i128::from(best[i]) - i128::from(run.lo);
        while window.back().is_some_and(|&(_, k)| k >= key) {
            window.pop_back();
        }
        window.push_back((i, key));
        while window
            .front()
            .is_some_and(|&(j, _)| run.hi - runs[j].lo >= MAX_BITMAP_BITS)
        {
            window.pop_front();
        }
        if let Some(&(from, _)) = window.front() {
            let bitmap = best[from] + BITMAP_FIXED_COST + bitmap_bytes(runs[from].lo, run.hi);
            if bitmap < cost {
                cost = bitmap;
                chosen = Step::Bitmap { from };
            }
        }
        best[i + 1] = cost;
        step[i + 1] = chosen;
    }

    // Walk back from the end, then reverse into encoding order.
    let mut plan = Vec::new();
    let mut end = n;
    while end > 0 {
        match step[end] {
            Step::Range => {
                plan.push(Subsection::Range(end - 1));
                end -= 1;
            }
            Step::Bitmap { from } => {
                plan.push(Subsection::Bitmap { from, to: end - 1 });
                end = from;
            }
            Step::List => {
                let to = end - 1;
                let mut from = to;
                while list_continues[from + 1] {
                    from -= 1;
                }
                plan.push(Subsection::List { from, to });
                end = from;
            }
        }
    }
    plan.reverse();
    plan
}

/// Bytes of the bitmap mpint for serials `lo..=hi` with `hi` set: the bits, plus a leading
/// zero byte when the top bit would otherwise read as a sign.
fn bitmap_bytes(lo: u64, hi: u64) -> u64 {
    let bits = hi - lo + 1;
    bits.div_ceil(8) + u64::from(bits.is_multiple_of(8))
}

/// Append the serial subsections for `runs` to a certificate section body.
fn encode_serials(body: &mut Vec<u8>, runs: &[Run]) -> Result<()> {
    for subsection in plan_subsections(runs) {
        let mut sub = Vec::new();
        let kind = match subsection {
            Subsection::Range(i) => {
                put_u64(&mut sub, runs[i].lo);
                put_u64(&mut sub, runs[i].hi);
                CERT_SERIAL_RANGE
            }
            Subsection::List { from, to } => {
                for run in &runs[from..=to] {
                    for serial in run.lo..=run.hi {
                        put_u64(&mut sub, serial);
                    }
                }
                CERT_SERIAL_LIST
            }
            Subsection::Bitmap { from, to } => {
                let offset = runs[from].lo;
                put_u64(&mut sub, offset);
                put_string(&mut sub, &bitmap_mpint(offset, &runs[from..=to]))?;
                CERT_SERIAL_BITMAP
            }
        };
        body.push(kind);
        put_string(body, &sub)?;
    }
    Ok(())
}

/// Big-endian bitmap where bit N (counting from the least significant) is serial `offset + N`,
/// as a positive SSH mpint (leading zero byte if the top bit is set).
fn bitmap_mpint(offset: u64, runs: &[Run]) -> Vec<u8> {
    let top = runs.last().map_or(0, |run| run.hi - offset);
    let nbytes = usize::try_from(top / 8 + 1).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; nbytes];
    for run in runs {
        for serial in run.lo..=run.hi {
            let bit = serial - offset;
            let byte = nbytes - 1 - usize::try_from(bit / 8).unwrap_or(usize::MAX);
            bytes[byte] |= 1 << (bit % 8);
        }
    }
    if bytes.first().is_some_and(|&b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    bytes
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// SSH `string`: u32 length then bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| PkiError::Ssh {
        context: "KRL encoding",
        reason: format!(
            "a section of {} bytes exceeds the 4 GiB an SSH string can hold; split the revocations across KRLs",
            bytes.len()
        ),
    })?;
    put_u32(out, len);
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
#[path = "krl_tests.rs"]
mod tests;
