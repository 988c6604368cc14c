//! DNS and IP name constraints of an intermediate CA's chain, enforced when a leaf is
//! issued: a server certificate or SVID naming a host outside them would be rejected by
//! every peer that checks constraints (openssl, rustls-webpki, Go), so it is refused here
//! with an error saying which constraint, rather than issued and failing far away.
//!
//! Matching follows RFC 5280 §4.2.1.10 as rustls-webpki and OpenSSL apply it: a DNS
//! constraint `example.com` covers `example.com` and every name under it, `.example.com`
//! only the names under it; an IP constraint is an address and mask. Every certificate's
//! constraints apply (a name must pass each certificate that has some). Other name forms
//! are refused at import where Sigil's leaves would break them (`ca_validate.rs`).

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::x509_ca::X509Ca;
use crate::{PkiError, Result};

/// The DNS and IP subtrees of one certificate's nameConstraints.
#[derive(Clone, Debug, Default)]
struct Subtrees {
    /// Whose constraints these are (for messages).
    subject: String,
    permitted_dns: Vec<String>,
    excluded_dns: Vec<String>,
    /// Address then mask, 8 or 32 bytes.
    permitted_ip: Vec<Vec<u8>>,
    excluded_ip: Vec<Vec<u8>>,
}

/// The DNS and IP constraints over the leaves a CA issues.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeafNameConstraints(Vec<Subtrees>);

impl LeafNameConstraints {
    /// Collect the constraints of `certs` (the CA's certificate and those above it).
    pub(crate) fn of(certs: &[X509Certificate<'_>]) -> Self {
        let mut all = Vec::new();
        for cert in certs {
            let Ok(Some(nc)) = cert.name_constraints() else {
                continue;
            };
            let mut s = Subtrees {
                subject: cert.subject().to_string(),
                ..Default::default()
            };
            for (list, dns, ip) in [
                (
                    &nc.value.permitted_subtrees,
                    &mut s.permitted_dns,
                    &mut s.permitted_ip,
                ),
                (
                    &nc.value.excluded_subtrees,
                    &mut s.excluded_dns,
                    &mut s.excluded_ip,
                ),
            ] {
                for sub in list.iter().flatten() {
                    match &sub.base {
                        GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                        GeneralName::IPAddress(a) => ip.push(a.to_vec()),
                        _ => {}
                    }
                }
            }
            all.push(s);
        }
        Self(all)
    }

    fn check_dns(&self, name: &str) -> std::result::Result<(), String> {
        let name = name.to_ascii_lowercase();
        for s in &self.0 {
            if let Some(c) = s.excluded_dns.iter().find(|c| dns_matches(&name, c)) {
                return Err(format!(
                    "the DNS name {name:?} is excluded by the name constraint {c:?} of \"{}\"",
                    s.subject
                ));
            }
            if !s.permitted_dns.is_empty() && !s.permitted_dns.iter().any(|c| dns_matches(&name, c))
            {
                return Err(format!(
                    "the DNS name {name:?} is outside the names \"{}\" permits ({:?})",
                    s.subject, s.permitted_dns
                ));
            }
        }
        Ok(())
    }

    fn check_ip(&self, ip: &IpAddr) -> std::result::Result<(), String> {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        for s in &self.0 {
            if s.excluded_ip.iter().any(|c| ip_matches(&bytes, c)) {
                return Err(format!(
                    "the IP address {ip} is excluded by a name constraint of \"{}\"",
                    s.subject
                ));
            }
            // Strict as rustls-webpki is: a list of IPv4 ranges permits no IPv6 address.
            if !s.permitted_ip.is_empty() && !s.permitted_ip.iter().any(|c| ip_matches(&bytes, c)) {
                return Err(format!(
                    "the IP address {ip} is outside the addresses \"{}\" permits",
                    s.subject
                ));
            }
        }
        Ok(())
    }
}

/// RFC 5280 DNS constraint match; a leading dot means "strictly below".
fn dns_matches(name: &str, constraint: &str) -> bool {
    let c = constraint.trim_end_matches('.');
    if c.is_empty() {
        return true;
    }
    if let Some(below) = c.strip_prefix('.') {
        return name.len() > below.len() + 1 && name.ends_with(c);
    }
    name == c
        || (name.len() > c.len()
            && name.ends_with(c)
            && name.as_bytes()[name.len() - c.len() - 1] == b'.')
}

/// `constraint` is an address followed by a mask of the same length.
fn ip_matches(ip: &[u8], constraint: &[u8]) -> bool {
    if constraint.len() != 2 * ip.len() {
        return false;
    }
    let (addr, mask) = constraint.split_at(ip.len());
    ip.iter()
        .zip(addr)
        .zip(mask)
        .all(|((i, a), m)| i & m == a & m)
}

impl X509Ca {
    /// Refuse leaf names outside the DNS/IP name constraints of this CA's chain.
    pub(crate) fn check_leaf_names(&self, dns: &[String], ips: &[IpAddr]) -> Result<()> {
        let refuse = |why: String| PkiError::InvalidName {
            field: "certificate name",
            value: why,
            reason: "the CA's chain constrains the names it may certify; issue for names inside its permitted subtrees",
        };
        for d in dns {
            self.chain.names.check_dns(d).map_err(refuse)?;
        }
        for ip in ips {
            self.chain.names.check_ip(ip).map_err(refuse)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_constraints_follow_rfc5280() {
        assert!(dns_matches("example.com", "example.com"));
        assert!(dns_matches("a.example.com", "example.com"));
        assert!(!dns_matches("badexample.com", "example.com"));
        assert!(!dns_matches("example.com", ".example.com"));
        assert!(dns_matches("a.b.example.com", ".example.com"));
        assert!(dns_matches("*.example.com", ".example.com"));
        assert!(dns_matches("anything", ""));
        let nc = LeafNameConstraints(vec![Subtrees {
            subject: "CN=x".into(),
            permitted_dns: vec![".prod.internal".into()],
            excluded_dns: vec!["secret.prod.internal".into()],
            ..Default::default()
        }]);
        assert!(nc.check_dns("Web.Prod.Internal").is_ok());
        assert!(
            nc.check_dns("web.example.com")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            nc.check_dns("a.secret.prod.internal")
                .unwrap_err()
                .contains("excluded")
        );
    }

    #[test]
    fn ip_constraints_are_address_and_mask() {
        let nc = LeafNameConstraints(vec![Subtrees {
            permitted_ip: vec![vec![10, 0, 0, 0, 255, 0, 0, 0]],
            excluded_ip: vec![vec![10, 9, 0, 0, 255, 255, 0, 0]],
            ..Default::default()
        }]);
        assert!(nc.check_ip(&"10.1.2.3".parse().unwrap()).is_ok());
        assert!(nc.check_ip(&"192.168.0.1".parse().unwrap()).is_err());
        assert!(nc.check_ip(&"10.9.0.1".parse().unwrap()).is_err());
        // Permitted IPv4 ranges permit no IPv6 address (as rustls-webpki decides).
        assert!(nc.check_ip(&"::1".parse().unwrap()).is_err());
    }
}
