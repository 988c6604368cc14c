//! Load generators for Sigil benchmarks live in `benches/*.rs`; see README.md.
