//! How the sidecar's OpenAPI document describes the types it shows from the
//! protocol and the affiliate programme, which cannot derive `ToSchema`
//! themselves (the protocol is `no_std` and knows no HTTP). Each is an empty
//! enum named like the type it stands for, used as `#[schema(value_type =
//! ...)]`; what can be read from the type itself (its variant names) is read
//! from it, not copied.

use serde::de::{DeserializeOwned, Visitor};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// An empty enum that stands for a foreign type in the document, with the
/// schema that describes it.
macro_rules! stands_for {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }

        impl ToSchema for $name {}
    };
}

stands_for! {
    /// Stands for `eagate_protocol::Decimal`: prices and volumes as decimal
    /// strings, never JSON numbers.
    Decimal => text("A decimal number as a string, up to 18 decimal places.")
        .pattern(Some(r"^-?[0-9]+(\.[0-9]{1,18})?$"))
        .examples(["1.08543"])
}

stands_for! {
    /// Stands for `eagate_protocol::SignalId`.
    SignalId => text("A signal's id: 32 hex digits.").pattern(Some("^[0-9a-f]{32}$"))
}

stands_for! {
    /// Stands for `eagate_protocol::Signal`: a published signal, as stored
    /// and delivered.
    Signal => ObjectBuilder::new().description(Some(
        "A SignalDraft with channel, position (1, 2, 3, …) and signal_id (32 hex digits) added.",
    ))
}

stands_for! {
    /// Stands for `eagate_protocol::Action`.
    Action => names_of::<eagate_protocol::Action>("What a signal asks the device to do.")
}

stands_for! {
    /// Stands for `eagate_protocol::OrderType`.
    OrderType => names_of::<eagate_protocol::OrderType>("How an opening order is placed.")
}

stands_for! {
    /// Stands for `eagate_affiliates::programme::CreditKind`.
    CreditKind => names_of::<eagate_affiliates::programme::CreditKind>("What a line of a customer's credit ledger is.")
}

/// A string schema with a description.
fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// The names an enum is written with in JSON, as one string schema.
fn names_of<T: DeserializeOwned>(description: &str) -> RefOr<Schema> {
    text(description)
        .enum_values(Some(variant_names::<T>().iter().copied()))
        .into()
}

/// The names serde reads an enum's variants by. Its `Deserialize` hands them
/// to `deserialize_enum`, where this deserializer keeps them and stops.
pub(crate) fn variant_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(serde::de::Error::custom("only the names were wanted"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not an enum"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }

    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

#[cfg(test)]
mod tests {
    use super::variant_names;

    #[test]
    fn variant_names_are_the_ones_the_json_carries() {
        assert_eq!(
            variant_names::<eagate_protocol::OrderType>(),
            ["Market", "Limit", "Stop"]
        );
        assert_eq!(
            variant_names::<eagate_affiliates::programme::CreditKind>(),
            ["referred_a_customer", "was_referred", "reversal", "spend"]
        );
        for name in variant_names::<eagate_protocol::Action>() {
            let parsed: eagate_protocol::Action =
                serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), *name);
        }
    }
}
