//! Checks of the `ssh-host` output's fields (and that no other output has them).

use anyhow::bail;

use super::OutputConfig;

/// At most this many principals or labels (the auth service's limits).
const MAX_PRINCIPALS: usize = 64;
const MAX_LABELS: usize = 64;

pub(super) fn validate(i: usize, o: &OutputConfig) -> anyhow::Result<()> {
    if o.kind != "ssh-host" {
        for (field, set) in [
            ("principals", !o.principals.is_empty()),
            ("labels", !o.labels.is_empty()),
        ] {
            if set {
                bail!("outputs[{i}].{field}: only ssh-host outputs take {field}");
            }
        }
        return Ok(());
    }
    if o.principals.is_empty() {
        bail!(
            "outputs[{i}].principals: required for ssh-host: the host's names and addresses, e.g. [web1.example.test, 127.0.0.1]"
        );
    }
    check_host_names(
        &format!("outputs[{i}].principals"),
        &o.principals,
        MAX_PRINCIPALS,
    )?;
    if o.labels.len() > MAX_LABELS {
        bail!("outputs[{i}].labels: at most {MAX_LABELS} labels");
    }
    for (k, v) in &o.labels {
        if let Err(e) =
            sigil_types::check_label_key(k).and_then(|()| sigil_types::check_label_value(v))
        {
            bail!("outputs[{i}].labels: {e}");
        }
    }
    Ok(())
}

/// At most `max` host names or addresses, each one a certificate may carry
/// (no globs); errors name `field[j]`.
pub(super) fn check_host_names(field: &str, names: &[String], max: usize) -> anyhow::Result<()> {
    if names.len() > max {
        bail!("{field}: at most {max} names");
    }
    for (j, n) in names.iter().enumerate() {
        if let Err(e) = sigil_types::validate_host_principal(n, false) {
            bail!("{field}[{j}]: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::parse;

    #[test]
    fn the_issue_shape_parses() {
        let c = parse(
            "  - type: ssh-host\n    principals: [web1.example.test, localhost, 127.0.0.1]\n    labels: {env: prod, team: web}\n    destination: {type: directory, path: /etc/ssh/sigil}\n",
        )
        .unwrap();
        assert_eq!(c.outputs[0].principals.len(), 3);
        assert_eq!(c.outputs[0].labels["env"], "prod");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                "  - type: ssh-host\n    destination: {type: directory, path: /x}\n",
                "outputs[0].principals",
            ),
            (
                "  - type: ssh-host\n    principals: [ok.example, 'bad host']\n    destination: {type: directory, path: /x}\n",
                "outputs[0].principals[1]",
            ),
            (
                "  - type: ssh-host\n    principals: ['*.example.test']\n    destination: {type: directory, path: /x}\n",
                "outputs[0].principals[0]",
            ),
            (
                "  - type: ssh-host\n    principals: [a.example]\n    labels: {'bad key!': x}\n    destination: {type: directory, path: /x}\n",
                "outputs[0].labels",
            ),
            (
                "  - type: ssh-host\n    principals: [a.example]\n    reload_command: ['']\n    destination: {type: directory, path: /x}\n",
                "outputs[0].reload_command",
            ),
            (
                "  - type: identity\n    principals: [a.example]\n    destination: {type: directory, path: /x}\n",
                "outputs[0].principals",
            ),
            (
                "  - type: ssh-host\n    principals: [a.example]\n    destination: {type: directory, path: /x, group: '0'}\n",
                "outputs[0].destination.group: not supported for ssh-host outputs",
            ),
            (
                "  - type: identity\n    reload_command: ['']\n    destination: {type: directory, path: /x}\n",
                "outputs[0].reload_command",
            ),
        ];
        for (yaml, field) in cases {
            let e = format!("{:#}", parse(yaml).unwrap_err());
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
