//! Rule evaluation for workload identities: deny first, then allow.

use super::{Attributes, Condition, RuleEntry, WorkloadIdentitySpec};
use crate::rbac::glob_match;
use std::fmt;

/// The outcome of a workload identity's rules for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleDecision {
    /// `rule`: index of the allow entry that matched (None = no allow rules);
    /// `matched`: the attributes (name → value) that the matching entry's
    /// conditions checked.
    Allowed {
        /// Index in `rules.allow` of the matching entry.
        rule: Option<usize>,
        /// The attributes the matching entry checked.
        matched: Attributes,
    },
    /// A human-readable reason, e.g. `deny rule 0 matched (workload.unix.uid eq "0")`
    /// or `no allow rule matched: rule 0: workload.unix.uid is "1001", wanted eq "1000";
    /// rule 1: attribute workload.systemd.unit is missing`.
    Denied {
        /// Why the identity is refused.
        reason: String,
    },
}

impl RuleDecision {
    /// True for [`RuleDecision::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, RuleDecision::Allowed { .. })
    }
}

/// The single operator of a well-formed condition.
enum Op<'a> {
    Eq(&'a str),
    NotEq(&'a str),
    In(&'a [String]),
    NotIn(&'a [String]),
    Glob(&'a str),
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Eq(v) => write!(f, "eq {v:?}"),
            Op::NotEq(v) => write!(f, "not_eq {v:?}"),
            Op::In(v) => write!(f, "in {v:?}"),
            Op::NotIn(v) => write!(f, "not_in {v:?}"),
            Op::Glob(v) => write!(f, "glob {v:?}"),
        }
    }
}

impl Condition {
    /// The operator, or `None` unless exactly one is set.
    fn op(&self) -> Option<Op<'_>> {
        let mut ops = [
            self.eq.as_deref().map(Op::Eq),
            self.not_eq.as_deref().map(Op::NotEq),
            self.in_.as_deref().map(Op::In),
            self.not_in.as_deref().map(Op::NotIn),
            self.glob.as_deref().map(Op::Glob),
        ]
        .into_iter()
        .flatten();
        match (ops.next(), ops.next()) {
            (Some(op), None) => Some(op),
            _ => None,
        }
    }

    /// True if the condition holds for `attrs`. A missing attribute or a
    /// malformed condition (not exactly one operator) never holds.
    pub fn holds(&self, attrs: &Attributes) -> bool {
        let (Some(value), Some(op)) = (attrs.get(&self.attribute), self.op()) else {
            return false;
        };
        match op {
            Op::Eq(want) => value == want,
            Op::NotEq(want) => value != want,
            Op::In(list) => list.iter().any(|w| w == value),
            Op::NotIn(list) => !list.iter().any(|w| w == value),
            Op::Glob(pattern) => glob_match(pattern, value),
        }
    }

    /// Why the condition does not hold for `attrs`, or `None` if it does.
    fn failure(&self, attrs: &Attributes) -> Option<String> {
        let name = &self.attribute;
        let Some(op) = self.op() else {
            return Some(format!(
                "the condition on {name} does not set exactly one operator"
            ));
        };
        match attrs.get(name) {
            None => Some(format!("attribute {name} is missing")),
            Some(_) if self.holds(attrs) => None,
            Some(value) => Some(format!("{name} is {value:?}, wanted {op}")),
        }
    }
}

/// `workload.unix.uid eq "1000"`; a malformed condition shows its attribute
/// and `<invalid operator>`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op() {
            Some(op) => write!(f, "{} {op}", self.attribute),
            None => write!(f, "{} <invalid operator>", self.attribute),
        }
    }
}

impl RuleEntry {
    /// True if the entry has conditions and all of them hold.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        !self.conditions.is_empty() && self.conditions.iter().all(|c| c.holds(attrs))
    }

    /// The first reason the entry does not match, or `None` if it does.
    fn failure(&self, attrs: &Attributes) -> Option<String> {
        if self.conditions.is_empty() {
            return Some("it has no conditions".into());
        }
        self.conditions.iter().find_map(|c| c.failure(attrs))
    }
}

impl WorkloadIdentitySpec {
    /// Rule decision with an explanation (used for audit and `sigil
    /// workload-identity test`).
    ///
    /// Deny entries are checked first and any match refuses. Then an empty
    /// `allow` allows every workload; otherwise the first matching allow
    /// entry wins. Fails closed: a rule entry with no conditions or a
    /// condition without exactly one operator (which validation rejects)
    /// refuses the identity.
    pub fn evaluate(&self, attrs: &Attributes) -> RuleDecision {
        let sides = [("allow", &self.rules.allow), ("deny", &self.rules.deny)];
        for (side, entries) in sides {
            for (i, entry) in entries.iter().enumerate() {
                let malformed = entry.conditions.is_empty()
                    || entry.conditions.iter().any(|c| c.op().is_none());
                if malformed {
                    return RuleDecision::Denied {
                        reason: format!(
                            "{side} rule {i} is invalid (every rule needs conditions with exactly one operator each); refusing"
                        ),
                    };
                }
            }
        }
        for (i, entry) in self.rules.deny.iter().enumerate() {
            if entry.matches(attrs) {
                let conditions: Vec<String> =
                    entry.conditions.iter().map(|c| c.to_string()).collect();
                return RuleDecision::Denied {
                    reason: format!("deny rule {i} matched ({})", conditions.join(", ")),
                };
            }
        }
        if self.rules.allow.is_empty() {
            return RuleDecision::Allowed {
                rule: None,
                matched: Attributes::new(),
            };
        }
        let mut misses = Vec::new();
        for (i, entry) in self.rules.allow.iter().enumerate() {
            match entry.failure(attrs) {
                None => {
                    let matched = entry
                        .conditions
                        .iter()
                        .filter_map(|c| {
                            let v = attrs.get(&c.attribute)?;
                            Some((c.attribute.clone(), v.clone()))
                        })
                        .collect();
                    return RuleDecision::Allowed {
                        rule: Some(i),
                        matched,
                    };
                }
                Some(why) => misses.push(format!("rule {i}: {why}")),
            }
        }
        RuleDecision::Denied {
            reason: format!("no allow rule matched: {}", misses.join("; ")),
        }
    }
}
