//! A one-block DEFLATE encoder with the fixed Huffman codes (RFC 1951, 3.2.6), for messages of
//! a few hundred bytes.
//!
//! zlib builds and compares dynamic Huffman trees for every block, which for a 200-byte task
//! message costs several times more than finding its matches, and its output for such inputs
//! is a fixed-code block anyway (the tree header would not pay for itself). This encoder does
//! greedy LZ77 over a small hash table and writes one fixed-code block: same stream format,
//! readable by any inflater, within a few bytes of zlib's size for these inputs.

/// Inputs up to this size use the fixed-code encoder; larger ones go to zlib.
pub const MAX_INPUT: usize = 1024;

const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const HASH_BITS: u32 = 10;

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Writes bits least-significant first, as DEFLATE packs them.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    count: u32,
}

impl BitWriter<'_> {
    fn bits(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.count;
        self.count += count;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    /// Huffman codes are defined most-significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.bits(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.acc = 0;
        self.count = 0;
    }
}

fn literal_or_length(w: &mut BitWriter<'_>, symbol: u32) {
    match symbol {
        0..=143 => w.code(0x30 + symbol, 8),
        144..=255 => w.code(0x190 + symbol - 144, 9),
        256..=279 => w.code(symbol - 256, 7),
        _ => w.code(0xC0 + symbol - 280, 8),
    }
}

fn emit_match(w: &mut BitWriter<'_>, length: usize, distance: usize) {
    let li = LENGTH_BASE
        .iter()
        .rposition(|&b| usize::from(b) <= length)
        .unwrap_or(0);
    literal_or_length(w, 257 + li as u32);
    w.bits(
        (length - usize::from(LENGTH_BASE[li])) as u32,
        u32::from(LENGTH_EXTRA[li]),
    );
    let di = DIST_BASE
        .iter()
        .rposition(|&b| usize::from(b) <= distance)
        .unwrap_or(0);
    w.code(di as u32, 5);
    w.bits(
        (distance - usize::from(DIST_BASE[di])) as u32,
        u32::from(DIST_EXTRA[di]),
    );
}

fn hash(data: &[u8], at: usize) -> usize {
    let v = u32::from(data[at]) | u32::from(data[at + 1]) << 8 | u32::from(data[at + 2]) << 16;
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
}

/// Appends one final fixed-code DEFLATE block holding `data` (at most `MAX_INPUT` bytes).
pub fn deflate_fixed(data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(data.len() <= MAX_INPUT);
    // Positions are stored + 1 so that 0 means "empty".
    let mut table = [0u16; 1 << HASH_BITS];
    let mut w = BitWriter {
        out,
        acc: 0,
        count: 0,
    };
    w.bits(1, 1); // BFINAL
    w.bits(1, 2); // BTYPE = 01, fixed Huffman codes
    let mut at = 0;
    while at < data.len() {
        let mut best = 0;
        let mut from = 0;
        if at + MIN_MATCH <= data.len() {
            let h = hash(data, at);
            let candidate = usize::from(table[h]);
            table[h] = (at + 1) as u16;
            if candidate > 0 {
                let start = candidate - 1;
                let limit = (data.len() - at).min(MAX_MATCH);
                let len = data[start..]
                    .iter()
                    .zip(&data[at..at + limit])
                    .take_while(|(a, b)| a == b)
                    .count();
                if len >= MIN_MATCH {
                    best = len;
                    from = start;
                }
            }
        }
        if best >= MIN_MATCH {
            emit_match(&mut w, best, at - from);
            // Index the positions inside the match too, so later repeats can find them.
            for p in at + 1..(at + best).min(data.len().saturating_sub(MIN_MATCH - 1)) {
                table[hash(data, p)] = (p + 1) as u16;
            }
            at += best;
        } else {
            literal_or_length(&mut w, u32::from(data[at]));
            at += 1;
        }
    }
    literal_or_length(&mut w, 256); // end of block
    w.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_is_a_valid_block() {
        let mut out = Vec::new();
        deflate_fixed(b"", &mut out);
        assert_eq!(out, [0x03, 0x00]); // what zlib writes for an empty fixed block
    }

    #[test]
    fn zlib_inflates_what_it_writes() {
        use crate::zlib::{decompress, Format};
        let mut seed = 12345u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        };
        for len in [1, 2, 3, 4, 5, 10, 100, 259, 300, 517, 1000, MAX_INPUT] {
            for alphabet in [1u8, 2, 4, 26, 255] {
                let data: Vec<u8> = (0..len).map(|_| next() % alphabet).collect();
                // A raw deflate stream wrapped as zlib (header 0x78 0x9c, Adler-32 trailer).
                let mut stream = vec![0x78, 0x9c];
                deflate_fixed(&data, &mut stream);
                let adler = adler32(&data);
                stream.extend_from_slice(&adler.to_be_bytes());
                assert_eq!(
                    decompress(&stream, Format::Zlib).unwrap(),
                    data,
                    "{len} {alphabet}"
                );
            }
        }
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    #[test]
    fn length_and_distance_tables_cover_their_ranges() {
        for length in MIN_MATCH..=MAX_MATCH {
            let i = LENGTH_BASE
                .iter()
                .rposition(|&b| usize::from(b) <= length)
                .unwrap();
            assert!(length - usize::from(LENGTH_BASE[i]) < 1 << LENGTH_EXTRA[i] || i == 28);
        }
        for distance in 1..=MAX_INPUT {
            let i = DIST_BASE
                .iter()
                .rposition(|&b| usize::from(b) <= distance)
                .unwrap();
            assert!(distance - usize::from(DIST_BASE[i]) < 1 << DIST_EXTRA[i]);
        }
    }
}
