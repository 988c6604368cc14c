//! Entry points for the fuzz targets in `crates/sigil-fuzz` (issue 15). Thin
//! wrappers only, so the decoder and frame types stay private to the rewriter.

use std::io;

use super::decoder::Decoder;
use super::frame::PREFACE;

/// The HTTP/2 client connection preface the rewriter expects first.
pub const CLIENT_PREFACE: &[u8] = PREFACE;

/// Decode consecutive header `blocks` with one decoder (so the dynamic table
/// carries over, as on a connection) allowed a table of `max_table` bytes.
/// Returns every decoded `(name, value)` pair, or the first error.
pub fn hpack_decode_blocks(
    blocks: &[&[u8]],
    max_table: usize,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut decoder = Decoder::new(max_table);
    let mut fields = Vec::new();
    for block in blocks {
        decoder.decode(block, |f| {
            fields.push((f.name.to_vec(), f.value.to_vec()));
            Ok(())
        })?;
    }
    Ok(fields)
}

/// One header block's decoded `(name, value)` pairs.
pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// Like [`hpack_decode_blocks`], but one result per block, ending with the
/// first error (the table is undefined after one): for comparing against
/// another decoder block by block.
pub fn hpack_decode_each(blocks: &[&[u8]], max_table: usize) -> Vec<io::Result<HeaderList>> {
    let mut decoder = Decoder::new(max_table);
    let mut results = Vec::new();
    for block in blocks {
        let mut fields = Vec::new();
        let r = decoder.decode(block, |f| {
            fields.push((f.name.to_vec(), f.value.to_vec()));
            Ok(())
        });
        let failed = r.is_err();
        results.push(r.map(|()| fields));
        if failed {
            break;
        }
    }
    results
}
