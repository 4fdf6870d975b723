//! gzip and zlib streams for `huey.serializer`, through zlib-rs's safe API.
//!
//! Output is an ordinary gzip member (RFC 1952) or zlib stream (RFC 1950) that Python's
//! `gzip`/`zlib` (so huey 3.5.4) read; input is whatever they write.
//!
//! Task messages are a few hundred bytes, where setting up a deflate stream and building its
//! Huffman trees costs far more than finding the matches. So each thread keeps its deflate
//! streams and resets them (a new one allocates and clears ~300 KiB), and messages up to
//! `SMALL_MESSAGE` bytes are compressed at level 1 with the fixed-code strategy (zlib's
//! `Z_FIXED`: the static Huffman codes of RFC 1951, no trees to build), which for inputs this
//! small is within a few bytes of the best size. Larger ones use the level asked for.
//!
//! Inflating is bounded: output grows geometrically up to `limit + 1` bytes and no further, so
//! a message that inflates past the limit (a "zip bomb") is refused having allocated about
//! `limit` bytes, never its whole output.

use std::cell::RefCell;

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status, Strategy};

/// Messages up to this size are deflated with the static Huffman codes.
pub const SMALL_MESSAGE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zlib,
}

impl Format {
    /// zlib's `windowBits`: a 32 KiB window (so a zlib stream starts with 0x78, the byte huey
    /// looks for), plus 16 for a gzip wrapper.
    fn window_bits(self) -> i32 {
        match self {
            Format::Gzip => 16 + 15,
            Format::Zlib => 15,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompressionError {
    /// The stream is damaged or truncated (zlib's message, or ours).
    Corrupt(String),
    /// The stream inflates to more than `limit` bytes.
    TooLarge { limit: usize },
    /// Deflate itself failed (out of memory).
    Deflate(&'static str),
}

struct Deflater {
    level: i32,
    format: Format,
    stream: Deflate,
}

thread_local! {
    static DEFLATERS: RefCell<Vec<Deflater>> = const { RefCell::new(Vec::new()) };
}

/// The (level, strategy) a message of `len` bytes is deflated with at the asked `level`.
fn settings_for(len: usize, level: u32) -> (i32, Strategy) {
    if level > 0 && len <= SMALL_MESSAGE {
        (1, Strategy::Fixed)
    } else {
        (level.min(9) as i32, Strategy::Default)
    }
}

/// Compresses `data` at `level` (0-9) into one gzip member or zlib stream.
pub fn compress(data: &[u8], level: u32, format: Format) -> Result<Vec<u8>, CompressionError> {
    let (level, strategy) = settings_for(data.len(), level);
    // The bound is for a zlib stream; a gzip wrapper is 12 bytes longer.
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len()) + 32];
    DEFLATERS.with_borrow_mut(|cache| {
        let at = match cache
            .iter()
            .position(|d| d.level == level && d.format == format)
        {
            Some(at) => at,
            None => {
                let config = DeflateConfig {
                    level,
                    window_bits: format.window_bits(),
                    strategy,
                    ..DeflateConfig::default()
                };
                cache.push(Deflater {
                    level,
                    format,
                    stream: Deflate::new_with_config(config),
                });
                cache.len() - 1
            }
        };
        let stream = &mut cache[at].stream;
        stream.reset();
        let status = stream
            .compress(data, &mut out, DeflateFlush::Finish)
            .map_err(|e| CompressionError::Deflate(e.as_str()))?;
        if status != Status::StreamEnd {
            return Err(CompressionError::Deflate("output buffer too small"));
        }
        out.truncate(stream.total_out() as usize);
        Ok(out)
    })
}

/// Decompresses a zlib stream, or every member of a gzip stream (checking each CRC), into at
/// most `limit` bytes.
pub fn decompress(data: &[u8], format: Format, limit: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let mut filled = 0;
    let mut input = data;
    loop {
        let used = inflate_one(input, format, limit, &mut out, &mut filled)?;
        input = &input[used..];
        if input.is_empty() {
            out.truncate(filled);
            return Ok(out);
        }
        if format == Format::Zlib {
            return Err(CompressionError::Corrupt(
                "trailing bytes after the zlib stream".into(),
            ));
        }
        // Concatenated gzip members decompress to the concatenation, as in Python.
    }
}

/// Inflates one zlib stream or gzip member from the start of `input` into `out[filled..]`,
/// growing `out` as needed but never past `limit + 1` bytes; returns the bytes of `input` used.
fn inflate_one(
    input: &[u8],
    format: Format,
    limit: usize,
    out: &mut Vec<u8>,
    filled: &mut usize,
) -> Result<usize, CompressionError> {
    let cap = limit.saturating_add(1);
    let mut stream = Inflate::new(true, format.window_bits() as u8);
    let corrupt = |stream: &Inflate, what: &str| {
        CompressionError::Corrupt(stream.error_message().unwrap_or(what).to_owned())
    };
    loop {
        if *filled == out.len() {
            if out.len() >= cap {
                return Err(CompressionError::TooLarge { limit });
            }
            let grown = (out.len() * 2).max(input.len() * 4).max(256).min(cap);
            out.resize(grown, 0);
        }
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let status = stream
            .decompress(
                &input[in_before as usize..],
                &mut out[*filled..],
                InflateFlush::NoFlush,
            )
            .map_err(|e| corrupt(&stream, e.as_str()))?;
        *filled += (stream.total_out() - out_before) as usize;
        if *filled > limit {
            return Err(CompressionError::TooLarge { limit });
        }
        let progressed = stream.total_in() > in_before || stream.total_out() > out_before;
        match status {
            Status::StreamEnd => return Ok(stream.total_in() as usize),
            _ if stream.total_in() as usize == input.len() && *filled < out.len() => {
                // Every byte read, room left, and the stream has not ended.
                return Err(CompressionError::Corrupt(
                    "truncated compressed data".into(),
                ));
            }
            Status::BufError if !progressed && *filled < out.len() => {
                return Err(corrupt(&stream, "compressed data made no progress"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 << 20;

    #[test]
    fn round_trip_sizes_and_levels() {
        for len in [0, 1, 200, SMALL_MESSAGE, SMALL_MESSAGE + 1, 5_000, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for format in [Format::Gzip, Format::Zlib] {
                for level in [0, 1, 6, 9] {
                    let packed = compress(&data, level, format).unwrap();
                    let back = decompress(&packed, format, LIMIT).unwrap();
                    assert_eq!(back, data, "{format:?} {len} level {level}");
                }
            }
        }
    }

    #[test]
    fn headers_are_the_ones_huey_looks_for() {
        assert_eq!(compress(b"x", 6, Format::Zlib).unwrap()[0], 0x78);
        assert_eq!(compress(b"x", 6, Format::Gzip).unwrap()[..2], [0x1f, 0x8b]);
        let big = vec![7u8; 10_000];
        assert_eq!(compress(&big, 9, Format::Zlib).unwrap()[0], 0x78);
    }

    #[test]
    fn small_messages_use_the_fixed_codes() {
        assert_eq!(settings_for(200, 6), (1, Strategy::Fixed));
        assert_eq!(settings_for(200, 0), (0, Strategy::Default));
        assert_eq!(settings_for(SMALL_MESSAGE + 1, 6), (6, Strategy::Default));
        // A fixed-code block: BTYPE (bits 1-2 of the first deflate byte) is 01.
        let zlib = compress(b"hello hello hello hello", 6, Format::Zlib).unwrap();
        assert_eq!((zlib[2] >> 1) & 0b11, 0b01);
    }

    #[test]
    fn concatenated_gzip_members() {
        let mut both = compress(b"hello ", 6, Format::Gzip).unwrap();
        both.extend(compress(b"world", 6, Format::Gzip).unwrap());
        assert_eq!(
            decompress(&both, Format::Gzip, LIMIT).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn corrupt_truncated_and_trailing_streams_fail() {
        let packed = compress(&[7u8; 1000], 6, Format::Zlib).unwrap();
        for cut in [1, 3, packed.len() / 2, packed.len() - 1] {
            let result = decompress(&packed[..cut], Format::Zlib, LIMIT);
            assert!(
                matches!(result, Err(CompressionError::Corrupt(_))),
                "cut {cut}"
            );
        }
        let mut trailing = packed.clone();
        trailing.push(0);
        assert!(decompress(&trailing, Format::Zlib, LIMIT).is_err());
        let mut flipped = compress(b"some text to protect", 6, Format::Gzip).unwrap();
        let n = flipped.len();
        flipped[n - 6] ^= 1; // inside the CRC
        assert!(decompress(&flipped, Format::Gzip, LIMIT).is_err());
        assert!(decompress(b"not compressed", Format::Gzip, LIMIT).is_err());
        assert!(decompress(b"", Format::Zlib, LIMIT).is_err());
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        for format in [Format::Gzip, Format::Zlib] {
            let packed = compress(&data, 9, format).unwrap();
            assert!(packed.len() < 2048);
            assert_eq!(decompress(&packed, format, 1 << 20).unwrap().len(), 1 << 20);
            let err = decompress(&packed, format, (1 << 20) - 1).unwrap_err();
            assert_eq!(
                err,
                CompressionError::TooLarge {
                    limit: (1 << 20) - 1
                }
            );
            let err = decompress(&packed, format, 1000).unwrap_err();
            assert_eq!(err, CompressionError::TooLarge { limit: 1000 });
        }
    }
}
