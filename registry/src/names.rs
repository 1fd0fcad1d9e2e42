//! Validated identifiers: organisation ids and device names.
//!
//! Both are checked on every path into the program (constructor, bincode
//! decoding, serde), so a value of these types is always well formed.

use std::fmt;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use keyreg_consensus::crypto::{hash, Domain, Hash};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Longest organisation id, in bytes.
pub const MAX_ORG_ID_LEN: usize = 32;
/// Longest device-local part of a device name (after `org/`), in bytes.
pub const MAX_DEVICE_LOCAL_LEN: usize = 64;
/// Longest full device name `org/local`, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = MAX_ORG_ID_LEN + 1 + MAX_DEVICE_LOCAL_LEN;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("organisation id must be 1..={MAX_ORG_ID_LEN} bytes, found {0}")]
    OrgIdLength(usize),
    #[error("organisation id may contain only a-z, 0-9 and '-', not first or last: {0:?}")]
    OrgIdCharacters(String),
    #[error("device name must be `org/local`: {0:?}")]
    DeviceNameShape(String),
    #[error("device-local name must be 1..={MAX_DEVICE_LOCAL_LEN} bytes, found {0}")]
    DeviceLocalLength(usize),
    #[error("device-local name may contain only a-z, 0-9, '-', '_' and '.', starting with a letter or digit: {0:?}")]
    DeviceLocalCharacters(String),
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn check_org_id(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_ORG_ID_LEN {
        return Err(NameError::OrgIdLength(b.len()));
    }
    let ok_chars = b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
    let ok_ends = b.first().is_some_and(|&c| c != b'-') && b.last().is_some_and(|&c| c != b'-');
    if !(ok_chars && ok_ends) {
        return Err(NameError::OrgIdCharacters(s.to_string()));
    }
    Ok(())
}

fn check_device_local(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_DEVICE_LOCAL_LEN {
        return Err(NameError::DeviceLocalLength(b.len()));
    }
    let ok_chars = b
        .iter()
        .all(|&c| is_lower_alnum(c) || matches!(c, b'-' | b'_' | b'.'));
    if !(ok_chars && b.first().copied().is_some_and(is_lower_alnum)) {
        return Err(NameError::DeviceLocalCharacters(s.to_string()));
    }
    Ok(())
}

/// Implements the string plumbing shared by both identifier types: Display,
/// Debug, bincode (decoding re-validates) and serde (deserialising re-validates).
macro_rules! validated_string {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Encode for $name {
            fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
                self.0.encode(encoder)
            }
        }

        impl<Context> Decode<Context> for $name {
            fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
                let s = String::decode(decoder)?;
                Self::new(&s).map_err(|e| DecodeError::OtherString(e.to_string()))
            }
        }
        bincode::impl_borrow_decode!($name);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An organisation (consortium member) id: 1..=32 bytes of `[a-z0-9-]`, not
/// starting or ending with `-`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrgId(String);

impl OrgId {
    pub fn new(s: &str) -> Result<Self, NameError> {
        check_org_id(s)?;
        Ok(OrgId(s.to_string()))
    }

    /// The state-tree key of this organisation's record.
    pub fn state_key(&self) -> Hash {
        hash(Domain::OrgId, self.0.as_bytes())
    }
}

validated_string!(OrgId);

/// A device name `org/local`: a valid [`OrgId`], `/`, and 1..=64 bytes of
/// `[a-z0-9._-]` starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let (org, local) = s
            .split_once('/')
            .ok_or_else(|| NameError::DeviceNameShape(s.to_string()))?;
        check_org_id(org)?;
        check_device_local(local)?;
        Ok(DeviceName(s.to_string()))
    }

    /// Builds `org/local` from its parts.
    pub fn from_parts(org: &OrgId, local: &str) -> Result<Self, NameError> {
        check_device_local(local)?;
        Ok(DeviceName(format!("{org}/{local}")))
    }

    /// The organisation part.
    pub fn org(&self) -> OrgId {
        // Validated at construction: the part before '/' is a valid org id.
        let (org, _) = self.0.split_once('/').unwrap_or((&self.0, ""));
        OrgId(org.to_string())
    }

    /// The device-local part.
    pub fn local(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, local)| local)
    }

    /// The state-tree key of this device's record.
    pub fn state_key(&self) -> Hash {
        hash(Domain::DeviceName, self.0.as_bytes())
    }
}

validated_string!(DeviceName);

#[cfg(test)]
mod tests {
    use super::*;
    use keyreg_consensus::codec::{decode, encode};

    #[test]
    fn accepts_and_rejects_org_ids() {
        for ok in ["a", "acme", "acme-corp", "x1", &"a".repeat(32)] {
            assert!(OrgId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Acme",
            "a_b",
            "a/b",
            "a b",
            &"a".repeat(33),
            "é",
        ] {
            assert!(OrgId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_and_rejects_device_names() {
        let n = DeviceName::new("acme/sensor-1.a_b").unwrap();
        assert_eq!(n.org(), OrgId::new("acme").unwrap());
        assert_eq!(n.local(), "sensor-1.a_b");
        for bad in [
            "acme",
            "acme/",
            "/x",
            "acme/x/y",
            "acme/.x",
            "acme/X",
            "-a/x",
            &format!("a/{}", "b".repeat(65)),
        ] {
            assert!(DeviceName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_and_deserialising_revalidate() {
        let bytes = encode(&"Bad/Name".to_string());
        assert!(decode::<DeviceName>(&bytes).is_err());
        assert!(serde_json::from_str::<OrgId>("\"-x\"").is_err());
        let n = DeviceName::new("acme/d1").unwrap();
        assert_eq!(decode::<DeviceName>(&encode(&n)).unwrap(), n);
        assert_eq!(
            serde_json::from_str::<DeviceName>("\"acme/d1\"").unwrap(),
            n
        );
    }

    #[test]
    fn state_keys_are_domain_separated() {
        let org = OrgId::new("acme").unwrap();
        assert_ne!(org.state_key(), hash(Domain::DeviceName, b"acme"));
    }
}
