//! Text parsers: SPIFFE IDs, workload-identity templates, resources, agent
//! configuration; and the HPACK decoder.

use std::collections::BTreeMap;

use sigil_agent::workload::authority::fuzzing::hpack_decode_blocks;
use sigil_types::{SpiffeId, WorkloadIdentitySpec, parse_resources};

/// SPIFFE ID parse: an accepted ID prints to the text it was parsed from and
/// re-parses to the same value; `SpiffeId::new` agrees with `parse`.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = SpiffeId::parse(text) else {
        return;
    };
    let printed = id.to_string();
    assert_eq!(
        printed, text,
        "an accepted SPIFFE ID prints as it was written"
    );
    let again = SpiffeId::parse(&printed).expect("a printed SPIFFE ID re-parses");
    assert_eq!(again, id);
    let built = SpiffeId::new(id.trust_domain(), id.path()).expect("parts of an ID rebuild it");
    assert_eq!(built, id);
}

/// Workload-identity template render. Input: the `spiffe.id` template, then
/// after a NUL a DNS SAN template, then NUL-separated `name=value` attributes.
/// A rendered identity's SPIFFE ID is in the trust domain and re-parses.
pub fn template_render(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let id = parts.next().unwrap_or_default();
    let san = parts.next();
    let attrs: BTreeMap<String, String> = parts
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = serde_json::json!({
        "spiffe": { "id": id, "x509": { "dns_sans": san.into_iter().collect::<Vec<_>>() } }
    });
    let Ok(spec) = serde_json::from_value::<WorkloadIdentitySpec>(spec) else {
        return;
    };
    let Ok(rendered) = spec.render("example.org", &attrs) else {
        return;
    };
    assert_eq!(rendered.spiffe_id.trust_domain(), "example.org");
    let printed = rendered.spiffe_id.to_string();
    let again = SpiffeId::parse(&printed).expect("a rendered SPIFFE ID parses");
    assert_eq!(again, rendered.spiffe_id);
    for name in &rendered.dns_sans {
        assert!(!name.is_empty() && !name.contains('/'), "DNS SAN {name:?}");
    }
}

/// Resource YAML/JSON parse + validate: every resource returned validates
/// again, and its JSON form parses back to the same resources.
pub fn resources(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_resources(text, "fuzz") else {
        return;
    };
    for r in &parsed {
        if let Err(e) = r.validate() {
            panic!("a parsed {} does not re-validate: {e}", r.kind());
        }
        // A timestamp outside RFC 3339's years cannot be printed; that is an
        // error, not a round trip to check.
        let Ok(json) = r.to_json_value() else {
            continue;
        };
        let printed = json.to_string();
        let again = parse_resources(&printed, "fuzz-json")
            .unwrap_or_else(|e| panic!("printed {} does not re-parse: {e}\n{printed}", r.kind()));
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0], r, "JSON round trip of a {}", r.kind());
    }
}

/// Agent configuration parse: never panics; an accepted text is accepted again.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if sigil_agent::AgentConfig::parse(text, "fuzz.yaml").is_ok() {
        assert!(sigil_agent::AgentConfig::parse(text, "fuzz.yaml").is_ok());
    }
}

/// The agent's HPACK decoder. Input: byte 0 picks the allowed table size,
/// then blocks, each led by a one-byte length, decoded with one decoder so
/// the dynamic table carries over. Decoding is deterministic.
pub fn hpack(data: &[u8]) {
    let Some((&size, mut rest)) = data.split_first() else {
        return;
    };
    let max_table = usize::from(size) * 64;
    let mut blocks = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (block, tail) = tail.split_at(len);
        blocks.push(block);
        rest = tail;
    }
    let first = hpack_decode_blocks(&blocks, max_table);
    let second = hpack_decode_blocks(&blocks, max_table);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "HPACK decoding is deterministic"),
        (Err(a), Err(b)) => {
            assert_eq!(a.kind(), std::io::ErrorKind::InvalidData, "{a}");
            assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => panic!("HPACK decoding differs between runs: {a:?} vs {b:?}"),
    }
}
