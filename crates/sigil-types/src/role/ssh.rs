//! SSH fields of a role: host principals (names, IPs, globs) and the
//! source-address CIDRs of user certificates. Checked when a role is parsed,
//! so evaluation ([`crate::rbac`]) can rely on well-formed values.

use std::net::IpAddr;

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOST_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// What a host principal may be, for error messages.
const HOST_PRINCIPAL_RULES: &str = "a host name (dot-separated labels of 1 to 63 letters, \
digits and -, not starting or ending with -, at most 253 characters) or an IPv4/IPv6 address";

/// Checks an SSH host principal: a DNS host name or an IPv4/IPv6 literal.
/// With `allow_glob` (role patterns), labels may also contain `*`
/// (`*.example.test`, `web-*.example.test`, `*`); a host's own principals
/// (`allow_glob = false`) are exact. No trailing dot, no `?`, no Unicode.
pub fn validate_host_principal(p: &str, allow_glob: bool) -> Result<(), String> {
    let shown = crate::text::escape_unsafe(p);
    let rules = if allow_glob {
        format!("{HOST_PRINCIPAL_RULES}; * may stand for any part of a label")
    } else {
        HOST_PRINCIPAL_RULES.to_string()
    };
    if p.is_empty() {
        return Err(format!("must not be empty: expected {rules}"));
    }
    if p.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "\"{shown}\" is not valid ({why}): expected {rules}"
        ))
    };
    if p.len() > MAX_HOST_NAME_LEN {
        return bad("longer than 253 characters");
    }
    if !allow_glob && p.contains('*') {
        return bad("no * here: a host's principals are exact names");
    }
    for label in p.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return bad("a label is longer than 63 characters");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '*'))
        {
            let what = if crate::text::is_unsafe_char(c) {
                format!("character U+{:04X}", c as u32)
            } else {
                format!("character {c:?}")
            };
            return bad(&what);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with -");
        }
    }
    Ok(())
}

/// An IP network: an address with a prefix length and no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 (IPv4) or 0..=128 (IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or
    /// /128). Host bits must be zero, so that what a role says is what it
    /// means (`10.0.0.1/8` is refused with the network it probably meant).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let shown = crate::text::escape_unsafe(s);
        let expected =
            "expected an IP address or CIDR such as 10.0.0.0/8, 192.0.2.7/32 or 2001:db8::/32";
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{shown}\" is not an IP address or CIDR: {expected}"))?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| p.bytes().all(|b| b.is_ascii_digit()) && *n <= max)
                .ok_or_else(|| {
                    format!("\"{shown}\" has an invalid prefix length (0 to {max}): {expected}")
                })?,
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "\"{shown}\" has host bits set: write the network, {network}/{prefix}"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    /// True if every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && mask(other.addr, self.prefix) == self.addr
    }

    /// The addresses in both: the narrower one when one contains the other,
    /// else none (two CIDRs are nested or disjoint).
    pub fn intersect(&self, other: &Cidr) -> Option<Cidr> {
        if self.contains(other) {
            Some(*other)
        } else if other.contains(self) {
            Some(*self)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// `addr` with all but the first `prefix` bits cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_principals() {
        for ok in [
            "localhost",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
            "web1.example.test",
            "a-b.c",
            "1.2.3.4.5",
            &"a".repeat(63),
        ] {
            validate_host_principal(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
            validate_host_principal(ok, true).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for glob in ["*.example.test", "*", "web-*.example.test", "10.0.0.*"] {
            validate_host_principal(glob, true).unwrap_or_else(|e| panic!("{glob}: {e}"));
            assert!(validate_host_principal(glob, false).is_err(), "{glob}");
        }
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(63)).repeat(3);
        for bad in [
            "",
            "web_1.example",
            "a..b",
            "example.test.",
            ".example",
            "-a.b",
            "a-.b",
            "a b",
            "a?b",
            "wéb",
            "a,b",
            "web\u{202E}1",
            "2001:db8::*",
            "fe80::1%eth0",
            &"a".repeat(64),
            &long,
        ] {
            let err = validate_host_principal(bad, true).unwrap_err();
            assert!(err.contains("expected a host name"), "{bad:?}: {err}");
            assert!(!err.contains('\u{202E}'), "escaped: {err}");
        }
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(c("2001:0db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(c("::1").to_string(), "::1/128");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "example.com",
            "10.0.0.1/8",
            "2001:db8::/129",
            "10.0.0.0/8,0.0.0.0/0",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn cidr_containment_and_intersection() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains(&c("192.0.2.7")));
        assert!(!c("0.0.0.0/0").contains(&c("::1")), "families differ");
        assert!(c("::/0").contains(&c("2001:db8::/32")));
        assert_eq!(
            c("10.0.0.0/8").intersect(&c("10.1.0.0/16")),
            Some(c("10.1.0.0/16"))
        );
        assert_eq!(
            c("10.1.0.0/16").intersect(&c("10.0.0.0/8")),
            Some(c("10.1.0.0/16"))
        );
        assert_eq!(c("10.0.0.0/8").intersect(&c("192.168.0.0/16")), None);
    }
}
