//! Which TLS key-exchange groups connections negotiate. Every listener prefers
//! the hybrid post-quantum `X25519MLKEM768` (rustls with aws-lc-rs, the
//! `prefer-post-quantum` feature) and falls back to classical groups for peers
//! without it; these counts (and `/metrics`) show what peers actually get.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Handshakes completed since start, by listener and group.
#[derive(Default)]
pub struct KeyExchanges(Mutex<BTreeMap<(&'static str, String), u64>>);

/// The group a finished handshake negotiated, as IANA names it.
pub fn group_of(conn: &rustls::CommonState) -> String {
    conn.negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "none".into())
}

impl KeyExchanges {
    /// Counts one handshake on `listener` (`control` or `public`).
    pub fn record(&self, listener: &'static str, group: &str) {
        metrics::counter!("sigil_tls_handshakes_total", "listener" => listener, "group" => group.to_string())
            .increment(1);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((listener, group.to_string())).or_default() += 1;
    }

    /// `group → handshakes` on `listener`.
    pub fn counts(&self, listener: &str) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((l, _), _)| *l == listener)
            .map(|((_, g), n)| (g.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_listener_and_group() {
        let k = KeyExchanges::default();
        k.record("control", "X25519MLKEM768");
        k.record("control", "X25519MLKEM768");
        k.record("public", "X25519");
        assert_eq!(
            k.counts("control"),
            [("X25519MLKEM768".to_string(), 2)].into()
        );
        assert_eq!(k.counts("public"), [("X25519".to_string(), 1)].into());
        assert!(k.counts("other").is_empty());
    }
}
