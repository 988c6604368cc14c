//! Checks of the `kubernetes` output's fields (and that no other output has them).

use anyhow::bail;

use super::OutputConfig;

pub(super) fn validate(i: usize, o: &OutputConfig) -> anyhow::Result<()> {
    if o.kind != "kubernetes" {
        for (field, set) in [("cluster", o.cluster.is_some()), ("user", o.user.is_some())] {
            if set {
                bail!("outputs[{i}].{field}: only kubernetes outputs take {field}");
            }
        }
        return Ok(());
    }
    let Some(cluster) = &o.cluster else {
        bail!(
            "outputs[{i}].cluster: required for kubernetes: the kubernetes_cluster resource's name (`sigil kube ls` lists them)"
        );
    };
    if let Err(e) = sigil_types::check_name("kubernetes_cluster", cluster) {
        bail!("outputs[{i}].cluster: {}", e.message);
    }
    if let Some(u) = &o.user
        && let Err(e) = sigil_types::kubernetes_cluster::validate_subject_name(u, false)
    {
        bail!("outputs[{i}].user: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::parse;

    #[test]
    fn the_issue_shape_parses() {
        let c = parse(
            "  - type: kubernetes\n    cluster: prod\n    destination: {type: directory, path: /run/kube}\n",
        )
        .unwrap();
        assert_eq!(c.outputs[0].cluster.as_deref(), Some("prod"));
        assert_eq!(c.outputs[0].user, None);
        let c = parse(
            "  - type: kubernetes\n    cluster: prod\n    user: ci\n    destination: {type: directory, path: /run/kube}\n",
        )
        .unwrap();
        assert_eq!(c.outputs[0].user.as_deref(), Some("ci"));
    }

    #[test]
    fn bad_fields_are_named() {
        for (yaml, field) in [
            (
                "  - type: kubernetes\n    destination: {type: directory, path: /x}\n",
                "outputs[0].cluster",
            ),
            (
                "  - type: kubernetes\n    cluster: 'a b'\n    destination: {type: directory, path: /x}\n",
                "outputs[0].cluster",
            ),
            (
                "  - type: kubernetes\n    cluster: prod\n    user: 'ci*'\n    destination: {type: directory, path: /x}\n",
                "outputs[0].user",
            ),
            (
                "  - type: identity\n    cluster: prod\n    destination: {type: directory, path: /x}\n",
                "outputs[0].cluster",
            ),
            (
                "  - type: ssh-host\n    principals: [a.example]\n    user: ci\n    destination: {type: directory, path: /x}\n",
                "outputs[0].user",
            ),
        ] {
            let e = format!("{:#}", parse(yaml).unwrap_err());
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
