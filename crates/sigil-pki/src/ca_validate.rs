//! The checks an intermediate CA's certificate chain passes before Sigil signs with it
//! ([`crate::import_x509_ca`], [`crate::complete_x509_ca_request`]). Each refusal names
//! the certificate (1 = the CA's own, then its issuers) and what to change.
//!
//! Signatures are verified here with aws-lc-rs (through x509-parser), not with openssl.
//!
//! Name constraints: Sigil's TLS and many SPIFFE peers verify with rustls-webpki, which
//! rejects every certificate under a directoryName constraint, and every certificate with
//! a URI SAN under a URI constraint (it implements neither). Client certificates
//! (`sigil://` URI), X.509-SVIDs (`spiffe://` URI) and every leaf (subject `O=<cluster>`)
//! would fail, so such constraints are refused at import, except URI constraints on the
//! `host` CA (server certificates carry no URI). DNS and IP constraints are not checked at
//! import: the DNS names and addresses of server certificates and SVIDs are chosen at each
//! issuance, so they are enforced there (`name_constraints.rs`): a server certificate or
//! SVID naming something outside them is refused rather than issued.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::keys::{CaPurpose, sha256_hex};
use crate::x509_chain::{is_self_signed, link_error, parse};
use crate::{PkiError, Result};

/// The shortest remaining validity an imported CA (and every certificate above it) must
/// have: less would leave no time to issue, renew and rotate.
pub const MIN_CA_REMAINING: time::Duration = time::Duration::hours(24);
/// Tolerated clock difference for a notBefore just in the future.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// All `CERTIFICATE` blocks of `pem_text`, in order; any other block is refused (a private
/// key pasted into the chain file must not be silently ignored, nor echoed).
pub(crate) fn chain_from_pem(purpose: CaPurpose, pem_text: &str) -> Result<Vec<Vec<u8>>> {
    let refuse = |reason: String| PkiError::CaChainRejected { purpose, reason };
    let blocks = pem::parse_many(pem_text)
        // Not the parser's message: it quotes input bytes, and a key may be pasted here.
        .map_err(|_| refuse("the certificate file is not valid PEM".into()))?;
    let mut ders = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.tag() != "CERTIFICATE" {
            return Err(refuse(format!(
                "the certificate file holds a '{}' block: give only the certificates (the CA's own first, then its issuers up to the root); the private key goes separately",
                block.tag()
            )));
        }
        ders.push(block.into_contents());
    }
    if ders.is_empty() {
        return Err(refuse(
            "the certificate file holds no '-----BEGIN CERTIFICATE-----' block".into(),
        ));
    }
    Ok(ders)
}

/// Check `ders` (the CA's certificate, then its issuers, nearest first) for a CA of
/// `purpose` in `cluster` whose key has the SubjectPublicKeyInfo `key_spki`, at `now`.
pub(crate) fn validate_chain(
    purpose: CaPurpose,
    cluster: &str,
    ders: &[Vec<u8>],
    key_spki: &[u8],
    now: OffsetDateTime,
) -> Result<()> {
    let refuse = |reason: String| PkiError::CaChainRejected { purpose, reason };
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        certs.push(parse(der).map_err(|e| refuse(format!("certificate {}: {e}", i + 1)))?);
    }
    let name = |i: usize| format!("certificate {} (subject \"{}\")", i + 1, certs[i].subject());

    if certs[0].public_key().raw != key_spki {
        if let Some(k) = certs.iter().position(|c| c.public_key().raw == key_spki) {
            return Err(refuse(format!(
                "the key belongs to {}, not to the first certificate: list the CA's own certificate first, then its issuer, up to the root",
                name(k)
            )));
        }
        return Err(refuse(format!(
            "{} is for another key (sha256:{}) than the private key given (sha256:{}): give the key this certificate was issued for, or the certificate issued for this key",
            name(0),
            sha256_hex(certs[0].public_key().raw),
            sha256_hex(key_spki)
        )));
    }

    for (i, cert) in certs.iter().enumerate() {
        check_ca(purpose, i, cert).map_err(|why| refuse(format!("{} {why}", name(i))))?;
        check_validity(cert, now).map_err(|why| refuse(format!("{} {why}", name(i))))?;
        check_name_constraints(purpose, cert)
            .map_err(|why| refuse(format!("{} {why}", name(i))))?;
        check_eku(purpose, cert).map_err(|why| refuse(format!("{} {why}", name(i))))?;
    }
    for i in 0..certs.len() - 1 {
        if let Some(why) = link_error(&certs[i], &certs[i + 1]) {
            return Err(refuse(format!(
                "{} is not issued by {}: {why}. List the CA's own certificate first, then its issuer, then that one's issuer, up to the root",
                name(i),
                name(i + 1)
            )));
        }
    }
    let top = certs.len() - 1;
    if certs[top].issuer().as_raw() == certs[top].subject().as_raw() && !is_self_signed(&certs[top])
    {
        return Err(refuse(format!(
            "{} names itself as its issuer, but its signature does not verify under its own key",
            name(top)
        )));
    }
    if purpose == CaPurpose::Spiffe {
        check_spiffe_uri(cluster, &certs[0]).map_err(|why| refuse(format!("{} {why}", name(0))))?;
    }
    Ok(())
}

/// basicConstraints, keyUsage and pathLenConstraint of the certificate at `depth`
/// (0 = the CA being imported, 1 = its issuer, …).
fn check_ca(
    purpose: CaPurpose,
    depth: usize,
    cert: &X509Certificate<'_>,
) -> std::result::Result<(), String> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("has an unreadable basicConstraints extension ({e})"))?;
    let Some(bc) = bc.filter(|bc| bc.value.ca) else {
        return Err(if depth == 0 {
            "is not a CA certificate: it lacks basicConstraints CA:TRUE. Have it issued with the extension `basicConstraints = critical, CA:TRUE` (e.g. `openssl x509 -req … -extfile` with that line)".into()
        } else {
            "is not a CA certificate (no basicConstraints CA:TRUE), so it cannot have issued the certificate before it".into()
        });
    };
    // The certificate at `depth` has `depth` CA certificates below it in the path (leaves
    // do not count): its pathLenConstraint must allow that many.
    if let Some(len) = bc.value.path_len_constraint
        && (len as usize) < depth
    {
        return Err(format!(
            "has pathLenConstraint {len}, which allows {len} CA certificate(s) below it, but the CA being imported is {depth} level(s) below it, so nothing it issued would verify: have the CA issued directly by a CA that allows it, or re-issue that certificate with a larger pathlen"
        ));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| format!("has an unreadable keyUsage extension ({e})"))?;
    match ku {
        Some(ku) if !ku.value.key_cert_sign() => Err(
            "has a keyUsage extension without keyCertSign, so it may not sign certificates: re-issue it with `keyUsage = critical, keyCertSign, cRLSign`".into(),
        ),
        // Sigil signs the revocation list of these CAs' leaves with the CA itself.
        Some(ku)
            if depth == 0
                && matches!(purpose, CaPurpose::Spiffe | CaPurpose::DbClient)
                && !ku.value.crl_sign() =>
        {
            Err(format!(
                "has a keyUsage extension without cRLSign, but Sigil signs the {purpose} CA's revocation list with it: re-issue it with `keyUsage = critical, keyCertSign, cRLSign`"
            ))
        }
        None if depth == 0 && purpose == CaPurpose::Spiffe => Err(
            "has no keyUsage extension; the X509-SVID standard (§3.2, §4.3) requires keyCertSign on signing certificates: re-issue it with `keyUsage = critical, keyCertSign, cRLSign`".into(),
        ),
        _ => Ok(()),
    }
}

fn check_validity(
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> std::result::Result<(), String> {
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if not_before > now + CLOCK_SKEW {
        return Err(format!(
            "is not valid before {} (notBefore), which is in the future: check this machine's clock, or import it once it is valid",
            fmt(not_before)
        ));
    }
    if not_after <= now {
        return Err(format!(
            "expired at {} (notAfter): have it re-issued",
            fmt(not_after)
        ));
    }
    if not_after < now + MIN_CA_REMAINING {
        return Err(format!(
            "expires at {} (notAfter), less than {} hours from now: have it re-issued with a longer validity",
            fmt(not_after),
            MIN_CA_REMAINING.whole_hours()
        ));
    }
    Ok(())
}

fn check_name_constraints(
    purpose: CaPurpose,
    cert: &X509Certificate<'_>,
) -> std::result::Result<(), String> {
    let nc = cert
        .name_constraints()
        .map_err(|e| format!("has an unreadable nameConstraints extension ({e})"))?;
    let Some(nc) = nc else { return Ok(()) };
    let subtrees = nc
        .value
        .permitted_subtrees
        .iter()
        .chain(nc.value.excluded_subtrees.iter())
        .flatten();
    for subtree in subtrees {
        match &subtree.base {
            GeneralName::DirectoryName(_) => {
                return Err(
                    "has a directoryName name constraint; rustls-webpki (Sigil's TLS, and many peers) rejects every certificate under one. Use a CA without directoryName constraints".into(),
                );
            }
            GeneralName::URI(uri) if purpose != CaPurpose::Host => {
                return Err(format!(
                    "has a URI name constraint ({uri}); rustls-webpki (Sigil's TLS, and many peers) rejects every certificate with a URI SAN under one, and {purpose} certificates carry one. Use a CA without URI constraints"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// An extendedKeyUsage on a CA certificate is applied to every leaf below it by OpenSSL
/// and Go (X509-SVID standard §4.4): it must allow what this CA's leaves are for.
fn check_eku(purpose: CaPurpose, cert: &X509Certificate<'_>) -> std::result::Result<(), String> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| format!("has an unreadable extendedKeyUsage extension ({e})"))?;
    let Some(eku) = eku else { return Ok(()) };
    if eku.value.any {
        return Ok(());
    }
    // Server certificates (host) and SVIDs carry serverAuth and clientAuth; bot and
    // database client certificates carry clientAuth.
    let needs_server = matches!(purpose, CaPurpose::Host | CaPurpose::Spiffe);
    if !eku.value.client_auth || (needs_server && !eku.value.server_auth) {
        let wanted = if needs_server {
            "serverAuth, clientAuth"
        } else {
            "clientAuth"
        };
        return Err(format!(
            "has an extendedKeyUsage without {wanted}, which OpenSSL and Go then refuse for the {purpose} CA's certificates: re-issue it with `extendedKeyUsage = {wanted}` or without the extension"
        ));
    }
    Ok(())
}

/// A SPIFFE signing certificate may carry a SPIFFE ID: the trust domain's own, no path.
fn check_spiffe_uri(cluster: &str, cert: &X509Certificate<'_>) -> std::result::Result<(), String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("has an unreadable subjectAltName extension ({e})"))?;
    let expected = format!("spiffe://{cluster}");
    for gn in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = gn
            && *uri != expected
        {
            return Err(format!(
                "carries the URI SAN {uri:?}; a SPIFFE signing certificate's URI SAN, if any, must be exactly {expected:?}, the trust domain's ID with no path (the trust domain is the cluster name; X509-SVID standard §3.2): re-issue it with that URI or none"
            ));
        }
    }
    Ok(())
}
