//! Who a connection's caller claims to be, read once from its certificate
//! for the audit records of requests refused before any decision (no such
//! app, misdirected). Only a label: the handshake verified the chain, but
//! whether the caller may do anything is the auth service's decision.

/// (bot, bot instance) named by a Sigil identity certificate or by the
/// holder of an X.509-SVID; empty when neither.
pub fn named_in(cert_der: &[u8]) -> (String, String) {
    if let Ok((id, _)) = sigil_pki::read_client_identity(cert_der) {
        return (id.bot, id.instance_id);
    }
    match sigil_pki::read_x509_svid(cert_der) {
        Ok(f) => f.holder.map(|h| (h.bot, h.instance_id)).unwrap_or_default(),
        Err(_) => Default::default(),
    }
}
