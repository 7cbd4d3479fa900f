//! Lenient borrowed field types and the `lenient_struct!` plumbing: every field
//! accepts any JSON type (a wrong type reads as absent) and unread fields are
//! skipped without allocating.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Any JSON value seen through a lenient field: scalars are kept, containers
/// are skipped.
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Other,
}

pub(super) struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Scalar::Other)
    }
}

/// A string field; any other type reads as absent.
#[derive(Default)]
pub(super) struct LStr<'a>(pub(super) Option<Cow<'a, str>>);

impl<'a> LStr<'a> {
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Str(s) => LStr(Some(s)),
            _ => LStr(None),
        })
    }
}

/// Declares a lenient `Copy` scalar field: `$read` maps the [`Scalar`] seen
/// to the value, `None` (absent) for any other type.
macro_rules! lenient_scalar {
    ($(#[$meta:meta])* $name:ident($ty:ty), $read:expr) => {
        $(#[$meta])*
        #[derive(Default)]
        pub(super) struct $name(Option<$ty>);

        impl $name {
            pub(super) fn get(&self) -> Option<$ty> {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let read: fn(Scalar<'de>) -> Option<$ty> = $read;
                Ok($name(read(d.deserialize_any(ScalarVisitor)?)))
            }
        }
    };
}

lenient_scalar!(
    /// A boolean field; any other type reads as absent.
    LBool(bool),
    |s| match s {
        Scalar::Bool(b) => Some(b),
        _ => None,
    }
);

lenient_scalar!(
    /// A non-negative number field (floats truncated); anything else is absent.
    LU64(u64),
    |s| match s {
        Scalar::U64(n) => Some(n),
        Scalar::I64(n) => u64::try_from(n).ok(),
        // Truncation is intended: token counts written as floats.
        Scalar::F64(f) if f.is_finite() && f >= 0.0 => Some(f as u64),
        _ => None,
    }
);

lenient_scalar!(
    /// A number field as `f64`; anything else is absent.
    LF64(f64),
    |s| match s {
        Scalar::U64(n) => Some(n as f64),
        Scalar::I64(n) => Some(n as f64),
        Scalar::F64(f) => Some(f),
        _ => None,
    }
);

/// Visitor methods for the scalar types a lenient container field does not
/// accept: each reads as `$absent` instead of failing the record.
macro_rules! scalars_read_as {
    ($absent:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
}

/// A lenient struct that is filled from the entries of a JSON object: every
/// field starts as its `Default` (absent) and unknown keys are skipped.
pub(super) trait Fill<'de>: Default {
    fn fill<A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error>;
}

impl<'de, T: Fill<'de>> Fill<'de> for Box<T> {
    fn fill<A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error> {
        (**self).fill(map)
    }
}

/// Fills a caller-owned `T` from the object a deserializer holds, so that the
/// top-level record is never moved (it is the largest value of a parse).
pub(super) struct FillIn<'r, T>(pub(super) &'r mut T);

impl<'de, T: Fill<'de>> Visitor<'de> for FillIn<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.fill(map)
    }
}

/// Declares a lenient struct and its [`Fill`], mapping JSON keys to fields.
///
/// Hand-rolled rather than `#[derive(Deserialize)]` with `#[serde(default)]`:
/// the derive keeps an `Option` per field beside a whole `Default` value,
/// assembles the struct at the end and returns it through every `Result` on
/// the way up. For the 30-field [`Record`] those copies were the largest cost
/// after string scanning. Here each value is written straight into its field.
/// A repeated key keeps its last value, as the slow path's
/// `serde_json::Value` does, instead of failing the fast path.
macro_rules! lenient_struct {
    (
        $(#[$meta:meta])*
        struct $name:ident $(<$lt:lifetime>)? {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        pub(super) struct $name $(<$lt>)? {
            $( $(#[$fmeta])* pub(super) $field: $ty, )*
        }

        const _: () = {
            #[allow(non_camel_case_types)]
            enum Key {
                $($field,)*
                Other,
            }

            impl<'de> Deserialize<'de> for Key {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl Visitor<'_> for V {
                        type Value = Key;
                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            f.write_str("a field name")
                        }
                        fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                            Ok(match v {
                                $($key => Key::$field,)*
                                _ => Key::Other,
                            })
                        }
                    }
                    d.deserialize_identifier(V)
                }
            }

            impl<'de $(: $lt, $lt)?> Fill<'de> for $name $(<$lt>)? {
                fn fill<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
                    while let Some(key) = map.next_key::<Key>()? {
                        match key {
                            $(Key::$field => self.$field = map.next_value::<$ty>()?,)*
                            Key::Other => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(())
                }
            }
        };
    };
}

/// An object field filled as `T`; any other type reads as absent.
pub(super) struct Obj<T>(pub(super) Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Fill<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Fill<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut t = T::default();
                t.fill(map)?;
                Ok(Obj(Some(t)))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Obj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            scalars_read_as!(Obj(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}
