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
                        let (tag, variant): (u32, A::Variant) = data.variant()?;
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
