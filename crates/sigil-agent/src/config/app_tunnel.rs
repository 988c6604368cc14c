//! `application-tunnel` services: checks of their fields.

use std::net::SocketAddr;

use anyhow::bail;

use super::ServiceConfig;

/// The service type.
pub const KIND: &str = "application-tunnel";

/// A checked tunnel.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Loopback address the tunnel listens on (plain HTTP).
    pub listen: SocketAddr,
    /// The app's `public_addr`: TLS server name and Host.
    pub app: String,
    /// `HOST:PORT` of `sigil proxy`.
    pub proxy: String,
    /// PEM CA(s) that signed the proxy's server certificate.
    pub proxy_ca_file: std::path::PathBuf,
}

/// Checks service `i`, naming the field.
pub fn validate(i: usize, s: &ServiceConfig) -> anyhow::Result<TunnelConfig> {
    if s.selector.is_some() || s.attestors.is_some() {
        bail!("services[{i}]: selector and attestors are for workload-api services");
    }
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "services[{i}].listen: {:?} must be a loopback HOST:PORT, e.g. 127.0.0.1:8080",
            s.listen
        )
    })?;
    // No TLS on this side: anyone who can connect acts as the bot.
    if !listen.ip().is_loopback() {
        bail!(
            "services[{i}].listen: {listen} is not a loopback address; the tunnel has no \
             TLS and acts as the bot, so it listens on 127.0.0.1 or [::1] only"
        );
    }
    let Some(app) = s.app.clone() else {
        bail!("services[{i}].app: give the app's public_addr, e.g. grafana.example.test");
    };
    sigil_types::app::validate_public_addr(&app)
        .map_err(|e| anyhow::anyhow!("services[{i}].app: {e}"))?;
    let Some(proxy) = s.proxy.clone() else {
        bail!("services[{i}].proxy: give the proxy's HOST:PORT");
    };
    sigil_types::split_host_port(&proxy)
        .map_err(|e| anyhow::anyhow!("services[{i}].proxy: {e}"))?;
    let Some(proxy_ca_file) = s.proxy_ca_file.clone() else {
        bail!("services[{i}].proxy_ca_file: give the PEM CA that signed the proxy's certificate");
    };
    Ok(TunnelConfig {
        listen,
        app: app.to_ascii_lowercase(),
        proxy,
        proxy_ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> ServiceConfig {
        serde_norway::from_str(yaml).expect("service yaml")
    }

    #[test]
    fn fields_are_checked_and_named() {
        let base = "type: application-tunnel\nlisten: 127.0.0.1:8080\napp: Grafana.example.test\n\
                    proxy: 127.0.0.1:3443\nproxy_ca_file: /ca.pem\n";
        let t = validate(0, &svc(base)).expect("valid");
        assert_eq!(t.app, "grafana.example.test");
        assert!(validate(0, &svc(&base.replace("127.0.0.1:8080", "'[::1]:8080'"))).is_ok());
        for (from, to, field) in [
            ("127.0.0.1:8080", "0.0.0.0:8080", "services[0].listen"),
            ("127.0.0.1:8080", "unix:///x.sock", "services[0].listen"),
            (
                "app: Grafana.example.test",
                "app: 10.0.0.1",
                "services[0].app",
            ),
            ("app: Grafana.example.test\n", "", "services[0].app"),
            ("proxy: 127.0.0.1:3443", "proxy: nope", "services[0].proxy"),
            ("proxy_ca_file: /ca.pem\n", "", "services[0].proxy_ca_file"),
        ] {
            let e = validate(0, &svc(&base.replace(from, to))).expect_err(to);
            assert!(e.to_string().starts_with(field), "{to}: {e}");
        }
        let e = validate(0, &svc(&format!("{base}attestors: [unix]\n"))).expect_err("attestors");
        assert!(e.to_string().contains("workload-api"), "{e}");
    }
}
