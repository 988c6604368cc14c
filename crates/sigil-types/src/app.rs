//! `app`: an internal HTTP service reached through `sigil proxy`.
//!
//! ```yaml
//! kind: app
//! version: v1
//! metadata: {name: grafana, labels: {env: prod}}
//! spec:
//!   upstream: http://127.0.0.1:3000
//!   public_addr: grafana.example.test
//!   rewrite_headers: {X-Forwarded-User: "{{ identity.name }}"}
//!   allowed_spiffe_ids: [spiffe://example.test/svc/web, spiffe://example.test/ci/*]
//! ```
//!
//! Callers reach it by its labels (`app_labels`); a proxy serves it when its
//! roles' `app_server_labels` match them. An X.509-SVID caller also needs its
//! SPIFFE ID accepted by `allowed_spiffe_ids` (empty: no SVID callers).

use std::collections::BTreeMap;

use crate::resource::{Kind, Resource, ValidationError, validate_envelope};
use serde::{Deserialize, Serialize};

/// The header the proxy adds (and strips from clients): the signed JWT.
pub const JWT_ASSERTION_HEADER: &str = "sigil-jwt-assertion";
/// Fields a `rewrite_headers` template may name, as `{{ identity.FIELD }}`.
pub const IDENTITY_FIELDS: &[&str] = &["name", "instance", "roles", "spiffe_id"];
/// At most this many rewritten headers per app.
pub const MAX_REWRITE_HEADERS: usize = 32;
/// At most this many `allowed_spiffe_ids` per app.
pub const MAX_ALLOWED_SPIFFE_IDS: usize = 64;
/// Headers an app may not set: hop-by-hop, framing, routing, and the JWT.
const RESERVED_HEADERS: &[&str] = &[
    JWT_ASSERTION_HEADER,
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    // Set by the proxy itself from what it saw.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Body of an `app`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// `http://HOST:PORT[/PATH]` or `https://…`: where the proxy forwards.
    pub upstream: String,
    /// The DNS name (SNI and Host) the proxy answers for.
    pub public_addr: String,
    /// Headers set on each forwarded request, from `{{ identity.* }}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewrite_headers: BTreeMap<String, String>,
    /// SPIFFE IDs whose X.509-SVIDs may call the app (full IDs, or a path
    /// prefix ending in `/*`); empty: none. The holder bot's roles must
    /// still allow the app too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_spiffe_ids: Vec<String>,
}

/// An upstream URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `true` for `https`.
    pub tls: bool,
    /// Host name or IP (without brackets).
    pub host: String,
    /// Port (80/443 when the URL gives none).
    pub port: u16,
    /// Path prefix, `""` or starting with `/` (no trailing `/`).
    pub base_path: String,
}

/// The caller a `rewrite_headers` template is rendered for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityFields {
    /// Bot name.
    pub name: String,
    /// Bot instance ID.
    pub instance: String,
    /// Role names.
    pub roles: Vec<String>,
    /// The SPIFFE ID of the caller's X.509-SVID ("" for a Sigil identity).
    pub spiffe_id: String,
}

impl AppSpec {
    /// The upstream, split (validated).
    pub fn upstream(&self) -> Result<Upstream, String> {
        parse_upstream(&self.upstream)
    }

    /// Whether an X.509-SVID for `spiffe_id` may call the app: listed in
    /// `allowed_spiffe_ids`, or under a `…/*` prefix there (whole segments).
    pub fn accepts_spiffe_id(&self, spiffe_id: &str) -> bool {
        self.allowed_spiffe_ids
            .iter()
            .any(|a| match a.strip_suffix("/*") {
                Some(prefix) => spiffe_id
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
                None => a == spiffe_id,
            })
    }
}

/// Checks one `allowed_spiffe_ids` entry: a SPIFFE ID with a path, or one
/// followed by `/*`; returns its trust domain.
pub fn validate_allowed_spiffe_id(entry: &str) -> Result<String, String> {
    let shown = crate::text::escape_unsafe(entry);
    let id = entry.strip_suffix("/*").unwrap_or(entry);
    let parsed = crate::spiffe::SpiffeId::parse(id).map_err(|e| format!("\"{shown}\": {e}"))?;
    if parsed.is_trust_domain_id() && id == entry {
        return Err(format!(
            "\"{shown}\" names a trust domain only: give a workload's SPIFFE ID, or a prefix such as spiffe://{}/svc/*",
            parsed.trust_domain()
        ));
    }
    Ok(parsed.trust_domain().to_string())
}

/// Splits `http(s)://host[:port][/path]`; no user info, query or fragment.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let shown = crate::text::escape_unsafe(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "\"{shown}\" must be an http:// or https:// URL, e.g. http://127.0.0.1:3000"
        ));
    };
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) || url.contains(['?', '#', '@']) {
        return Err(format!(
            "\"{shown}\": no spaces, query (?), fragment (#) or user info (@) in an upstream"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (authority, default_port)
    } else if authority.starts_with('[') || authority.matches(':').count() == 1 {
        let (h, p) = authority.rsplit_once(':').unwrap_or((authority, ""));
        let p: u16 = p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{shown}\": the port must be a number from 1 to 65535"))?;
        (h, p)
    } else {
        return Err(format!("\"{shown}\": write an IPv6 address in [brackets]"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_err() {
        crate::role::validate_host_principal(host, false)
            .map_err(|e| format!("\"{shown}\": {e}"))?;
    }
    Ok(Upstream {
        tls,
        host: host.to_string(),
        port,
        base_path: path.to_string(),
    })
}

/// Checks a `public_addr`: a lowercase-able DNS name (no IP, no port, no glob).
pub fn validate_public_addr(addr: &str) -> Result<(), String> {
    let shown = crate::text::escape_unsafe(addr);
    if addr.parse::<std::net::IpAddr>().is_ok() || addr.contains(['*', ':']) {
        return Err(format!(
            "\"{shown}\" must be a DNS name such as grafana.example.test (no IP, port or *)"
        ));
    }
    crate::role::validate_host_principal(addr, false).map_err(|e| format!("\"{shown}\": {e}"))
}

/// Checks an HTTP header name (RFC 9110 token) an app may set.
pub fn validate_header_name(name: &str) -> Result<(), String> {
    let shown = crate::text::escape_unsafe(name);
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > 128 || !name.chars().all(tchar) {
        return Err(format!(
            "header name \"{shown}\" must be 1-128 letters, digits or - _ . (an HTTP token)"
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header \"{shown}\" is set by the proxy itself and cannot be rewritten"
        ));
    }
    Ok(())
}

/// Checks a header template: text and `{{ identity.FIELD }}` placeholders
/// naming [`IDENTITY_FIELDS`]; no control characters.
pub fn validate_header_template(template: &str) -> Result<(), String> {
    render_template(template, &IdentityFields::default()).map(|_| ())
}

/// Renders a template for `who`. Fails on an unknown field, a malformed
/// placeholder, or a value that would not be a valid header value.
pub fn render_template(template: &str, who: &IdentityFields) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a \"{{\" without its \"}}\"".to_string())?;
        let field = after[..end].trim();
        let value = match field.strip_prefix("identity.") {
            Some("name") => who.name.clone(),
            Some("instance") => who.instance.clone(),
            Some("roles") => who.roles.join(","),
            Some("spiffe_id") => who.spiffe_id.clone(),
            _ => {
                return Err(format!(
                    "unknown field {:?}: use identity.{}",
                    crate::text::escape_unsafe(field),
                    IDENTITY_FIELDS.join(", identity.")
                ));
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("a \"}}\" without its \"{{\"".into());
    }
    out.push_str(rest);
    if out.chars().any(|c| c.is_control() || !c.is_ascii()) || out.len() > 4096 {
        return Err("the value must be printable ASCII, at most 4096 bytes".into());
    }
    Ok(out)
}

impl Kind for AppSpec {
    const KIND: &'static str = "app";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        parse_upstream(&res.spec.upstream).map_err(|m| ValidationError::new("spec.upstream", m))?;
        validate_public_addr(&res.spec.public_addr)
            .map_err(|m| ValidationError::new("spec.public_addr", m))?;
        if res.spec.rewrite_headers.len() > MAX_REWRITE_HEADERS {
            return Err(ValidationError::new(
                "spec.rewrite_headers",
                format!("at most {MAX_REWRITE_HEADERS} headers"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, template) in &res.spec.rewrite_headers {
            let field = format!("spec.rewrite_headers.{}", crate::text::escape_unsafe(name));
            validate_header_name(name).map_err(|m| ValidationError::new(field.clone(), m))?;
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(ValidationError::new(
                    field,
                    "given twice (header names are case-insensitive)",
                ));
            }
            validate_header_template(template).map_err(|m| ValidationError::new(field, m))?;
        }
        if res.spec.allowed_spiffe_ids.len() > MAX_ALLOWED_SPIFFE_IDS {
            return Err(ValidationError::new(
                "spec.allowed_spiffe_ids",
                format!("at most {MAX_ALLOWED_SPIFFE_IDS} entries"),
            ));
        }
        for (i, entry) in res.spec.allowed_spiffe_ids.iter().enumerate() {
            validate_allowed_spiffe_id(entry)
                .map_err(|m| ValidationError::new(format!("spec.allowed_spiffe_ids[{i}]"), m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Metadata, Resource};

    fn app(upstream: &str, addr: &str) -> Resource<AppSpec> {
        Resource::new(
            Metadata::named("grafana"),
            AppSpec {
                upstream: upstream.into(),
                public_addr: addr.into(),
                rewrite_headers: BTreeMap::new(),
                allowed_spiffe_ids: Vec::new(),
            },
        )
    }

    #[test]
    fn allowed_spiffe_ids_are_exact_or_whole_segment_prefixes() {
        let mut a = app("http://127.0.0.1:1", "grafana.example.test");
        assert!(!a.spec.accepts_spiffe_id("spiffe://example.test/svc/web"));
        a.spec.allowed_spiffe_ids = vec![
            "spiffe://example.test/svc/web".into(),
            "spiffe://example.test/ci/*".into(),
        ];
        a.validate().unwrap();
        for ok in [
            "spiffe://example.test/svc/web",
            "spiffe://example.test/ci/a",
            "spiffe://example.test/ci/a/b",
        ] {
            assert!(a.spec.accepts_spiffe_id(ok), "{ok}");
        }
        for no in [
            "spiffe://example.test/svc/web2",
            "spiffe://example.test/svc/web/x",
            "spiffe://example.test/ci",
            "spiffe://example.test/ci/",
            "spiffe://example.test/cix/a",
            "spiffe://other.test/svc/web",
        ] {
            assert!(!a.spec.accepts_spiffe_id(no), "{no}");
        }
        for bad in [
            "/svc/web",
            "spiffe://example.test",
            "spiffe://example.test/svc/*/x",
            "spiffe://example.test/svc*",
            "spiffe://Example.test/svc",
            "spiffe://example.test/svc/",
        ] {
            let mut b = app("http://127.0.0.1:1", "grafana.example.test");
            b.spec.allowed_spiffe_ids = vec![bad.into()];
            let e = b.validate().unwrap_err();
            assert_eq!(e.field, "spec.allowed_spiffe_ids[0]", "{bad}");
        }
        assert_eq!(
            validate_allowed_spiffe_id("spiffe://example.test/*").unwrap(),
            "example.test"
        );
    }

    #[test]
    fn upstreams_parse_and_bad_ones_name_the_field() {
        let u = parse_upstream("http://127.0.0.1:3000").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 3000));
        let u = parse_upstream("https://grafana.internal/base/").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (true, 443, "/base"));
        let u = parse_upstream("http://[::1]:8080/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        for bad in [
            "ftp://x",
            "127.0.0.1:3000",
            "http://",
            "http://a b",
            "http://h:0",
            "http://h:99999",
            "http://u@h",
            "http://h/?q",
            "http://h/#f",
            "http://h\n",
        ] {
            let e = app(bad, "grafana.example.test").validate().unwrap_err();
            assert_eq!(e.field, "spec.upstream", "{bad}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "*.example.test",
            "a b",
            "h:443",
            "x\u{202E}",
        ] {
            let e = app("http://127.0.0.1:1", bad).validate().unwrap_err();
            assert_eq!(e.field, "spec.public_addr", "{bad}");
        }
        app("http://127.0.0.1:1", "grafana.example.test")
            .validate()
            .unwrap();
    }

    #[test]
    fn rewrite_headers_only_use_known_fields() {
        let mut a = app("http://127.0.0.1:1", "grafana.example.test");
        a.spec
            .rewrite_headers
            .insert("X-Forwarded-User".into(), "{{ identity.name }}".into());
        a.spec
            .rewrite_headers
            .insert("X-Roles".into(), "r={{identity.roles}}".into());
        a.validate().unwrap();
        let who = IdentityFields {
            name: "ci".into(),
            instance: "i1".into(),
            roles: vec!["a".into(), "b".into()],
            spiffe_id: "spiffe://example.test/svc/web".into(),
        };
        assert_eq!(
            render_template("{{ identity.spiffe_id }}", &who).unwrap(),
            "spiffe://example.test/svc/web"
        );
        assert_eq!(
            render_template("r={{identity.roles}}", &who).unwrap(),
            "r=a,b"
        );
        for (name, t, why) in [
            ("X-U", "{{ identity.secret }}", "unknown field"),
            ("X-U", "{{ join.sub }}", "unknown field"),
            ("X-U", "{{ identity.name", "without"),
            ("X-U", "a\nb", "printable"),
            ("Host", "x", "set by the proxy"),
            ("Sigil-Jwt-Assertion", "x", "set by the proxy"),
            ("Bad Name", "x", "HTTP token"),
        ] {
            let mut b = app("http://127.0.0.1:1", "grafana.example.test");
            b.spec.rewrite_headers.insert(name.into(), t.into());
            let e = b.validate().unwrap_err();
            assert!(e.field.starts_with("spec.rewrite_headers."), "{e:?}");
            assert!(e.message.contains(why), "{t}: {}", e.message);
        }
    }
}
