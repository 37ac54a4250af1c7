//! Lenient decoding of numbers and booleans, the way PVE emits them.
//!
//! PVE's Perl backend prints `number`-typed keys as JSON strings (`"cpulimit":"0"`), integers and
//! booleans usually as JSON numbers, and sometimes quoted (`/cluster/nextid`). Like
//! `proxmox-serde`'s perl helpers, accept ints, floats, numeric strings and booleans given as
//! `0/1/"1"/"true"/"yes"/"on"`.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A scalar as PVE might send it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Null,
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, boolean or string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
                Scalar::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

use serde::Deserialize;

impl Scalar {
    pub(crate) fn to_u64(&self) -> Result<u64, String> {
        match self {
            Scalar::UInt(v) => Ok(*v),
            Scalar::Int(v) => u64::try_from(*v).map_err(|_| format!("negative value {v}")),
            Scalar::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19 => Ok(*f as u64),
            Scalar::Bool(b) => Ok(u64::from(*b)),
            Scalar::Str(s) => {
                let t = s.trim();
                t.parse::<u64>().or_else(|_| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                        .map(|f| f as u64)
                        .ok_or_else(|| format!("{s:?} is not a non-negative integer"))
                })
            }
            other => Err(format!("{other:?} is not a non-negative integer")),
        }
    }

    pub(crate) fn to_i64(&self) -> Result<i64, String> {
        match self {
            Scalar::Int(v) => Ok(*v),
            Scalar::UInt(v) => i64::try_from(*v).map_err(|_| format!("{v} is too large")),
            Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(*f as i64),
            Scalar::Bool(b) => Ok(i64::from(*b)),
            Scalar::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{s:?} is not an integer")),
            other => Err(format!("{other:?} is not an integer")),
        }
    }

    pub(crate) fn to_f64(&self) -> Result<f64, String> {
        match self {
            Scalar::Int(v) => Ok(*v as f64),
            Scalar::UInt(v) => Ok(*v as f64),
            Scalar::Float(f) => Ok(*f),
            Scalar::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
            Scalar::Str(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{s:?} is not a number")),
            Scalar::Null => Err("null is not a number".into()),
        }
    }

    pub(crate) fn to_bool(&self) -> Result<bool, String> {
        match self {
            Scalar::Bool(b) => Ok(*b),
            Scalar::Int(v) => Ok(*v != 0),
            Scalar::UInt(v) => Ok(*v != 0),
            Scalar::Float(f) => Ok(*f != 0.0),
            Scalar::Str(s) => parse_bool(s).ok_or_else(|| format!("{s:?} is not a boolean")),
            Scalar::Null => Err("null is not a boolean".into()),
        }
    }

    /// The value as text, numbers printed plainly (used for pending values and config extras).
    pub(crate) fn into_text(self) -> Option<String> {
        match self {
            Scalar::Int(v) => Some(v.to_string()),
            Scalar::UInt(v) => Some(v.to_string()),
            Scalar::Float(f) => Some(f.to_string()),
            Scalar::Bool(b) => Some(if b { "1".into() } else { "0".into() }),
            Scalar::Str(s) => Some(s),
            Scalar::Null => None,
        }
    }
}

/// PVE's `parse_boolean`: `1|true|yes|on` and `0|false|no|off`, case-insensitive.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

macro_rules! lenient_fns {
    ($req:ident, $opt:ident, $ty:ty, $conv:expr) => {
        #[allow(dead_code)]
        pub(crate) fn $req<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let s = Scalar::deserialize(d)?;
            $conv(&s).map_err(de::Error::custom)
        }
        #[allow(dead_code)]
        pub(crate) fn $opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            match Scalar::deserialize(d)? {
                Scalar::Null => Ok(None),
                s => $conv(&s).map(Some).map_err(de::Error::custom),
            }
        }
    };
}

fn to_u32(s: &Scalar) -> Result<u32, String> {
    let v = s.to_u64()?;
    u32::try_from(v).map_err(|_| format!("{v} is out of range"))
}

lenient_fns!(u64_, opt_u64, u64, Scalar::to_u64);
lenient_fns!(u32_, opt_u32, u32, to_u32);
lenient_fns!(i64_, opt_i64, i64, Scalar::to_i64);
lenient_fns!(f64_, opt_f64, f64, Scalar::to_f64);
lenient_fns!(bool_, opt_bool, bool, Scalar::to_bool);

/// Optional text that may arrive as a number (e.g. a pending `value` of `2`).
pub(crate) fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Scalar::deserialize(d)?.into_text())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "f64_")]
        f: f64,
        #[serde(deserialize_with = "bool_")]
        b: bool,
        #[serde(default, deserialize_with = "opt_u64")]
        u: Option<u64>,
    }

    #[test]
    fn accepts_pve_shapes() {
        let t: T = serde_json::from_str(r#"{"f":"0","b":1,"u":"42"}"#).unwrap();
        assert_eq!((t.f, t.b, t.u), (0.0, true, Some(42)));
        let t: T = serde_json::from_str(r#"{"f":1.5,"b":"yes"}"#).unwrap();
        assert_eq!((t.f, t.b, t.u), (1.5, true, None));
        let t: T = serde_json::from_str(r#"{"f":2,"b":"0","u":null}"#).unwrap();
        assert_eq!((t.f, t.b, t.u), (2.0, false, None));
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        let e = serde_json::from_str::<T>(r#"{"f":"abc","b":1}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a number"), "{e}");
        assert!(serde_json::from_str::<T>(r#"{"f":1,"b":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"f":1,"b":1,"u":-3}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"f":[1],"b":1}"#).is_err());
    }
}
