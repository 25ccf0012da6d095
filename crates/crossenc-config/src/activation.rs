//! `model.activation` as TOML spells it: `model` for the model's own default (`None`),
//! or one of [`ScoreActivation`]'s spellings to override it.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use crate::ScoreActivation;

/// What `model.activation` may be, in the order errors list them.
const SPELLINGS: &[&str] = &[MODEL, "sigmoid", "identity"];
const MODEL: &str = "model";

pub fn serialize<S: Serializer>(
    activation: &Option<ScoreActivation>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(activation.map_or(MODEL, ScoreActivation::as_str))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ScoreActivation>, D::Error> {
    struct Spelling;
    impl Visitor<'_> for Spelling {
        type Value = Option<ScoreActivation>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "one of {SPELLINGS:?}")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            if text == MODEL {
                return Ok(None);
            }
            match text.parse() {
                Ok(activation) => Ok(Some(activation)),
                // As serde's own enums say it, so the loader reports it alike.
                Err(_) => Err(E::unknown_variant(text, SPELLINGS)),
            }
        }
    }
    d.deserialize_str(Spelling)
}
