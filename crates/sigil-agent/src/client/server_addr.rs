//! One auth server address, `HOST:PORT`, as the config, the flags and the
//! identity file give it.

use anyhow::{Context, bail};
use rustls_pki_types::ServerName;

/// An auth server as configured: the host is also the name its TLS
/// certificate must carry (a DNS name or an IP), whichever address it
/// resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    host: String,
    port: u16,
    name: ServerName<'static>,
}

impl ServerAddr {
    /// Parse `HOST:PORT` or `[IPV6]:PORT` (a leading `https://` is tolerated,
    /// as it always was). Errors do not name the field: the caller does.
    pub fn parse(text: &str) -> anyhow::Result<ServerAddr> {
        let s = text.trim();
        let s = s.strip_prefix("https://").unwrap_or(s);
        if s.is_empty() {
            bail!("empty; give HOST:PORT");
        }
        if s.contains(',') {
            bail!("{text:?} holds several addresses: give them as a list, [HOST:PORT, HOST:PORT]");
        }
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => rest
                .split_once("]:")
                .with_context(|| format!("{text:?} must be [IPV6]:PORT"))?,
            None => s
                .rsplit_once(':')
                .with_context(|| format!("{text:?} must be HOST:PORT"))?,
        };
        if host.contains(':') && !s.starts_with('[') {
            bail!("{text:?}: write an IPv6 address in brackets, [ADDR]:PORT");
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("{text:?} has an invalid port (1-65535)"))?;
        if host.is_empty() {
            bail!("{text:?} has no host");
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| anyhow::anyhow!("{text:?}: {host:?} is not a valid DNS name or IP"))?;
        Ok(ServerAddr {
            host: host.to_string(),
            port,
            name,
        })
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> ServerName<'static> {
        self.name.clone()
    }

    /// `HOST:PORT` as `tokio::net::lookup_host` takes it.
    pub fn lookup_target(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }

    /// Whether the host is an IP literal (it resolves to itself).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parse the list given as `field`, naming the entry that is wrong
/// (`field[1]: ...`); duplicates are refused (one server listed twice would
/// be tried twice in a row).
pub fn parse_list(field: &str, entries: &[String]) -> anyhow::Result<Vec<ServerAddr>> {
    if entries.is_empty() {
        bail!("{field}: the list is empty; give at least one HOST:PORT");
    }
    let mut out: Vec<ServerAddr> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let a = ServerAddr::parse(e).map_err(|err| anyhow::anyhow!("{field}[{i}]: {err}"))?;
        if out.contains(&a) {
            bail!("{field}[{i}]: {a} is listed twice");
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_ips_and_brackets() {
        for (text, shown) in [
            ("127.0.0.1:3025", "127.0.0.1:3025"),
            ("auth.example.test:3025", "auth.example.test:3025"),
            (" https://auth:1 ", "auth:1"),
            ("[::1]:3025", "[::1]:3025"),
        ] {
            let a = ServerAddr::parse(text).expect(text);
            assert_eq!(a.to_string(), shown);
        }
        assert!(ServerAddr::parse("127.0.0.1:3025").expect("ip").is_ip());
        assert!(!ServerAddr::parse("auth:3025").expect("dns").is_ip());
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        for (text, want) in [
            ("", "empty"),
            ("auth", "HOST:PORT"),
            ("auth:0", "invalid port"),
            ("auth:99999", "invalid port"),
            (":3025", "no host"),
            ("::1:3025", "brackets"),
            ("a:1,b:2", "as a list"),
            ("bad_name!:3025", "not a valid DNS name"),
            ("[::1:3025", "[IPV6]:PORT"),
        ] {
            let e = ServerAddr::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn lists_name_the_bad_entry() {
        let ok = parse_list("s", &["a:1".into(), "b:2".into()]).expect("two");
        assert_eq!(ok.len(), 2);
        let e = parse_list("s", &[]).expect_err("empty").to_string();
        assert!(e.starts_with("s: the list is empty"), "{e}");
        let e = parse_list("s", &["a:1".into(), "b".into()])
            .expect_err("bad")
            .to_string();
        assert!(e.starts_with("s[1]: \"b\" must be HOST:PORT"), "{e}");
        let e = parse_list("s", &["a:1".into(), "a:1".into()])
            .expect_err("dup")
            .to_string();
        assert!(e.contains("s[1]: a:1 is listed twice"), "{e}");
    }
}
