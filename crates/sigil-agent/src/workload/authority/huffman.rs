//! HPACK Huffman decoding (RFC 7541 §5.2, code in Appendix B), table-driven.
//!
//! The code's 257 symbols make a binary tree with 256 inner nodes. The decoder
//! walks it four bits at a time: [`TABLE`] gives, for each inner node and
//! nibble, the node reached, the symbol completed on the way (codes are at
//! least five bits long, so at most one per nibble), and whether stopping
//! there is a valid end (the bits since the last symbol are padding: at most
//! seven, all ones, RFC 7541 §5.2). The table is built at compile time, so a
//! string costs two lookups per byte and nothing is set up per string.

/// Why a Huffman-coded string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HuffmanError {
    /// The string contained the EOS symbol (RFC 7541 §5.2: an error).
    Eos,
    /// It ended inside a symbol with more than seven bits, or with padding
    /// that is not the most significant bits of EOS (all ones).
    BadPadding,
}

impl HuffmanError {
    pub fn as_str(self) -> &'static str {
        match self {
            HuffmanError::Eos => "Huffman string contains EOS",
            HuffmanError::BadPadding => "Huffman string has invalid padding",
        }
    }
}

/// Decode `src`, appending the octets to `out`.
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // The shortest code is five bits: at most 8/5 octets per input octet.
    out.reserve(src.len() * 8 / 5 + 1);
    let mut state = 0usize;
    let mut accept = true;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = TABLE[state][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(HuffmanError::Eos);
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol);
            }
            state = usize::from(step.next);
            accept = step.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(HuffmanError::BadPadding)
    }
}

/// One transition of the nibble automaton.
#[derive(Clone, Copy)]
struct Step {
    next: u8,
    flags: u8,
    symbol: u8,
}

/// A symbol was completed; it is `symbol`.
const EMIT: u8 = 1;
/// The string may end here.
const ACCEPT: u8 = 2;
/// EOS was decoded.
const FAIL: u8 = 4;

/// Number of symbols: the 256 octets and EOS.
const SYMBOLS: usize = 257;
/// EOS is symbol 256.
const EOS: usize = 256;
/// Children at or above this are leaves: symbol = child - LEAF.
const LEAF: u16 = 256;

static TABLE: [[Step; 16]; 256] = build_table();

/// The decoding tree: inner node -> [child for bit 0, child for bit 1].
struct Tree {
    children: [[u16; 2]; 256],
    /// Bits from the root to the node.
    depth: [u8; 256],
    /// Every bit on that path is 1.
    all_ones: [bool; 256],
}

const fn build_tree() -> Tree {
    let mut t = Tree {
        children: [[u16::MAX; 2]; 256],
        depth: [0; 256],
        all_ones: [false; 256],
    };
    t.all_ones[0] = true;
    let mut nodes = 1usize;
    let mut sym = 0usize;
    while sym < SYMBOLS {
        let (code, len) = if sym == EOS {
            (0x3fff_ffff_u32, 30u8)
        } else {
            (CODES[sym], LENGTHS[sym])
        };
        let mut node = 0usize;
        let mut i = 0u8;
        while i < len {
            let bit = ((code >> (len - 1 - i)) & 1) as usize;
            if i + 1 == len {
                assert!(t.children[node][bit] == u16::MAX, "prefix-free code");
                t.children[node][bit] = LEAF + sym as u16;
            } else {
                if t.children[node][bit] == u16::MAX {
                    assert!(nodes < 256, "257 leaves make 256 inner nodes");
                    t.children[node][bit] = nodes as u16;
                    t.depth[nodes] = t.depth[node] + 1;
                    t.all_ones[nodes] = t.all_ones[node] && bit == 1;
                    nodes += 1;
                }
                let next = t.children[node][bit];
                assert!(next < LEAF, "prefix-free code");
                node = next as usize;
            }
            i += 1;
        }
        sym += 1;
    }
    assert!(nodes == 256, "a complete code");
    t
}

const fn build_table() -> [[Step; 16]; 256] {
    let tree = build_tree();
    let mut table = [[Step {
        next: 0,
        flags: 0,
        symbol: 0,
    }; 16]; 256];
    let mut state = 0usize;
    while state < 256 {
        let mut nibble = 0usize;
        while nibble < 16 {
            let mut node = state;
            let mut flags = 0u8;
            let mut symbol = 0u8;
            let mut bit = 0;
            while bit < 4 {
                let child = tree.children[node][(nibble >> (3 - bit)) & 1];
                if child >= LEAF {
                    let sym = (child - LEAF) as usize;
                    if sym == EOS {
                        flags |= FAIL;
                    } else {
                        flags |= EMIT;
                        symbol = sym as u8;
                    }
                    node = 0;
                } else {
                    node = child as usize;
                }
                bit += 1;
            }
            if tree.all_ones[node] && tree.depth[node] <= 7 {
                flags |= ACCEPT;
            }
            table[state][nibble] = Step {
                next: node as u8,
                flags,
                symbol,
            };
            nibble += 1;
        }
        state += 1;
    }
    table
}

/// Codes of octets 0..=255, right-aligned (RFC 7541 Appendix B).
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// Their lengths in bits.
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The code of octet `b` and its length (for the tests' encoder).
#[cfg(test)]
pub(super) fn code(b: u8) -> (u32, u8) {
    (CODES[usize::from(b)], LENGTHS[usize::from(b)])
}
