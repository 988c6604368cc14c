//! Files the agent writes: every directory is opened without following
//! symlinks and checked for its owner and mode, and every file is written
//! atomically relative to that directory (see the `sigil-fs` crate).

pub use sigil_fs::{
    DirKind, PUBLIC, SECRET, SafeDir, check_parents, check_writable, read_file, write_atomic,
};

/// One PEM block with LF line endings (the `pem` crate defaults to CRLF).
pub fn pem_lf(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
