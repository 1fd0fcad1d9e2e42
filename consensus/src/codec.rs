//! Canonical binary encoding shared by every keyreg structure that is hashed,
//! signed or sent over the wire.
//!
//! One bincode 2 configuration (fixed-width little-endian integers, lengths as
//! u64) and one rule: a value has exactly one encoding. Decoding rejects
//! trailing bytes, oversize input, and any input that does not re-encode to
//! the very same bytes (unsorted or duplicate map keys, non-minimal forms).
//! Every top-level structure starts with a version byte ([`Canonical::VERSION`]).

use bincode::enc::write::{SizeWriter, Writer};
use bincode::error::EncodeError;
use bincode::{Decode, Encode};
use thiserror::Error;

/// Largest encoded object any keyreg decoder accepts (a block, a proof, an
/// exported batch). Bounds every allocation driven by untrusted length fields.
pub const MAX_ENCODED_LEN: usize = 16 * 1024 * 1024;

/// The one bincode configuration used everywhere.
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_ENCODED_LEN>()
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("input of {0} bytes exceeds the {MAX_ENCODED_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
    #[error("non-canonical encoding: the value re-encodes to different bytes")]
    NonCanonical,
    #[error("unsupported version {found} (expected {expected})")]
    Version { found: u8, expected: u8 },
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Encodes a value with the canonical configuration.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for our types except by exceeding the
    // limit, which only values built from >16 MiB of input could do; callers
    // that build such values use `try_encode`.
    try_encode(value).unwrap_or_default()
}

/// Encodes a value, reporting a value larger than [`MAX_ENCODED_LEN`].
pub fn try_encode<T: Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// The length of a value's canonical encoding, without building it (a
/// block's size check would otherwise copy megabytes into fresh memory).
pub fn encoded_len<T: Encode>(value: &T) -> Result<usize, CodecError> {
    let mut size = SizeWriter::default();
    bincode::encode_into_writer(value, &mut size, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(size.bytes_written)
}

/// A writer that checks what is written against the expected bytes instead
/// of storing it: re-encoding a decoded value through it is the canonical
/// check with no second copy of the input.
struct MatchWriter<'a> {
    rest: &'a [u8],
}

/// `MatchWriter`'s error when the encoding departs from the input.
const DIFFERS: &str = "differs from the input";

impl Writer for MatchWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        match self.rest.strip_prefix(bytes) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => Err(EncodeError::Other(DIFFERS)),
        }
    }
}

/// Decodes exactly one canonical value from `bytes`.
pub fn decode<T: Encode + Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_ENCODED_LEN {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (value, read): (T, usize) = bincode::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - read));
    }
    let mut check = MatchWriter { rest: bytes };
    match bincode::encode_into_writer(&value, &mut check, config()) {
        Ok(()) if check.rest.is_empty() => Ok(value),
        Ok(()) | Err(EncodeError::Other(DIFFERS)) => Err(CodecError::NonCanonical),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

/// A top-level structure: canonical, and versioned by its first byte.
pub trait Canonical: Encode + Decode<()> + Sized {
    /// The only version this build reads and writes.
    const VERSION: u8;

    /// The version byte this value carries (its first field).
    fn version(&self) -> u8;

    fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        match bytes.first() {
            None => return Err(CodecError::Malformed("empty input".into())),
            Some(&v) if v != Self::VERSION => {
                return Err(CodecError::Version {
                    found: v,
                    expected: Self::VERSION,
                })
            }
            Some(_) => {}
        }
        let value: Self = decode(bytes)?;
        debug_assert_eq!(value.version(), Self::VERSION);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Encode, Decode, Debug, PartialEq)]
    struct Sample {
        version: u8,
        flag: bool,
        name: String,
        map: BTreeMap<String, Vec<u8>>,
        opt: Option<u32>,
    }

    impl Canonical for Sample {
        const VERSION: u8 = 1;
        fn version(&self) -> u8 {
            self.version
        }
    }

    fn sample() -> Sample {
        let mut map = BTreeMap::new();
        map.insert("a".to_string(), vec![1]);
        map.insert("b".to_string(), vec![2, 3]);
        Sample {
            version: 1,
            flag: true,
            name: "x".into(),
            map,
            opt: Some(7),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Sample::from_bytes(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut b = sample().to_bytes();
        b.push(0);
        assert_eq!(Sample::from_bytes(&b), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn rejects_wrong_version() {
        let mut b = sample().to_bytes();
        b[0] = 2;
        assert!(matches!(
            Sample::from_bytes(&b),
            Err(CodecError::Version { found: 2, .. })
        ));
    }

    #[test]
    fn rejects_non_boolean_byte() {
        let mut b = sample().to_bytes();
        b[1] = 2;
        assert!(matches!(
            Sample::from_bytes(&b),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_unsorted_map_keys() {
        // Swap the two map entries in place: still decodes, but is not canonical.
        let s = sample();
        let b = s.to_bytes();
        let a_entry = encode(&("a".to_string(), vec![1u8]));
        let b_entry = encode(&("b".to_string(), vec![2u8, 3]));
        let start = b
            .windows(a_entry.len())
            .position(|w| w == a_entry.as_slice())
            .unwrap();
        let mut swapped = b[..start].to_vec();
        swapped.extend_from_slice(&b_entry);
        swapped.extend_from_slice(&a_entry);
        swapped.extend_from_slice(&b[start + a_entry.len() + b_entry.len()..]);
        assert_eq!(Sample::from_bytes(&swapped), Err(CodecError::NonCanonical));
    }

    #[test]
    fn rejects_duplicate_map_keys() {
        // Decodes to a one-entry map, which re-encodes with a count of 1, not 2.
        let entry = |v: Vec<u8>| ("a".to_string(), v);
        let b = encode(&(
            1u8,
            true,
            "x".to_string(),
            2u64,
            entry(vec![1]),
            entry(vec![2, 3]),
        ));
        let b = [b, encode(&Some(7u32))].concat();
        assert_eq!(Sample::from_bytes(&b), Err(CodecError::NonCanonical));
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let s = sample();
        assert_eq!(encoded_len(&s), Ok(s.to_bytes().len()));
        assert_eq!(encoded_len(&Vec::<u8>::new()), Ok(8));
    }

    #[test]
    fn rejects_huge_length_prefix_without_allocating() {
        let mut b = vec![1u8, 1, 1];
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Sample::from_bytes(&b).is_err());
    }
}
