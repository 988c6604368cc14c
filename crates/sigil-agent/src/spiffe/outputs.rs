//! Outputs `workload-identity-x509` (`svid.pem`, `svid.key` 0600, `bundle.pem`,
//! and `svid-crl.pem` while revocations exist) and `workload-identity-jwt`
//! (`jwt_svid`, 0600). They are issued for the agent itself (no workload
//! attributes; rules may use `bot.*` and `join.*`), rewritten on every
//! rotation, bundle or CRL change, and renewed at half-life.

use std::sync::Arc;

use anyhow::Context;
use sigil_types::{Attributes, WorkloadIdentitySelector};

use super::runtime::{EntryKey, EntryKind, EntryState, Issued, Runtime, TrustView};
use crate::config::OutputConfig;
use crate::destination::{self, Destination};

/// One configured workload identity output.
pub struct SvidOutput {
    kind: EntryKind,
    selector: WorkloadIdentitySelector,
    dest: Box<dyn Destination>,
    reload_command: Vec<String>,
}

impl SvidOutput {
    /// `None` for outputs of other types.
    pub fn from_config(o: &OutputConfig) -> anyhow::Result<Option<SvidOutput>> {
        let kind = match o.kind.as_str() {
            "workload-identity-x509" => EntryKind::X509,
            "workload-identity-jwt" => {
                let mut audiences = o.audiences.clone();
                audiences.sort();
                audiences.dedup();
                EntryKind::Jwt {
                    audiences,
                    spiffe_id: String::new(),
                }
            }
            _ => return Ok(None),
        };
        let selector = o
            .selector
            .clone()
            .context("workload identity outputs need a selector")?;
        Ok(Some(SvidOutput {
            kind,
            selector,
            dest: destination::from_config(&o.destination)?,
            reload_command: o.reload_command.clone(),
        }))
    }

    pub fn describe(&self) -> String {
        let t = match self.kind {
            EntryKind::X509 => "workload-identity-x509",
            EntryKind::Jwt { .. } => "workload-identity-jwt",
        };
        format!("{t} → {}", self.dest.describe())
    }

    pub fn destination(&self) -> &dyn Destination {
        self.dest.as_ref()
    }

    fn key(&self) -> EntryKey {
        EntryKey::new(Some(&self.selector), Attributes::new(), self.kind.clone())
    }

    /// Issue (or reuse) and write once.
    pub async fn write_once(&self, rt: &Runtime) -> anyhow::Result<()> {
        let entry = rt.entry(self.key(), Some(&self.selector));
        let issued = rt
            .get(&entry)
            .await
            .map_err(crate::status_error)
            .with_context(|| format!("output {}", self.describe()))?;
        self.write(&issued, &rt.trust())?;
        crate::output::reload::run(&self.reload_command).await;
        Ok(())
    }

    /// Keep the files current until the task is dropped.
    pub async fn run(self: Arc<Self>, rt: Arc<Runtime>) {
        let entry = rt.entry(self.key(), Some(&self.selector));
        let mut state = entry.subscribe();
        let mut trust = rt.subscribe_trust();
        let mut written: Option<(usize, u64)> = None;
        loop {
            if matches!(entry.current(), EntryState::Empty)
                && let Err(s) = rt.get(&entry).await
            {
                tracing::warn!(output = %self.describe(), error = %s.message(), "workload identity output not issued");
            }
            if let EntryState::Ready(i) = entry.current() {
                let view = rt.trust();
                // Rewrite on a new issuance or a new bundle/CRL, not on every wake-up.
                let mark = (Arc::as_ptr(&i) as usize, view.sequence);
                if written != Some(mark) {
                    match self.write(&i, &view) {
                        Ok(()) => {
                            written = Some(mark);
                            tracing::info!(output = %self.describe(), "workload identity written");
                            crate::output::reload::run(&self.reload_command).await;
                        }
                        Err(e) => {
                            tracing::warn!(output = %self.describe(), error = %format!("{e:#}"), "writing the workload identity failed")
                        }
                    }
                }
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                r = trust.changed() => if r.is_err() { return },
                // Retry a failed or refused issuance now and then (the
                // runtime also retries subscribed entries on its own).
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                    if !matches!(entry.current(), EntryState::Ready(_)) {
                        let _ = rt.get(&entry).await;
                    }
                }
            }
        }
    }

    fn write(&self, issued: &Issued, view: &TrustView) -> anyhow::Result<()> {
        let d = self.dest.as_ref();
        match self.kind {
            EntryKind::X509 => {
                let svid = issued
                    .x509
                    .iter()
                    .find(|s| !view.locked_ids.contains(&s.spiffe_id))
                    .context("no X.509-SVID was issued for this selector")?;
                // Key and bundle before the certificate: a reader that sees
                // the new certificate finds its key and trust in place.
                let key = super::pem_lf("PRIVATE KEY", &svid.key_pkcs8_der);
                d.write("svid.key", key.as_bytes(), true)?;
                let bundle: String = view
                    .authorities
                    .iter()
                    .map(|a| super::pem_lf("CERTIFICATE", a))
                    .collect();
                d.write("bundle.pem", bundle.as_bytes(), false)?;
                if view.crls.is_empty() {
                    d.remove("svid-crl.pem")?;
                } else {
                    let crl: String = view
                        .crls
                        .iter()
                        .map(|c| super::pem_lf("X509 CRL", c))
                        .collect();
                    d.write("svid-crl.pem", crl.as_bytes(), false)?;
                }
                // The certificate last: its arrival means the set is complete.
                let cert: String = svid
                    .chain()
                    .map(|d| super::pem_lf("CERTIFICATE", d))
                    .collect();
                d.write("svid.pem", cert.as_bytes(), false)?;
            }
            EntryKind::Jwt { .. } => {
                let jwt = issued
                    .jwt
                    .iter()
                    .find(|s| !view.locked_ids.contains(&s.spiffe_id))
                    .context("no JWT-SVID was issued for this selector")?;
                d.write("jwt_svid", jwt.token.as_bytes(), true)?;
            }
        }
        Ok(())
    }
}
