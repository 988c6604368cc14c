//! Request and response headers on the way through: hop-by-hop headers
//! removed (RFC 9110 7.6.1), the client's own assertion stripped, the app's
//! `rewrite_headers` and the signed JWT added.

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sigil_types::{App, IdentityFields, JWT_ASSERTION_HEADER};

/// Whether a request asks for a protocol upgrade.
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Whether `Upgrade` asks for WebSocket and nothing else: the only upgrade
/// passed through. Any other (`h2c` above all) would hand the caller a raw
/// connection to the upstream, past per-request decisions, audit and header
/// rewriting.
pub fn is_websocket(h: &HeaderMap) -> bool {
    let mut values = h.get_all(header::UPGRADE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(v), None) if v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket"))
    )
}

/// Client-supplied forwarding headers: the proxy sets its own `X-Forwarded-*`,
/// and none of these may reach the upstream as if the proxy had vouched for them.
pub const CLIENT_FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
];

/// Remove hop-by-hop headers (RFC 9110 7.6.1), and those `Connection` names;
/// with `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        // Only meaningful to an h2c upgrade, which is never passed through.
        "http2-settings",
    ] {
        h.remove(n);
    }
    h.remove(header::CONNECTION);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// What the proxy adds to a forwarded request.
pub struct Forward<'a> {
    /// The caller, for `rewrite_headers`.
    pub who: &'a IdentityFields,
    /// The signed assertion.
    pub jwt: &'a HeaderValue,
    /// The Host the client asked for (`X-Forwarded-Host`).
    pub host: &'a str,
    /// The client's address (`X-Forwarded-For`, replacing any it sent).
    pub client_ip: std::net::IpAddr,
    /// Keep `Upgrade` (WebSocket).
    pub upgrade: bool,
}

/// Whether a URL path has a `.` or `..` segment, also percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

/// The request for the upstream.
pub fn forward_request<B>(
    req: Request<B>,
    app: &App,
    upstream: &sigil_types::Upstream,
    f: &Forward<'_>,
) -> anyhow::Result<Request<B>> {
    let Forward {
        who,
        jwt,
        host,
        client_ip,
        upgrade,
    } = *f;
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if upstream.host.contains(':') {
        format!("[{}]:{}", upstream.host, upstream.port)
    } else {
        format!("{}:{}", upstream.host, upstream.port)
    };
    // Under a base path, a dot segment (plain or percent-encoded) would climb
    // out of it on the upstream.
    if !upstream.base_path.is_empty() && has_dot_segment(parts.uri.path()) {
        anyhow::bail!("a path with `.` or `..` segments under the app's base path");
    }
    // Origin-form: the request goes on a connection to the upstream itself.
    parts.uri = format!("{}{pq}", upstream.base_path).parse()?;
    parts.version = http::Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    // A client's own assertion is never passed on (any case, any count), nor
    // forwarding headers it wrote itself (an upstream trusting
    // X-Forwarded-User from its proxy would take them for the proxy's word).
    h.remove(JWT_ASSERTION_HEADER);
    for n in CLIENT_FORWARDING_HEADERS {
        h.remove(*n);
    }
    h.insert(header::HOST, HeaderValue::from_str(&authority)?);
    h.insert("x-forwarded-host", HeaderValue::from_str(host)?);
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    h.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&client_ip.to_string())?,
    );
    for (name, template) in &app.spec.rewrite_headers {
        let v = sigil_types::app::render_template(template, who)
            .map_err(|e| anyhow::anyhow!("rewrite_headers.{name}: {e}"))?;
        h.insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(&v)?,
        );
    }
    h.insert(JWT_ASSERTION_HEADER, jwt.clone());
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn app() -> App {
        let mut rewrite = BTreeMap::new();
        rewrite.insert(
            "X-Forwarded-User".to_string(),
            "{{ identity.name }}".to_string(),
        );
        sigil_types::Resource::new(
            sigil_types::Metadata::named("grafana"),
            sigil_types::AppSpec {
                upstream: "http://127.0.0.1:3000/base".into(),
                public_addr: "grafana.example.test".into(),
                rewrite_headers: rewrite,
                ..Default::default()
            },
        )
    }

    #[test]
    fn forwarding_strips_hop_by_hop_and_client_assertions() {
        let app = app();
        let req = Request::builder()
            .uri("/d/x?q=1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("Sigil-Jwt-Assertion", "forged")
            .header("sigil-jwt-assertion", "forged2")
            .header("X-Forwarded-User", "mallory")
            .header("accept", "text/html")
            .header("x-forwarded-for", "10.9.9.9")
            .body(())
            .unwrap();
        let who = IdentityFields {
            name: "ci".into(),
            ..Default::default()
        };
        let up = app.spec.upstream().unwrap();
        let out = forward_request(
            req,
            &app,
            &up,
            &Forward {
                who: &who,
                jwt: &HeaderValue::from_static("JWT"),
                host: "grafana.example.test",
                client_ip: "192.0.2.7".parse().unwrap(),
                upgrade: false,
            },
        )
        .unwrap();
        assert_eq!(out.uri().to_string(), "/base/d/x?q=1");
        let h = out.headers();
        assert_eq!(
            h.get_all(JWT_ASSERTION_HEADER).iter().collect::<Vec<_>>(),
            ["JWT"]
        );
        assert_eq!(
            h.get_all("x-forwarded-user").iter().collect::<Vec<_>>(),
            ["ci"]
        );
        assert_eq!(h.get("host").unwrap(), "127.0.0.1:3000");
        assert_eq!(h.get("accept").unwrap(), "text/html");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn only_websocket_upgrades_and_no_client_forwarding_headers_or_dot_segments() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(is_websocket(&h));
        for other in ["h2c", "websocket, h2c", "tls/1.2"] {
            h.insert("upgrade", HeaderValue::from_static(other));
            assert!(!is_websocket(&h), "{other}");
        }
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.append("upgrade", HeaderValue::from_static("h2c"));
        assert!(!is_websocket(&h), "two Upgrade headers");

        let app = app();
        let who = IdentityFields::default();
        let mut up = app.spec.upstream().unwrap();
        let forward = |uri: &str, up: &sigil_types::Upstream| {
            let req = Request::builder()
                .uri(uri)
                .header("forwarded", "for=10.0.0.1;host=admin")
                .header("x-real-ip", "10.0.0.1")
                .header("x-forwarded-groups", "admins")
                .header("http2-settings", "AAMAAABkAAQAAP__")
                .body(())
                .unwrap();
            forward_request(
                req,
                &app,
                up,
                &Forward {
                    who: &who,
                    jwt: &HeaderValue::from_static("JWT"),
                    host: "grafana.example.test",
                    client_ip: "192.0.2.7".parse().unwrap(),
                    upgrade: false,
                },
            )
        };
        let out = forward("/b", &up).unwrap();
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-groups",
            "http2-settings",
        ] {
            assert!(!out.headers().contains_key(gone), "{gone}");
        }
        up.base_path = "/tenant".into();
        assert!(forward("/x/y", &up).is_ok());
        for climb in ["/../admin", "/a/%2e%2e/admin", "/a/%2E./admin", "/./x"] {
            assert!(forward(climb, &up).is_err(), "{climb}");
        }
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert_eq!(kept.get("upgrade").unwrap(), "websocket");
        assert_eq!(kept.get("connection").unwrap(), "upgrade");
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
        let mut no = HeaderMap::new();
        no.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&no), "Upgrade without Connection: upgrade");
    }
}
