//! Result and counter keys of `MemoryStore`: a `str` or `bytes` key held as its bytes and its
//! kind, so `'k'` and `b'k'` stay two keys, as in a Python dict, without holding Python
//! objects or pointers.

use std::collections::HashMap;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::ffi;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Str,
    Bytes,
}

/// A key argument, borrowed from its Python object: a `str` (as UTF-8) or `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub kind: KeyKind,
    pub bytes: &'a [u8],
}

impl<'a> KeyRef<'a> {
    pub fn new(key: &'a Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = key.cast::<PyString>() {
            return Ok(KeyRef {
                kind: KeyKind::Str,
                bytes: ffi::str_utf8(s)?,
            });
        }
        if let Ok(b) = key.cast::<PyBytes>() {
            return Ok(KeyRef {
                kind: KeyKind::Bytes,
                bytes: b.as_bytes(),
            });
        }
        Err(PyTypeError::new_err(format!(
            "storage keys must be str or bytes, got {}",
            key.get_type().name()?
        )))
    }
}

pub fn key_to_py<'py>(py: Python<'py>, kind: KeyKind, bytes: &[u8]) -> Bound<'py, PyAny> {
    match kind {
        // Only ever stored from a Python str's UTF-8, so nothing is replaced.
        KeyKind::Str => PyString::new(py, &String::from_utf8_lossy(bytes)).into_any(),
        KeyKind::Bytes => PyBytes::new(py, bytes).into_any(),
    }
}

/// A map keyed by (kind, bytes): one map of byte-string keys per kind.
pub struct KeyMap<V> {
    str_keys: HashMap<Box<[u8]>, V>,
    bytes_keys: HashMap<Box<[u8]>, V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            str_keys: HashMap::new(),
            bytes_keys: HashMap::new(),
        }
    }
}

impl<V> KeyMap<V> {
    fn map(&self, kind: KeyKind) -> &HashMap<Box<[u8]>, V> {
        match kind {
            KeyKind::Str => &self.str_keys,
            KeyKind::Bytes => &self.bytes_keys,
        }
    }

    fn map_mut(&mut self, kind: KeyKind) -> &mut HashMap<Box<[u8]>, V> {
        match kind {
            KeyKind::Str => &mut self.str_keys,
            KeyKind::Bytes => &mut self.bytes_keys,
        }
    }

    pub fn get(&self, key: KeyRef<'_>) -> Option<&V> {
        self.map(key.kind).get(key.bytes)
    }

    pub fn contains(&self, key: KeyRef<'_>) -> bool {
        self.map(key.kind).contains_key(key.bytes)
    }

    pub fn insert(&mut self, key: KeyRef<'_>, value: V) -> Option<V> {
        self.map_mut(key.kind).insert(key.bytes.into(), value)
    }

    pub fn remove(&mut self, key: KeyRef<'_>) -> Option<V> {
        self.map_mut(key.kind).remove(key.bytes)
    }

    /// The value at `key`, inserting `default()` first when there is none.
    pub fn get_or_insert_with(&mut self, key: KeyRef<'_>, default: impl FnOnce() -> V) -> &mut V {
        let map = self.map_mut(key.kind);
        if !map.contains_key(key.bytes) {
            map.insert(key.bytes.into(), default());
        }
        map.get_mut(key.bytes).expect("inserted above")
    }

    pub fn len(&self) -> usize {
        self.str_keys.len() + self.bytes_keys.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (KeyKind, &[u8], &V)> {
        let str_keys = self.str_keys.iter().map(|(k, v)| (KeyKind::Str, &k[..], v));
        let bytes_keys = self
            .bytes_keys
            .iter()
            .map(|(k, v)| (KeyKind::Bytes, &k[..], v));
        str_keys.chain(bytes_keys)
    }

    /// Empties the map, handing the values back so the caller chooses where they are dropped.
    pub fn take_values(&mut self) -> Vec<V> {
        let str_keys = std::mem::take(&mut self.str_keys).into_values();
        let bytes_keys = std::mem::take(&mut self.bytes_keys).into_values();
        str_keys.chain(bytes_keys).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart_by_kind_and_bytes() {
        let key = |kind, bytes: &'static [u8]| KeyRef { kind, bytes };
        let mut map: KeyMap<u32> = KeyMap::default();
        map.insert(key(KeyKind::Str, b"a"), 1);
        map.insert(key(KeyKind::Bytes, b"a"), 2);
        map.insert(key(KeyKind::Str, b"b"), 3);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(key(KeyKind::Str, b"a")), Some(&1));
        assert_eq!(map.get(key(KeyKind::Bytes, b"a")), Some(&2));
        assert_eq!(map.get(key(KeyKind::Str, b"b")), Some(&3));
        assert_eq!(map.get(key(KeyKind::Bytes, b"b")), None);
        *map.get_or_insert_with(key(KeyKind::Bytes, b"b"), || 10) += 1;
        assert_eq!(map.get(key(KeyKind::Bytes, b"b")), Some(&11));
        assert_eq!(map.remove(key(KeyKind::Str, b"a")), Some(1));
        let mut values = map.take_values();
        values.sort();
        assert_eq!(values, [2, 3, 11]);
        assert_eq!(map.len(), 0);
    }
}
