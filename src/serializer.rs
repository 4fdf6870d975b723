//! Serializer framing: what `huey.serializer` does to the pickled bytes.
//!
//! Encoding signs (`payload + b":" + hex(HMAC-SHA1(SHA1(salt + secret), payload))`, as huey
//! 3.5.4 does) and then compresses (gzip, or zlib with `use_zlib`; see `compression`);
//! decoding undoes both in the reverse order, inflating no more than the serializer's
//! `max_decompressed_size`, and verifies the signature in constant time, before Python
//! unpickles anything.

use std::fmt;

use hmac::{Hmac, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha1::{Digest, Sha1};

mod compression;

pub use compression::{CompressionError, Format};

use crate::wait;

type HmacSha1 = Hmac<Sha1>;

const SEPARATOR: u8 = b':';
const SIGNATURE_LEN: usize = 40;
/// Payloads above this size are framed with the GIL released.
const DETACH_THRESHOLD: usize = 16 * 1024;

/// The default `max_decompressed_size`: far above any real task message.
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 64 << 20;
const _: () = assert!(DEFAULT_MAX_DECOMPRESSED_SIZE == 67_108_864);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    MissingSeparator,
    BadSignature,
    Compression(CompressionError),
}

impl From<CompressionError> for FramingError {
    fn from(err: CompressionError) -> Self {
        FramingError::Compression(err)
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::MissingSeparator => {
                f.write_str("signed message has no \":\" separator before its signature")
            }
            FramingError::BadSignature => f.write_str("message signature does not match"),
            FramingError::Compression(CompressionError::Corrupt(why)) => {
                write!(f, "could not decompress message: {why}")
            }
            FramingError::Compression(CompressionError::TooLarge { limit }) => write!(
                f,
                "compressed message inflates to more than {limit} bytes \
                 (the serializer's max_decompressed_size); not decompressed"
            ),
            FramingError::Compression(CompressionError::Deflate(why)) => {
                write!(f, "could not compress message: {why}")
            }
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

/// The framing settings of one serializer; pure Rust so it can be tested without Python.
#[derive(Clone)]
pub struct Framing {
    pub compression: bool,
    pub level: u32,
    pub use_zlib: bool,
    pub key: Option<[u8; 20]>,
    /// The most bytes one message may inflate to.
    pub max_decompressed_size: usize,
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
            Ok(compression::compress(
                data,
                self.level,
                format(self.use_zlib),
            )?)
        } else {
            Ok(data.to_vec())
        }
    }

    pub fn decode(&self, data: &[u8]) -> Result<Vec<u8>, FramingError> {
        // Uncompressed data is accepted even with compression on (huey logs and carries on).
        let inflated;
        let data = if self.compression && is_compressed(data) {
            let limit = self.max_decompressed_size;
            inflated = compression::decompress(data, format(self.use_zlib), limit)?;
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

/// `Framing(compression, level, use_zlib, key, max_decompressed_size)`: one crossing per
/// serialize or deserialize.
#[pyclass(frozen, module = "huey._native", name = "Framing")]
pub struct PyFraming {
    inner: Framing,
}

fn run<F>(py: Python<'_>, len: usize, work: F) -> Result<Vec<u8>, FramingError>
where
    F: FnOnce() -> Result<Vec<u8>, FramingError> + Send,
{
    if len > DETACH_THRESHOLD {
        wait::detach(py, work)
    } else {
        work()
    }
}

#[pymethods]
impl PyFraming {
    #[new]
    #[pyo3(signature = (
        compression=false,
        level=6,
        use_zlib=false,
        key=None,
        max_decompressed_size=67_108_864, // DEFAULT_MAX_DECOMPRESSED_SIZE, as a literal
    ))]
    fn new(
        compression: bool,
        level: i64,
        use_zlib: bool,
        key: Option<&[u8]>,
        max_decompressed_size: i64,
    ) -> PyResult<Self> {
        let level = u32::try_from(level)
            .ok()
            .filter(|l| *l <= 9)
            .or((level == -1).then_some(6))
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "compression_level must be between 0 and 9 (or -1), got {level}"
                ))
            })?;
        let key = match key {
            Some(k) => Some(
                <[u8; 20]>::try_from(k)
                    .map_err(|_| PyValueError::new_err("key must be 20 bytes"))?,
            ),
            None => None,
        };
        let max_decompressed_size = usize::try_from(max_decompressed_size)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "max_decompressed_size must be a positive number of bytes, got \
                     {max_decompressed_size}"
                ))
            })?;
        Ok(PyFraming {
            inner: Framing {
                compression,
                level,
                use_zlib,
                key,
                max_decompressed_size,
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
pub fn derive_signing_key<'py>(py: Python<'py>, secret: &[u8], salt: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &derive_key(secret, salt))
}

#[pyfunction]
#[pyo3(name = "signature")]
pub fn py_signature<'py>(py: Python<'py>, key: &[u8], message: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &signature(key, message))
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
            max_decompressed_size: DEFAULT_MAX_DECOMPRESSED_SIZE,
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
    fn decode_refuses_messages_over_the_limit() {
        let mut f = signed_framing(true, false);
        let framed = f.encode(&vec![b'a'; 100_000]).unwrap();
        assert_eq!(f.decode(&framed).unwrap().len(), 100_000);
        f.max_decompressed_size = 50_000;
        let err = f.decode(&framed).unwrap_err();
        assert_eq!(
            err,
            FramingError::Compression(CompressionError::TooLarge { limit: 50_000 })
        );
        assert!(err.to_string().contains("max_decompressed_size"));
    }
}
