//! Text parsers: SPIFFE IDs, workload-identity templates, resources, agent
//! configuration; and the HPACK decoder.

use std::collections::BTreeMap;

use sigil_agent::workload::authority::fuzzing::{
    HeaderList, hpack_decode_blocks, hpack_decode_each,
};
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
/// the dynamic table carries over. Decoding is deterministic, and agrees with
/// an independent decoder (`loona-hpack`) block by block: the same header
/// list, or both refuse, except for [`hpack_divergence_accepted`]'s cases.
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
    hpack_differential(&blocks, max_table);
}

/// Ours against `loona-hpack`, configured alike (allowed size `max_table`,
/// starting table `min(max_table, 4096)`), block after block until either
/// refuses or they part in an accepted way (their tables may differ after).
fn hpack_differential(blocks: &[&[u8]], max_table: usize) {
    let ours = hpack_decode_each(blocks, max_table);
    let mut theirs = loona_hpack::Decoder::new();
    theirs.set_max_allowed_table_size(max_table);
    theirs.set_max_table_size(max_table.min(4096));
    for (i, (block, ours)) in blocks.iter().zip(ours).enumerate() {
        match (ours, theirs.decode(block)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "block {i} {block:02x?}: header lists differ"),
            (Err(_), Err(_)) => return,
            (ours, theirs) => {
                assert!(
                    hpack_divergence_accepted(&ours, &theirs),
                    "block {i} {block:02x?}: ours {ours:?}, loona-hpack {theirs:?}"
                );
                return;
            }
        }
    }
}

/// Where the two decoders may part, both on the dynamic table size update
/// (RFC 7541 §4.2, §6.3):
/// - one after a header field in the same block: a decoding error per §4.2,
///   which we return; loona-hpack applies it;
/// - one ending the block: valid HPACK (nothing requires a field after it),
///   which we accept; loona-hpack refuses it (`SizeUpdateAtEnd`).
fn hpack_divergence_accepted(
    ours: &std::io::Result<HeaderList>,
    theirs: &Result<HeaderList, loona_hpack::decoder::DecoderError>,
) -> bool {
    match (ours, theirs) {
        (Err(e), Ok(_)) => e.to_string() == "HPACK table size update after a header field",
        (Ok(_), Err(loona_hpack::decoder::DecoderError::SizeUpdateAtEnd)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_hpack_divergences_pass() {
        use loona_hpack::decoder::DecoderError;
        type Fields = Vec<(Vec<u8>, Vec<u8>)>;
        fn fields<E>() -> Result<Fields, E> {
            Ok(vec![(b":method".to_vec(), b"GET".to_vec())])
        }
        let after_field = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "HPACK table size update after a header field",
        );
        assert!(hpack_divergence_accepted(&Err(after_field), &fields()));
        assert!(hpack_divergence_accepted(
            &fields(),
            &Err(DecoderError::SizeUpdateAtEnd)
        ));
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "HPACK index 0");
        assert!(!hpack_divergence_accepted(&Err(other), &fields()));
        assert!(!hpack_divergence_accepted(
            &fields(),
            &Err(DecoderError::HeaderIndexOutOfBounds)
        ));
        // Both cases, end to end: a size update after `:method GET`, and a
        // block that is only a size update.
        hpack(&[64, 3, 0x82, 0x20, 0x82]);
        hpack(&[64, 1, 0x20, 1, 0x82]);
    }
}
