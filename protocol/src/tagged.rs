//! Enums whose wire tag is written in the source, not implied by order.
//!
//! serde's derive tags a variant with its position, so reordering variants
//! would silently change the wire. postcard does not describe itself, so a
//! reader in another language only has the numbers in `docs/protocol.md`:
//! these enums carry those numbers explicitly. A variant is a unit or carries
//! exactly one payload; the tag is encoded as postcard's enum tag (a varint),
//! followed by the payload, if any.

macro_rules! tagged_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $(($payload:ty))? = $tag:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant $(($payload))?,
            )+
        }

        impl $name {
            /// The explicit tag this variant has on the wire.
            pub const fn wire_tag(&self) -> u32 {
                match self {
                    $( tagged_enum!(@pattern $name $variant $(, $payload)?) => $tag, )+
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(
                        tagged_enum!(@bind value, $name $variant $(, $payload)?) =>
                            tagged_enum!(@ser serializer, value, $name, $variant, $tag $(, $payload)?),
                    )+
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TagVisitor;

                impl<'de> serde::de::Visitor<'de> for TagVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("a tagged ", stringify!($name)))
                    }

                    fn visit_enum<A: serde::de::EnumAccess<'de>>(
                        self,
                        data: A,
                    ) -> Result<$name, A::Error> {
                        #[allow(unused_imports)]
                        use serde::de::VariantAccess as _;
                        let (tag, variant) = data.variant_seed($crate::tagged::TagSeed {
                            enum_name: stringify!($name),
                            variants: &[$((stringify!($variant), $tag)),+],
                        })?;
                        match tag {
                            $( $tag => tagged_enum!(@de variant, $name, $variant $(, $payload)?), )+
                            unknown => Err(serde::de::Error::invalid_value(
                                serde::de::Unexpected::Unsigned(u64::from(unknown)),
                                &concat!("a known ", stringify!($name), " tag"),
                            )),
                        }
                    }
                }

                deserializer.deserialize_enum(
                    stringify!($name),
                    &[$(stringify!($variant)),+],
                    TagVisitor,
                )
            }
        }
    };

    (@pattern $name:ident $variant:ident) => { $name::$variant };
    (@pattern $name:ident $variant:ident, $payload:ty) => { $name::$variant(_) };
    (@bind $value:ident, $name:ident $variant:ident) => { $name::$variant };
    (@bind $value:ident, $name:ident $variant:ident, $payload:ty) => { $name::$variant($value) };
    (@ser $s:ident, $value:ident, $name:ident, $variant:ident, $tag:literal) => {
        $s.serialize_unit_variant(stringify!($name), $tag, stringify!($variant))
    };
    (@ser $s:ident, $value:ident, $name:ident, $variant:ident, $tag:literal, $payload:ty) => {
        $s.serialize_newtype_variant(stringify!($name), $tag, stringify!($variant), $value)
    };
    (@de $v:ident, $name:ident, $variant:ident) => {
        $v.unit_variant().map(|()| $name::$variant)
    };
    (@de $v:ident, $name:ident, $variant:ident, $payload:ty) => {
        $v.newtype_variant::<$payload>().map($name::$variant)
    };
}

/// Reads a tagged enum's variant: as its number from binary formats
/// (postcard), or as its name from human-readable ones (JSON, where the
/// gateway stores signals and reports).
pub(crate) struct TagSeed {
    pub(crate) enum_name: &'static str,
    pub(crate) variants: &'static [(&'static str, u32)],
}

impl<'de> serde::de::DeserializeSeed<'de> for TagSeed {
    type Value = u32;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl serde::de::Visitor<'_> for TagSeed {
    type Value = u32;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "a {} tag or variant name", self.enum_name)
    }

    fn visit_u64<E: serde::de::Error>(self, tag: u64) -> Result<u32, E> {
        u32::try_from(tag)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(tag), &self))
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<u32, E> {
        self.variants
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, tag)| *tag)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(name), &self))
    }

    fn visit_bytes<E: serde::de::Error>(self, name: &[u8]) -> Result<u32, E> {
        match core::str::from_utf8(name) {
            Ok(name) => self.visit_str(name),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(name), &self)),
        }
    }
}
