//! The adversarial suite (issue 15): one test per named attack, grouped by
//! surface, each asserting the exact refusal and that nothing was issued or
//! changed. Every case carries a `/// attack: SURFACE | ATTACK | REFUSAL`
//! line; `registry::readme_lists_every_case` keeps README.md's table equal
//! to those lines. Real `sigil` processes throughout (tests/common).

#[path = "../common/mod.rs"]
mod common;

mod harness;

mod admin;
mod audit;
mod certificates;
mod challenges;
mod credentials;
mod id_tokens;
mod outputs;
mod public_https;
mod registry;
mod resources;
mod spiffe;
mod tokens;
