//! What an X.509-SVID caller needs beyond its holder bot's access to the
//! app: the SVID is not revoked, the app accepts its SPIFFE ID
//! (`allowed_spiffe_ids`), and the holder's current roles still grant a
//! workload identity that renders to it. Without these, any workload on the
//! agent's host that got an SVID would reach every app the bot reaches, and
//! revoking an SVID or removing its grant would not cut it off.

use sigil_types::{App, WorkloadIdentity, normalize_serial_hex};

/// Why the SVID `spiffe_id` (serial `serial_hex`) may not call `app`, if it
/// may not. `granted`: the identities the holder's current roles grant.
pub(super) fn refusal(
    app: &App,
    trust_domain: &str,
    spiffe_id: &str,
    serial_hex: &str,
    is_revoked: impl Fn(&str) -> bool,
    granted: &[WorkloadIdentity],
) -> Option<String> {
    // Fail closed: a serial that does not normalise is treated as revoked.
    if normalize_serial_hex(serial_hex).is_none_or(|s| is_revoked(&s)) {
        return Some(format!(
            "the X.509-SVID {spiffe_id} (serial {serial_hex}) is revoked"
        ));
    }
    if !app.spec.accepts_spiffe_id(spiffe_id) {
        return Some(format!(
            "app {:?} does not accept the SPIFFE ID {spiffe_id} (its spec.allowed_spiffe_ids)",
            app.metadata.name
        ));
    }
    if !granted
        .iter()
        .any(|w| w.spec.may_render_to(trust_domain, spiffe_id))
    {
        return Some(format!(
            "the holder's roles no longer grant a workload identity for {spiffe_id}"
        ));
    }
    None
}

/// Checks an app's `allowed_spiffe_ids` name this cluster's trust domain
/// (syntax is checked by the type's validation).
pub(super) fn check_trust_domain(app: &App, trust_domain: &str) -> Result<(), String> {
    for (i, entry) in app.spec.allowed_spiffe_ids.iter().enumerate() {
        let id = entry.strip_suffix("/*").unwrap_or(entry);
        let td = sigil_types::SpiffeId::parse(id)
            .map(|p| p.trust_domain().to_string())
            .map_err(|e| format!("spec.allowed_spiffe_ids[{i}]: {e}"))?;
        if td != trust_domain {
            return Err(format!(
                "spec.allowed_spiffe_ids[{i}]: {:?} is not in this cluster's trust domain {trust_domain:?} (only its own SVIDs can call an app)",
                sigil_types::text::escape_unsafe(entry)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_types::{AppSpec, Metadata, Resource, WorkloadIdentitySpec};

    const ID: &str = "spiffe://example.test/svc/web";

    fn app(allowed: &[&str]) -> App {
        Resource::new(
            Metadata::named("grafana"),
            AppSpec {
                upstream: "http://127.0.0.1:1".into(),
                public_addr: "grafana.example.test".into(),
                allowed_spiffe_ids: allowed.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    fn identity(path: &str) -> WorkloadIdentity {
        let mut spec = WorkloadIdentitySpec::default();
        spec.spiffe.id = path.into();
        Resource::new(Metadata::named("web"), spec)
    }

    fn check(app: &App, revoked: &[&str], granted: &[WorkloadIdentity]) -> Option<String> {
        refusal(
            app,
            "example.test",
            ID,
            "0a1b",
            |s| revoked.contains(&s),
            granted,
        )
    }

    #[test]
    fn an_svid_needs_the_app_to_accept_its_spiffe_id() {
        let web = [identity("/svc/web")];
        let why = check(&app(&[]), &[], &web).expect("no allowed_spiffe_ids: refused");
        assert!(why.contains("allowed_spiffe_ids"), "{why}");
        assert!(check(&app(&["spiffe://example.test/svc/other"]), &[], &web).is_some());
        assert_eq!(check(&app(&[ID]), &[], &web), None);
        assert_eq!(
            check(&app(&["spiffe://example.test/svc/*"]), &[], &web),
            None
        );
    }

    #[test]
    fn a_revoked_svid_is_refused() {
        let web = [identity("/svc/web")];
        let why = check(&app(&[ID]), &["0a1b"], &web).expect("revoked");
        assert!(why.contains("revoked"), "{why}");
        assert_eq!(check(&app(&[ID]), &["0a1c"], &web), None);
        // The certificate's serial is normalised as revocations are named.
        let r = refusal(
            &app(&[ID]),
            "example.test",
            ID,
            "A1B",
            |s| s == "0a1b",
            &web,
        );
        assert!(r.is_some_and(|w| w.contains("revoked")));
    }

    #[test]
    fn an_svid_whose_grant_was_removed_is_refused() {
        let why = check(&app(&[ID]), &[], &[]).expect("no grant left");
        assert!(why.contains("no longer grant"), "{why}");
        assert!(check(&app(&[ID]), &[], &[identity("/svc/other")]).is_some());
        assert_eq!(
            check(&app(&[ID]), &[], &[identity("/svc/{{ workload.name }}")]),
            None
        );
    }

    #[test]
    fn allowed_spiffe_ids_must_be_this_trust_domain() {
        assert!(
            check_trust_domain(&app(&[ID, "spiffe://example.test/ci/*"]), "example.test").is_ok()
        );
        let e =
            check_trust_domain(&app(&["spiffe://other.test/svc/web"]), "example.test").unwrap_err();
        assert!(e.contains("spec.allowed_spiffe_ids[0]"), "{e}");
    }
}
