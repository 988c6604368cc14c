//! `auth_server:` takes one `HOST:PORT` (the original form) or a list of
//! them, tried in order (see `client::rotation`).

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// The entries as written; checked by `client::parse_list` so the errors
/// name the entry.
#[derive(Debug, Default)]
pub struct AuthServerField(pub Vec<String>);

impl<'de> serde::Deserialize<'de> for AuthServerField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthServerField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("HOST:PORT or a list of HOST:PORT")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AuthServerField(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    // Bounded by the document limits checked before parsing.
                    out.push(s);
                }
                Ok(AuthServerField(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{AgentConfig, AgentFlags};

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn config(auth_server: &str) -> String {
        format!(
            "version: v1\nauth_server: {auth_server}\nca_pins: [{PIN}]\nonboarding: {{join_method: token, token: abc}}\nstorage: {{type: directory, path: /tmp/s}}\n"
        )
    }

    fn servers(c: &AgentConfig) -> Vec<String> {
        c.auth_servers.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn one_string_and_lists_in_both_styles() {
        let c = AgentConfig::parse(&config("a.example:3025"), "agent.yaml").expect("one");
        assert_eq!(servers(&c), ["a.example:3025"]);
        let c = AgentConfig::parse(&config("[a:3025, 10.0.0.2:3025, '[::1]:3025']"), "a")
            .expect("flow list");
        assert_eq!(servers(&c), ["a:3025", "10.0.0.2:3025", "[::1]:3025"]);
        let block = config("\n  - a:3025\n  - b:3025");
        let c = AgentConfig::parse(&block, "a").expect("block list");
        assert_eq!(servers(&c), ["a:3025", "b:3025"]);
    }

    #[test]
    fn errors_name_the_file_line_and_entry() {
        for (value, line, want) in [
            ("[]", 2, "auth_server: the list is empty"),
            ("[a:3025, b]", 2, "auth_server[1]: \"b\" must be HOST:PORT"),
            (
                "[a:3025, a:3025]",
                2,
                "auth_server[1]: a:3025 is listed twice",
            ),
            (
                "a:3025,b:3025",
                2,
                "auth_server[0]: \"a:3025,b:3025\" holds several",
            ),
            ("a:0", 2, "auth_server[0]: \"a:0\" has an invalid port"),
            ("{host: a}", 2, "expected HOST:PORT or a list of HOST:PORT"),
            ("[[a:1]]", 2, "invalid type"),
        ] {
            let e = AgentConfig::parse(&config(value), "agent.yaml")
                .expect_err(value)
                .to_string();
            assert!(
                e.starts_with(&format!("agent.yaml:{line}:")),
                "{value}: {e}"
            );
            assert!(e.contains(want), "{value}: {e}");
        }
        let e = AgentConfig::parse(&config("\n  - a:3025\n  - b:x"), "agent.yaml")
            .expect_err("block")
            .to_string();
        assert!(
            e.starts_with("agent.yaml:2:") && e.contains("auth_server[1]"),
            "{e}"
        );
        let e = AgentConfig::parse(&config("").replace("auth_server: \n", ""), "agent.yaml")
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing field `auth_server`"), "{e}");
    }

    #[test]
    fn the_flag_takes_commas() {
        let flags = |s: &str| AgentFlags {
            auth_server: s.into(),
            ca_pins: vec![PIN.into()],
            token: Some("t".into()),
            storage: "/tmp/x".into(),
            ..Default::default()
        };
        let c = AgentConfig::from_flags(flags("a:1, b:2")).expect("two");
        assert_eq!(servers(&c), ["a:1", "b:2"]);
        let e = AgentConfig::from_flags(flags("a:1,,b:2"))
            .expect_err("empty entry")
            .to_string();
        assert!(e.contains("--auth-server[1]: empty"), "{e}");
        let e = AgentConfig::from_flags(flags(" "))
            .expect_err("none")
            .to_string();
        assert!(e.contains("--auth-server: required"), "{e}");
    }
}
