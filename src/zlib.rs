//! One-shot gzip/zlib compression over C zlib (statically linked through `libz-sys`).
//!
//! Task messages are a few hundred bytes, where setting up a deflate stream costs far more than
//! compressing. So the window and hash sizes are scaled to the input: a 200-byte message gets
//! a 512-byte window instead of 32 KiB, which makes no difference to the output's size (the
//! whole input fits either way) and keeps the stream's memory small and cheap to set up. The
//! streams are ordinary gzip (RFC 1952) and zlib (RFC 1950) streams that any inflater reads;
//! the headers are written here, the same bytes Python's `gzip` and `zlib` write.

use std::cell::RefCell;
use std::os::raw::c_int;
use std::ptr;

use libz_sys as z;

use crate::fixed_deflate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zlib,
}

/// The zlib header for a 32 KiB window (first byte 0x78, which huey looks for to tell
/// compressed messages apart), with the level hint Python's zlib writes.
fn zlib_header(level: u32) -> [u8; 2] {
    const CMF: u8 = 0x78;
    let flevel: u8 = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let flg = flevel << 6;
    let check = 31 - ((u16::from(CMF) << 8 | u16::from(flg)) % 31) as u8;
    [CMF, flg | (check % 31)]
}

unsafe extern "C" fn alloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    libc::malloc(items as usize * size as usize)
}

unsafe extern "C" fn free(_: z::voidpf, address: z::voidpf) {
    libc::free(address)
}

fn new_stream() -> z::z_stream {
    z::z_stream {
        next_in: ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: ptr::null_mut(),
        state: ptr::null_mut(),
        zalloc: alloc,
        zfree: free,
        opaque: ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    }
}

fn stream_size() -> c_int {
    std::mem::size_of::<z::z_stream>() as c_int
}

fn message(stream: &z::z_stream, code: c_int) -> String {
    if stream.msg.is_null() {
        format!("zlib error {code}")
    } else {
        // SAFETY: zlib sets `msg` to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(stream.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The smallest window (9..=15 bits) that holds the whole input plus zlib's lookahead.
fn window_bits_for(len: usize) -> c_int {
    const MIN_LOOKAHEAD: usize = 262;
    let needed = (len + MIN_LOOKAHEAD).next_power_of_two().trailing_zeros() as c_int;
    needed.clamp(9, 15)
}

/// A raw deflate stream kept by a thread for one (level, window) setting: resetting it is much
/// cheaper than allocating a new one for every message.
struct Deflater {
    level: u32,
    bits: c_int,
    stream: Box<z::z_stream>,
}

impl Deflater {
    fn new(level: u32, bits: c_int) -> Result<Self, String> {
        let mut stream = Box::new(new_stream());
        let mem_level = (bits - 7).clamp(1, 8);
        // SAFETY: the stream is boxed, so the pointer zlib keeps to it stays valid.
        let rc = unsafe {
            z::deflateInit2_(
                &mut *stream,
                level as c_int,
                z::Z_DEFLATED,
                -bits,
                mem_level,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                stream_size(),
            )
        };
        if rc != z::Z_OK {
            return Err(message(&stream, rc));
        }
        Ok(Deflater {
            level,
            bits,
            stream,
        })
    }

    /// Appends the raw deflate stream of `data` to `out`.
    fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let stream = &mut *self.stream;
        // SAFETY: `out` has `bound` spare bytes; input and output outlive the call.
        unsafe {
            z::deflateReset(stream);
            let bound = z::deflateBound(stream, data.len() as z::uLong) as usize;
            out.reserve(bound);
            let start = out.len();
            stream.next_in = data.as_ptr() as *mut u8;
            stream.avail_in = data.len() as z::uInt;
            stream.next_out = out.as_mut_ptr().add(start);
            stream.avail_out = bound as z::uInt;
            let rc = z::deflate(stream, z::Z_FINISH);
            if rc != z::Z_STREAM_END {
                return Err(message(stream, rc));
            }
            out.set_len(start + stream.total_out as usize);
        }
        Ok(())
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by deflateInit2_.
        unsafe { z::deflateEnd(&mut *self.stream) };
    }
}

thread_local! {
    static DEFLATERS: RefCell<Vec<Deflater>> = const { RefCell::new(Vec::new()) };
}

/// The gzip member header Python's `gzip.compress` writes with `mtime=0`.
fn gzip_header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]
}

/// Deflates with a zlib stream cached per thread for this (level, window) setting.
fn deflate_cached(data: &[u8], level: u32, bits: c_int, out: &mut Vec<u8>) -> Result<(), String> {
    DEFLATERS.with_borrow_mut(|cache| {
        let at = match cache
            .iter()
            .position(|d| d.level == level && d.bits == bits)
        {
            Some(at) => at,
            None => {
                cache.push(Deflater::new(level, bits)?);
                cache.len() - 1
            }
        };
        cache[at].deflate(data, out)
    })
}

/// Compresses `data` at `level` (0-9) into one gzip member or zlib stream.
pub fn compress(data: &[u8], level: u32, format: Format) -> Result<Vec<u8>, String> {
    let level = level.min(9);
    let bits = window_bits_for(data.len());
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    match format {
        Format::Gzip => out.extend_from_slice(&gzip_header(level)),
        Format::Zlib => out.extend_from_slice(&zlib_header(level)),
    }
    if level > 0 && data.len() <= fixed_deflate::MAX_INPUT {
        fixed_deflate::deflate_fixed(data, &mut out);
    } else {
        deflate_cached(data, level, bits, &mut out)?;
    }
    // SAFETY: plain checksum functions over a valid slice.
    match format {
        Format::Gzip => unsafe {
            let crc = z::crc32(0, data.as_ptr(), data.len() as z::uInt) as u32;
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        },
        Format::Zlib => unsafe {
            let adler = z::adler32(1, data.as_ptr(), data.len() as z::uInt) as u32;
            out.extend_from_slice(&adler.to_be_bytes());
        },
    }
    Ok(out)
}

/// Decompresses a zlib stream, or every member of a gzip stream (checking each CRC).
pub fn decompress(data: &[u8], format: Format) -> Result<Vec<u8>, String> {
    let mut stream = new_stream();
    // SAFETY: as in `compress`; `out` is grown before each call so `next_out` has room.
    unsafe {
        let bits = match format {
            Format::Gzip => 15 + 16,
            Format::Zlib => 15,
        };
        let rc = z::inflateInit2_(&mut stream, bits, z::zlibVersion(), stream_size());
        if rc != z::Z_OK {
            return Err(message(&stream, rc));
        }
        let mut out = Vec::<u8>::with_capacity(data.len() * 4 + 64);
        let result = inflate_members(&mut stream, data, &mut out, format);
        z::inflateEnd(&mut stream);
        result.map(|_| out)
    }
}

unsafe fn inflate_members(
    stream: &mut z::z_stream,
    data: &[u8],
    out: &mut Vec<u8>,
    format: Format,
) -> Result<(), String> {
    stream.next_in = data.as_ptr() as *mut u8;
    stream.avail_in = data.len() as z::uInt;
    loop {
        if out.capacity() == out.len() {
            out.reserve(out.len().max(256));
        }
        let spare = out.capacity() - out.len();
        stream.next_out = out.as_mut_ptr().add(out.len());
        stream.avail_out = spare as z::uInt;
        // Z_FINISH lets zlib skip allocating its window when the output fits in one call.
        let rc = z::inflate(stream, z::Z_FINISH);
        let produced = spare - stream.avail_out as usize;
        out.set_len(out.len() + produced);
        match rc {
            z::Z_STREAM_END if stream.avail_in == 0 => return Ok(()),
            z::Z_STREAM_END if format == Format::Gzip => {
                // Concatenated gzip members decompress to the concatenation, as in Python.
                let rc = z::inflateReset(stream);
                if rc != z::Z_OK {
                    return Err(message(stream, rc));
                }
            }
            z::Z_STREAM_END => return Err("trailing bytes after the zlib stream".into()),
            z::Z_OK => {}
            z::Z_BUF_ERROR if stream.avail_in == 0 => {
                return Err("truncated compressed data".into());
            }
            z::Z_BUF_ERROR => {}
            rc => return Err(message(stream, rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sizes() {
        for len in [0, 1, 200, 5_000, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for format in [Format::Gzip, Format::Zlib] {
                let packed = compress(&data, 6, format).unwrap();
                assert_eq!(
                    decompress(&packed, format).unwrap(),
                    data,
                    "{format:?} {len}"
                );
            }
        }
    }

    #[test]
    fn zlib_header_matches_python() {
        assert_eq!(zlib_header(6), [0x78, 0x9c]);
        assert_eq!(zlib_header(1), [0x78, 0x01]);
        assert_eq!(zlib_header(9), [0x78, 0xda]);
        assert_eq!(compress(b"", 6, Format::Zlib).unwrap()[..2], [0x78, 0x9c]);
    }

    #[test]
    fn concatenated_gzip_members() {
        let mut both = compress(b"hello ", 6, Format::Gzip).unwrap();
        both.extend(compress(b"world", 6, Format::Gzip).unwrap());
        assert_eq!(decompress(&both, Format::Gzip).unwrap(), b"hello world");
    }

    #[test]
    fn corrupt_and_truncated_streams_fail() {
        let packed = compress(&[7u8; 1000], 6, Format::Zlib).unwrap();
        assert!(decompress(&packed[..packed.len() - 3], Format::Zlib).is_err());
        let mut flipped = compress(b"some text to protect", 6, Format::Gzip).unwrap();
        let n = flipped.len();
        flipped[n - 6] ^= 1; // inside the CRC
        assert!(decompress(&flipped, Format::Gzip).is_err());
        assert!(decompress(b"not compressed", Format::Gzip).is_err());
    }
}
