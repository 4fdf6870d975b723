//! Serializer framing: what `huey.serializer` does to the pickled bytes.
//!
//! Encoding signs (`payload + b":" + hex(HMAC-SHA1(SHA1(salt + secret), payload))`, as huey
//! 3.5.4 does) and then compresses (gzip, or zlib with `use_zlib`); decoding undoes both in the
//! reverse order and verifies the signature in constant time, before Python unpickles anything.

use std::fmt;
use std::io;

use hmac::{Hmac, Mac};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha1::{Digest, Sha1};

use crate::zlib::{self, Format};

type HmacSha1 = Hmac<Sha1>;

const SEPARATOR: u8 = b':';
const SIGNATURE_LEN: usize = 40;
/// Payloads above this size are framed with the GIL released.
const DETACH_THRESHOLD: usize = 16 * 1024;

#[derive(Debug)]
pub enum FramingError {
    MissingSeparator,
    BadSignature,
    Corrupt(String),
    Io(io::Error),
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::MissingSeparator => {
                f.write_str("signed message has no \":\" separator before its signature")
            }
            FramingError::BadSignature => f.write_str("message signature does not match"),
            FramingError::Corrupt(why) => write!(f, "could not decompress message: {why}"),
            FramingError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// True when the data starts like a gzip (0x1f) or zlib (0x78) stream, as huey checks.
pub fn is_compressed(data: &[u8]) -> bool {
    matches!(data.first(), Some(0x1f | 0x78))
}

/// The signing key huey derives: SHA1(salt + secret).
pub fn derive_key(secret: &[u8], salt: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

fn mac(key: &[u8]) -> HmacSha1 {
    HmacSha1::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Lower-case hex HMAC-SHA1 of `message`.
pub fn signature(key: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
    let mut m = mac(key);
    m.update(message);
    hex(&m.finalize().into_bytes())
}

fn hex(digest: &[u8]) -> [u8; SIGNATURE_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; SIGNATURE_LEN];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Appends `b":" + signature` to the message.
pub fn sign(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1 + SIGNATURE_LEN);
    out.extend_from_slice(message);
    out.push(SEPARATOR);
    out.extend_from_slice(&signature(key, message));
    out
}

/// Splits at the last separator and verifies the signature in constant time.
pub fn unsign<'a>(key: &[u8], signed: &'a [u8]) -> Result<&'a [u8], FramingError> {
    let at = signed
        .iter()
        .rposition(|&b| b == SEPARATOR)
        .ok_or(FramingError::MissingSeparator)?;
    let (message, sig) = (&signed[..at], &signed[at + 1..]);
    let digest = unhex(sig).ok_or(FramingError::BadSignature)?;
    let mut m = mac(key);
    m.update(message);
    m.verify_slice(&digest)
        .map_err(|_| FramingError::BadSignature)?;
    Ok(message)
}

fn format(use_zlib: bool) -> Format {
    if use_zlib {
        Format::Zlib
    } else {
        Format::Gzip
    }
}

pub fn compress(data: &[u8], level: u32, use_zlib: bool) -> Result<Vec<u8>, FramingError> {
    zlib::compress(data, level, format(use_zlib)).map_err(|e| FramingError::Io(io::Error::other(e)))
}

pub fn decompress(data: &[u8], use_zlib: bool) -> Result<Vec<u8>, FramingError> {
    zlib::decompress(data, format(use_zlib)).map_err(FramingError::Corrupt)
}

/// The framing settings of one serializer; pure Rust so it can be tested without Python.
#[derive(Clone)]
pub struct Framing {
    pub compression: bool,
    pub level: u32,
    pub use_zlib: bool,
    pub key: Option<[u8; 20]>,
}

impl Framing {
    pub fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, FramingError> {
        let signed;
        let data = match &self.key {
            Some(key) => {
                signed = sign(key, payload);
                &signed[..]
            }
            None => payload,
        };
        if self.compression {
            compress(data, self.level, self.use_zlib)
        } else {
            Ok(data.to_vec())
        }
    }

    pub fn decode(&self, data: &[u8]) -> Result<Vec<u8>, FramingError> {
        // Uncompressed data is accepted even with compression on (huey logs and carries on).
        let inflated;
        let data = if self.compression && is_compressed(data) {
            inflated = decompress(data, self.use_zlib)?;
            &inflated[..]
        } else {
            data
        };
        match &self.key {
            Some(key) => unsign(key, data).map(<[u8]>::to_vec),
            None => Ok(data.to_vec()),
        }
    }
}

/// `Framing(compression, level, use_zlib, key)`: one crossing per serialize or deserialize.
#[pyclass(frozen, module = "huey._native", name = "Framing")]
pub struct PyFraming {
    inner: Framing,
}

fn run<F>(py: Python<'_>, len: usize, work: F) -> Result<Vec<u8>, FramingError>
where
    F: FnOnce() -> Result<Vec<u8>, FramingError> + Send,
{
    if len > DETACH_THRESHOLD {
        py.detach(work)
    } else {
        work()
    }
}

#[pymethods]
impl PyFraming {
    #[new]
    #[pyo3(signature = (compression=false, level=6, use_zlib=false, key=None))]
    fn new(compression: bool, level: i64, use_zlib: bool, key: Option<&[u8]>) -> PyResult<Self> {
        let level = u32::try_from(level)
            .ok()
            .filter(|l| *l <= 9)
            .or((level == -1).then_some(6))
            .ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "compression_level must be between 0 and 9 (or -1), got {level}"
                ))
            })?;
        let key = match key {
            Some(k) => Some(
                <[u8; 20]>::try_from(k)
                    .map_err(|_| pyo3::exceptions::PyValueError::new_err("key must be 20 bytes"))?,
            ),
            None => None,
        };
        Ok(PyFraming {
            inner: Framing {
                compression,
                level,
                use_zlib,
                key,
            },
        })
    }

    /// Signs (when keyed) then compresses (when enabled) the pickled payload.
    fn encode<'py>(&self, py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        if !self.inner.compression && self.inner.key.is_none() {
            return Ok(PyBytes::new(py, payload));
        }
        let out = run(py, payload.len(), || self.inner.encode(payload))?;
        Ok(PyBytes::new(py, &out))
    }

    /// Decompresses (when the data looks compressed) then verifies the signature.
    fn decode<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = run(py, data.len(), || self.inner.decode(data))?;
        Ok(PyBytes::new(py, &out))
    }
}

#[pyfunction]
fn derive_signing_key<'py>(py: Python<'py>, secret: &[u8], salt: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &derive_key(secret, salt))
}

#[pyfunction]
#[pyo3(name = "signature")]
fn py_signature<'py>(py: Python<'py>, key: &[u8], message: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &signature(key, message))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFraming>()?;
    m.add_function(wrap_pyfunction!(derive_signing_key, m)?)?;
    m.add_function(wrap_pyfunction!(py_signature, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_framing(compression: bool, use_zlib: bool) -> Framing {
        Framing {
            compression,
            level: 6,
            use_zlib,
            key: Some(derive_key(b"secret", b"huey")),
        }
    }

    #[test]
    fn hmac_matches_rfc2202_vector() {
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(&sig, b"effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn round_trips_every_mode() {
        let payload = b"\x80\x05 a pickled task message".repeat(8);
        for compression in [false, true] {
            for use_zlib in [false, true] {
                for keyed in [false, true] {
                    let mut f = signed_framing(compression, use_zlib);
                    if !keyed {
                        f.key = None;
                    }
                    let framed = f.encode(&payload).unwrap();
                    assert_eq!(f.decode(&framed).unwrap(), payload);
                    assert_eq!(is_compressed(&framed), compression);
                }
            }
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let f = signed_framing(false, false);
        let framed = f.encode(b"payload").unwrap();
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x01;
            assert!(f.decode(&bad).is_err(), "flipped byte {i} was accepted");
        }
        assert!(matches!(
            f.decode(b"no separator"),
            Err(FramingError::MissingSeparator)
        ));
    }

    #[test]
    fn truncated_compression_is_an_error() {
        let data = compress(b"hello world hello world", 6, false).unwrap();
        assert!(decompress(&data[..data.len() - 4], false).is_err());
        let data = compress(b"hello world hello world", 6, true).unwrap();
        assert!(decompress(&data[..data.len() / 2], true).is_err());
    }
}
