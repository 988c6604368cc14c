//! The HPACK decoder and its Huffman tables against RFC 7541 Appendix C, a
//! second implementation (`loona-hpack`), and malformed and random input.

use std::io;

use super::decoder::Decoder;
use super::huffman::{self, HuffmanError};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> io::Result<Fields> {
    let mut out = Vec::new();
    d.decode(block, |f| {
        out.push((f.name.to_vec(), f.value.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Huffman-encode `s` with the code table (the test's own encoder).
fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in s {
        let (code, len) = huffman::code(b);
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
    let mut out = Vec::new();
    huffman::decode(src, &mut out).map(|()| out)
}

#[test]
fn rfc7541_c3_requests_without_huffman() {
    let mut d = Decoder::new(4096);
    let first = decode(&mut d, &hex("828684410f7777772e6578616d706c652e636f6d")).expect("C.3.1");
    assert_eq!(
        first,
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com")
        ])
    );
    assert_eq!(d.table_size(), 57);
    let second = decode(&mut d, &hex("828684be58086e6f2d6361636865")).expect("C.3.2");
    assert_eq!(second[4], fields(&[("cache-control", "no-cache")])[0]);
    assert_eq!(second[3], fields(&[(":authority", "www.example.com")])[0]);
    assert_eq!(d.table_size(), 110);
    let third = decode(
        &mut d,
        &hex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
    )
    .expect("C.3.3");
    assert_eq!(
        third,
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value")
        ])
    );
    assert_eq!(d.table_size(), 164);
}

#[test]
fn rfc7541_c4_requests_with_huffman() {
    let mut d = Decoder::new(4096);
    let first = decode(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff")).expect("C.4.1");
    assert_eq!(first[3], fields(&[(":authority", "www.example.com")])[0]);
    assert_eq!(d.table_size(), 57);
    let second = decode(&mut d, &hex("828684be5886a8eb10649cbf")).expect("C.4.2");
    assert_eq!(second[4], fields(&[("cache-control", "no-cache")])[0]);
    assert_eq!(d.table_size(), 110);
    let third = decode(
        &mut d,
        &hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
    )
    .expect("C.4.3");
    assert_eq!(third[4], fields(&[("custom-key", "custom-value")])[0]);
    assert_eq!(d.table_size(), 164);
}

#[test]
fn rfc7541_c6_responses_with_huffman_and_eviction() {
    // The example's table holds 256 octets, so entries are evicted.
    let mut d = Decoder::new(256);
    let first = decode(
        &mut d,
        &hex("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3"),
    )
    .expect("C.6.1");
    assert_eq!(
        first,
        fields(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com")
        ])
    );
    assert_eq!(d.table_size(), 222);
    let second = decode(&mut d, &hex("4883640effc1c0bf")).expect("C.6.2");
    assert_eq!(second[0], fields(&[(":status", "307")])[0]);
    assert_eq!(
        second[3],
        fields(&[("location", "https://www.example.com")])[0]
    );
    assert_eq!(d.table_size(), 222);
    let third = decode(
        &mut d,
        &hex("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007"),
    )
    .expect("C.6.3");
    assert_eq!(
        third,
        fields(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            (
                "set-cookie",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
            )
        ])
    );
    assert_eq!(d.table_size(), 215);
}

#[test]
fn every_octet_round_trips_through_huffman() {
    for b in 0..=255u8 {
        let s = [b, b'a', b, 0xff, b];
        assert_eq!(huffman_decode(&huffman_encode(&s)), Ok(s.to_vec()), "{b}");
    }
    let all: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all));
    assert_eq!(huffman_decode(&[]), Ok(Vec::new()));
}

#[test]
fn huffman_padding_and_eos_are_checked() {
    // 'a' is 00011: three bits of padding must be ones.
    assert_eq!(huffman_decode(&[0x1f]), Ok(b"a".to_vec()));
    assert_eq!(huffman_decode(&[0x18]), Err(HuffmanError::BadPadding));
    // Eight or more bits of padding, even all ones, are an error.
    assert_eq!(huffman_decode(&[0x1f, 0xff]), Err(HuffmanError::BadPadding));
    assert_eq!(huffman_decode(&[0xff]), Err(HuffmanError::BadPadding));
    // EOS (30 ones) inside a string.
    assert_eq!(
        huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
        Err(HuffmanError::Eos)
    );
    // A code cut short that is not a prefix of EOS: 0xfe is 1111111 then 0.
    assert_eq!(huffman_decode(&[0xfe]), Err(HuffmanError::BadPadding));
}

/// Each malformed block is a clean InvalidData error.
#[test]
fn malformed_blocks_are_protocol_errors() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("index 0", vec![0x80]),
        ("index past the tables", vec![0xbe]),
        ("index far past the tables", vec![0xff, 0xff, 0x7f]),
        ("integer truncated", vec![0xff, 0x80]),
        ("integer too long", vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("name index 0 without a name", vec![0x40]),
        ("literal name index past the tables", vec![0x7e, 0x00]),
        ("string past the block", vec![0x00, 0x05, b'a', b'b']),
        (
            "string length overflows",
            vec![0x00, 0x7f, 0xff, 0xff, 0xff, 0x7f],
        ),
        ("value missing", vec![0x00, 0x01, b'a']),
        ("Huffman padding", vec![0x00, 0x81, 0x18, 0x00]),
        (
            "Huffman EOS",
            vec![0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
        ),
        (
            "Huffman too much padding",
            vec![0x00, 0x82, 0x1f, 0xff, 0x00],
        ),
        // 001 11111 + 4969 = 5000 > 4096.
        ("table size above the allowed", vec![0x3f, 0xe9, 0x26]),
        ("table size update after a field", vec![0x82, 0x20]),
    ];
    for (what, block) in cases {
        let mut d = Decoder::new(4096);
        match decode(&mut d, block) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}"),
            Ok(f) => panic!("{what}: accepted as {f:?}"),
        }
    }
}

#[test]
fn table_size_updates_shrink_and_clear() {
    let mut d = Decoder::new(4096);
    decode(&mut d, &hex("828684410f7777772e6578616d706c652e636f6d")).expect("C.3.1");
    assert_eq!(d.table_size(), 57);
    // Size 0 empties the table, then it may grow back; then index 62 is gone.
    decode(&mut d, &[0x20, 0x3f, 0xe1, 0x1f]).expect("updates");
    assert_eq!(d.table_size(), 0);
    assert!(decode(&mut d, &[0xbe]).is_err());
    // An entry larger than the whole table empties it without an error.
    let mut d = Decoder::new(64);
    let mut block = vec![0x40, 0x01, b'n', 0x40];
    block.extend_from_slice(&[b'v'; 64]);
    decode(&mut d, &block).expect("oversize entry");
    assert_eq!(d.table_size(), 0);
}

/// Random blocks and random mutations of valid ones: never a panic, and
/// whenever both decoders accept, the same fields.
#[test]
fn random_input_agrees_with_another_decoder_or_fails_cleanly() {
    let seeds = [
        hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"),
        hex("828684be5886a8eb10649cbf"),
        hex(
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        ),
        hex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut agreed = 0;
    for i in 0..20_000 {
        let block: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 40) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut b = seeds[(next() % 4) as usize].clone();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            b
        };
        let mut ours = Decoder::new(4096);
        let mut theirs = loona_hpack::Decoder::new();
        match (decode(&mut ours, &block), theirs.decode(&block)) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{block:02x?}");
                agreed += 1;
            }
            (Err(e), _) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            (Ok(_), Err(_)) => {}
        }
    }
    assert!(agreed > 100, "too few valid blocks to compare ({agreed})");
}
