//! Fuzz target bodies (issue 15). Each public function takes the fuzzer's
//! bytes, runs one of Sigil's parsers on them and asserts what must hold for
//! every input: no panic, and where a printer exists, parse → print → parse
//! gives the same value; a value that validated once validates again.
//!
//! `fuzz/fuzz_targets/*.rs` (cargo-fuzz, libFuzzer) call these, and
//! `tests/corpus.rs` replays the committed corpora and crash inputs through
//! them on the stable toolchain, so every input libFuzzer kept stays a test.

mod frame_reader;
mod jwt;
mod krl;
mod text;
mod x509;

pub use frame_reader::frame_reader;
pub use jwt::jwt;
pub use krl::krl;
pub use text::{agent_config, hpack, resources, spiffe_id, template_render};
pub use x509::x509;

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("spiffe_id", spiffe_id),
    ("template_render", template_render),
    ("resources", resources),
    ("agent_config", agent_config),
    ("jwt", jwt),
    ("hpack", hpack),
    ("krl", krl),
    ("frame_reader", frame_reader),
    ("x509", x509),
];
