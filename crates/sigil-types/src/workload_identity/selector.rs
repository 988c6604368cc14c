//! Selecting workload identities by name or by labels (agent configs and the
//! server share this).

use crate::rbac::entry_matches;
use crate::resource::{ValidationError, validate_name};
use crate::role::de_label_map;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Picks workload identities by name or labels (YAML `{name: payments}` or
/// `{labels: {env: prod}}`; label values are globs, one string or a list,
/// like role label maps).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentitySelector {
    /// Exact workload identity name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector: every key must be present with a value matching one of
    /// its globs. The key `*` means any label (with value `*`, everything).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_label_map"
    )]
    pub labels: BTreeMap<String, Vec<String>>,
}

impl WorkloadIdentitySelector {
    /// Selects the workload identity called `name`.
    pub fn by_name(name: impl Into<String>) -> Self {
        WorkloadIdentitySelector {
            name: Some(name.into()),
            labels: BTreeMap::new(),
        }
    }

    /// True if the workload identity `name` with `labels` is selected. A
    /// selector with neither name nor labels selects nothing; one with both
    /// (which [`validate`](Self::validate) rejects) needs both to match.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.name.is_none() && self.labels.is_empty() {
            return false;
        }
        self.name.as_deref().is_none_or(|n| n == name)
            && self
                .labels
                .iter()
                .all(|(key, patterns)| entry_matches(key, patterns, labels))
    }

    /// Checks that exactly one of `name` / non-empty `labels` is set, the
    /// name is a valid resource name and no label value list is empty. Field
    /// paths are relative (`name`, `labels.env`); callers prefix them.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (&self.name, self.labels.is_empty()) {
            (Some(_), false) => Err(ValidationError::new(
                "name",
                "set either name or labels, not both",
            )),
            (None, true) => Err(ValidationError::new(
                "name",
                "set a workload identity name or a non-empty labels selector",
            )),
            (Some(name), true) => validate_name("workload_identity", name)
                .map_err(|e| ValidationError::new("name", e.message)),
            (None, false) => {
                for (key, values) in &self.labels {
                    if key.is_empty() {
                        return Err(ValidationError::new(
                            "labels",
                            "label name must not be empty",
                        ));
                    }
                    if values.is_empty() {
                        return Err(ValidationError::new(
                            format!("labels.{key}"),
                            "label value list must not be empty (use \"*\" to match any value)",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}
