use super::*;
use crate::rbac::tests::{role, sel};
use crate::resource::Role;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn set(roles: &[Role]) -> RoleSet {
    RoleSet::new(roles.to_vec())
}

#[test]
fn permissions_default_to_pty_only() {
    let p = set(&[role(|_| {})]).ssh_permissions();
    assert_eq!(
        p,
        SshPermissions {
            port_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
            pty: true,
            user_rc: false,
            source_address: None,
        }
    );
    assert_eq!(RoleSet::default().ssh_permissions(), p);
}

#[test]
fn permissions_most_restrictive_wins() {
    let open = role(|s| {
        s.options.ssh_port_forwarding = Some(true);
        s.options.ssh_agent_forwarding = Some(true);
        s.options.ssh_x11_forwarding = Some(true);
        s.options.ssh_user_rc = Some(true);
    });
    let p = set(std::slice::from_ref(&open)).ssh_permissions();
    assert!(p.port_forwarding && p.agent_forwarding && p.x11_forwarding && p.user_rc && p.pty);
    let closed = role(|s| {
        s.options.ssh_agent_forwarding = Some(false);
        s.options.ssh_pty = Some(false);
    });
    let p = set(&[open.clone(), closed.clone()]).ssh_permissions();
    assert!(p.port_forwarding && p.x11_forwarding && p.user_rc);
    assert!(!p.agent_forwarding && !p.pty, "any false wins");
    // Order does not matter.
    assert_eq!(set(&[closed, open]).ssh_permissions(), p);
    // A role that says nothing does not restrict.
    let silent = role(|_| {});
    let fwd = role(|s| s.options.ssh_port_forwarding = Some(true));
    assert!(set(&[silent, fwd]).ssh_permissions().port_forwarding);
}

#[test]
fn source_address_is_intersected() {
    let cidrs = |v: &[&str]| role(|s| s.options.ssh_source_address = strs(v));
    let none = role(|_| {});
    assert_eq!(
        set(std::slice::from_ref(&none))
            .ssh_permissions()
            .source_address,
        None
    );
    let wide = cidrs(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]);
    assert_eq!(
        set(&[none.clone(), wide.clone()])
            .ssh_permissions()
            .source_address,
        Some(strs(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]))
    );
    let narrow = cidrs(&["10.1.0.0/16", "192.0.2.0/24", "172.16.0.0/12"]);
    assert_eq!(
        set(&[wide.clone(), narrow, none])
            .ssh_permissions()
            .source_address,
        Some(strs(&["10.1.0.0/16", "192.0.2.7/32"]))
    );
    let disjoint = cidrs(&["198.51.100.0/24"]);
    assert_eq!(
        set(&[wide, disjoint]).ssh_permissions().source_address,
        Some(vec![]),
        "nothing in common: no address allowed"
    );
    // Duplicates and nested networks collapse.
    let messy = cidrs(&["10.0.0.0/8", "10.0.0.0/8", "10.2.0.0/16"]);
    assert_eq!(
        set(&[messy]).ssh_permissions().source_address,
        Some(strs(&["10.0.0.0/8"]))
    );
}

#[test]
fn host_principal_globs_stay_within_a_label() {
    let set = set(&[role(|s| {
        s.allow.ssh_host_principals = strs(&["web*", "10.0.0.*"]);
    })]);
    assert!(set.allows_ssh_host_principal("web1"));
    assert!(set.allows_ssh_host_principal("10.0.0.7"));
    for no in [
        "web.attacker.example",
        "10.0.0.1.evil.example",
        "web1.example.test",
    ] {
        assert!(!set.allows_ssh_host_principal(no), "{no}");
    }
    let any = set_of_star();
    assert!(any.allows_ssh_host_principal("a.b.example.test"));
}

fn set_of_star() -> RoleSet {
    set(&[role(|s| s.allow.ssh_host_principals = strs(&["*"]))])
}

#[test]
fn host_principals_allow_and_deny() {
    let host = role(|s| {
        s.allow.ssh_host_principals = strs(&["*.example.test", "localhost", "127.0.0.1", "::1"]);
        s.deny.ssh_host_principals = strs(&["secret.example.test"]);
    });
    let set = set(&[host]);
    for ok in [
        "web1.example.test",
        "WEB1.Example.Test",
        "localhost",
        "127.0.0.1",
        "0::1",
    ] {
        assert!(set.allows_ssh_host_principal(ok), "{ok}");
    }
    for no in [
        // `*` stands for part of one label: it never crosses a dot.
        "a.b.example.test",
        "secret.example.test",
        "example.test",
        "web1.example.org",
        "127.0.0.2",
        "*.example.test",
        "",
        "bad_name.example.test",
    ] {
        assert!(!set.allows_ssh_host_principal(no), "{no}");
    }
    assert!(!RoleSet::default().allows_ssh_host_principal("localhost"));
    let other_denies = role(|s| s.deny.ssh_host_principals = strs(&["*"]));
    let with_deny = RoleSet::new([set.roles().to_vec(), vec![other_denies]].concat());
    assert!(!with_deny.allows_ssh_host_principal("web1.example.test"));
}

fn deploy_prod() -> Role {
    role(|s| {
        s.allow.logins = strs(&["deploy"]);
        s.allow.node_labels = sel(&[("env", &["prod"])]);
    })
}

#[test]
fn host_logins_follow_node_labels() {
    let set = set(&[deploy_prod()]);
    let prod = set.host_logins(&labels(&[("env", "prod")])).unwrap();
    assert_eq!(prod.logins, ["deploy"]);
    assert!(prod.allows("deploy"));
    assert!(!prod.allows("root"));
    assert!(!prod.allows("deploy,root"));
    assert_eq!(set.host_logins(&labels(&[("env", "dev")])), None);
    assert_eq!(set.host_logins(&labels(&[])), None);
    assert_eq!(set.host_logins(&labels(&[("team", "web")])), None);
}

#[test]
fn host_logins_deny_wins() {
    let no_deploy = role(|s| s.deny.logins = strs(&["deploy"]));
    assert_eq!(
        set(&[deploy_prod(), no_deploy]).host_logins(&labels(&[("env", "prod")])),
        None,
        "deny.logins leaves nothing"
    );
    let two = role(|s| {
        s.allow.logins = strs(&["deploy", "ops"]);
        s.allow.node_labels = sel(&[("env", &["prod"])]);
        s.deny.logins = strs(&["ops"]);
    });
    let h = set(std::slice::from_ref(&two))
        .host_logins(&labels(&[("env", "prod")]))
        .unwrap();
    assert_eq!(h.logins, ["deploy"]);
    assert!(!h.allows("ops"));
    let deny_host = role(|s| s.deny.node_labels = sel(&[("tier", &["secret"])]));
    let both = set(&[two, deny_host]);
    assert_eq!(
        both.host_logins(&labels(&[("env", "prod"), ("tier", "secret")])),
        None,
        "deny.node_labels wins"
    );
    assert!(
        both.host_logins(&labels(&[("env", "prod"), ("tier", "web")]))
            .is_some()
    );
}

#[test]
fn host_logins_only_from_matching_roles() {
    let dev = role(|s| {
        s.allow.logins = strs(&["dev", "shared"]);
        s.allow.node_labels = sel(&[("env", &["dev"])]);
    });
    let no_labels = role(|s| s.allow.logins = strs(&["anywhere"]));
    let set = set(&[deploy_prod(), dev, no_labels]);
    assert_eq!(
        set.host_logins(&labels(&[("env", "prod")])).unwrap().logins,
        ["deploy"]
    );
    let d = set.host_logins(&labels(&[("env", "dev")])).unwrap();
    assert_eq!(d.logins, ["dev", "shared"]);
    assert!(!d.allows("deploy") && !d.allows("anywhere"));
}

#[test]
fn host_logins_templates_become_patterns() {
    let ci = role(|s| {
        s.allow.logins = strs(&["ci-{{ join.gitlab.user_login }}", "{{bot.name}}-{{join.x}}"]);
        s.allow.node_labels = sel(&[("*", &["*"])]);
        s.deny.logins = strs(&["ci-{{ join.gitlab.user_login }}-admin", "ci-root"]);
    });
    let h = set(&[ci]).host_logins(&labels(&[("env", "dev")])).unwrap();
    assert!(h.logins.is_empty());
    assert_eq!(h.login_patterns, ["*-*", "ci-*"]);
    assert_eq!(h.deny_patterns, ["ci-*-admin", "ci-root"]);
    assert!(h.allows("ci-alice"));
    assert!(!h.allows("ci-alice-admin"), "deny pattern");
    assert!(!h.allows("ci-root"), "static deny");
    assert!(!h.allows("ci-a b"), "not a valid login");
}

#[test]
fn host_logins_wildcard_selector_needs_host_labels() {
    let all = role(|s| {
        s.allow.logins = strs(&["deploy"]);
        s.allow.node_labels = sel(&[("*", &["*"])]);
    });
    let set = set(&[all]);
    assert_eq!(set.host_logins(&labels(&[])), None);
    assert_eq!(
        set.host_logins(&labels(&[("any", "thing")]))
            .unwrap()
            .logins,
        ["deploy"]
    );
}

#[test]
fn host_logins_sorted_and_deduplicated() {
    let a = role(|s| {
        s.allow.logins = strs(&["zed", "app", "{{join.x}}"]);
        s.allow.node_labels = sel(&[("env", &["prod"])]);
    });
    let b = role(|s| {
        s.allow.logins = strs(&["app", "mid", "{{join.y}}"]);
        s.allow.node_labels = sel(&[("env", &["p*"])]);
    });
    let h = set(&[a, b])
        .host_logins(&labels(&[("env", "prod")]))
        .unwrap();
    assert_eq!(h.logins, ["app", "mid", "zed"]);
    assert_eq!(h.login_patterns, ["*"]);
    assert!(h.deny_patterns.is_empty());
}

mod source_address_property {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// A CIDR string within 10.0.0.0/8 (so that lists overlap often).
    fn cidr() -> impl Strategy<Value = String> {
        (any::<u32>(), 8u8..=32).prop_map(|(bits, prefix)| {
            let bits = (10u32 << 24) | (bits & 0x00ff_ffff);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            format!("{}/{prefix}", Ipv4Addr::from(bits & mask))
        })
    }

    fn contains(list: &[String], addr: Ipv4Addr) -> bool {
        let a = Cidr::parse(&addr.to_string()).unwrap();
        list.iter().any(|c| Cidr::parse(c).unwrap().contains(&a))
    }

    proptest! {
        /// An address is allowed by the combined list exactly when every
        /// role's list allows it.
        #[test]
        fn intersection_is_exact(
            a in proptest::collection::vec(cidr(), 1..4),
            b in proptest::collection::vec(cidr(), 1..4),
            probes in proptest::collection::vec(any::<u32>(), 32),
        ) {
            let ra = role(|s| s.options.ssh_source_address = a.clone());
            let rb = role(|s| s.options.ssh_source_address = b.clone());
            let both = set(&[ra, rb]).ssh_permissions().source_address.unwrap();
            // Probe addresses near the lists' networks and at random.
            let near = a.iter().chain(&b).map(|c| {
                let addr: Ipv4Addr = c.split('/').next().unwrap().parse().unwrap();
                u32::from(addr)
            });
            for bits in probes.iter().map(|p| (10u32 << 24) | (p & 0x00ff_ffff)).chain(near) {
                let addr = Ipv4Addr::from(bits);
                prop_assert_eq!(
                    contains(&both, addr),
                    contains(&a, addr) && contains(&b, addr),
                    "{} in {:?} ∩ {:?} = {:?}", addr, a, b, both
                );
            }
        }
    }
}
