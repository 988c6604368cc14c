//! Whether a workload identity's `spiffe.id` template could have rendered a
//! given SPIFFE ID, whatever the attested attributes were: each placeholder
//! stands for one non-empty path segment (what rendering allows). The app
//! proxy uses it to check that an SVID's grant still stands.

use super::WorkloadIdentitySpec;
use super::template::{self, Piece};
use crate::spiffe::SpiffeId;

impl WorkloadIdentitySpec {
    /// True if `spiffe.id` could render to `id` in `trust_domain`.
    pub fn may_render_to(&self, trust_domain: &str, id: &str) -> bool {
        let Ok(parsed) = SpiffeId::parse(id) else {
            return false;
        };
        if parsed.trust_domain() != trust_domain {
            return false;
        }
        match template::parse(&self.spiffe.id) {
            Ok(pieces) => matches(&pieces, parsed.path()),
            Err(_) => false,
        }
    }
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn matches(pieces: &[Piece<'_>], s: &str) -> bool {
    match pieces.split_first() {
        None => s.is_empty(),
        Some((Piece::Literal(l), rest)) => s.strip_prefix(l).is_some_and(|t| matches(rest, t)),
        Some((Piece::Attribute(_), rest)) => {
            let run = s.find(|c| !is_segment_char(c)).unwrap_or(s.len());
            (1..=run).any(|n| matches(rest, &s[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::workload_identity::{SpiffeTemplate, WorkloadIdentitySpec};

    fn spec(id: &str) -> WorkloadIdentitySpec {
        WorkloadIdentitySpec {
            spiffe: SpiffeTemplate {
                id: id.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn templates_match_what_they_could_render() {
        let td = "example.test";
        let fixed = spec("/svc/web");
        assert!(fixed.may_render_to(td, "spiffe://example.test/svc/web"));
        assert!(!fixed.may_render_to(td, "spiffe://example.test/svc/web2"));
        assert!(!fixed.may_render_to(td, "spiffe://other.test/svc/web"));
        assert!(!fixed.may_render_to(td, "spiffe://example.test/svc"));
        let t = spec("/ns/{{ workload.k8s.namespace }}/sa/{{workload.k8s.sa}}");
        assert!(t.may_render_to(td, "spiffe://example.test/ns/prod/sa/web"));
        assert!(!t.may_render_to(td, "spiffe://example.test/ns/prod/x/sa/web"));
        assert!(!t.may_render_to(td, "spiffe://example.test/ns/prod/sa"));
        let mixed = spec("/uid-{{ workload.unix.uid }}");
        assert!(mixed.may_render_to(td, "spiffe://example.test/uid-1000"));
        assert!(!mixed.may_render_to(td, "spiffe://example.test/uid-"));
        assert!(!mixed.may_render_to(td, "spiffe://example.test/uid-1/2"));
        assert!(!fixed.may_render_to(td, "not a spiffe id"));
    }
}
