//! The few settings both halves of crossenc name: the supervisor's configuration and
//! the wire to its workers on one side, the model the workers load on the other.
//!
//! Each is defined here once, with the one spelling the configuration, the worker's
//! command line and the wire use. Neither half may link the other, and the
//! configuration may not know models nor the model configurations, so they live in
//! this leaf: it depends on nothing of crossenc's, and every crate may depend on it
//! without turning a dependency back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The number format of a model's products, as an operator asks for it (`model.dtype`,
/// the worker's `--dtype`) and as a worker says it runs after any fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation: on oneDNN on the CPU (AMX tiles; AVX512-BF16
    /// where it times faster than f32), candle's bf16 kernels on a GPU. Where neither
    /// can run, f32 runs instead, with a log line saying why.
    Bf16,
}

impl Dtype {
    /// Every value, in the order errors list them.
    pub const ALL: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

    /// The one spelling: `f32`, `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dtype {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        parse(name, Dtype::ALL, Dtype::as_str)
    }
}

/// What turns a pair's raw score (a logit) into the score a client gets. A model has a
/// default (what sentence-transformers' `CrossEncoder` applies for it, from its
/// config.json); an operator may override it (`model.activation`, where `model`
/// keeps the model's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreActivation {
    /// 1 / (1 + e^-raw): a probability in [0, 1].
    Sigmoid,
    /// The raw score itself.
    Identity,
}

impl ScoreActivation {
    /// Every value, in the order errors list them.
    pub const ALL: [ScoreActivation; 2] = [ScoreActivation::Sigmoid, ScoreActivation::Identity];

    /// The one spelling: `sigmoid`, `identity`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreActivation::Sigmoid => "sigmoid",
            ScoreActivation::Identity => "identity",
        }
    }
}

impl fmt::Display for ScoreActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScoreActivation {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        parse(name, ScoreActivation::ALL, ScoreActivation::as_str)
    }
}

/// The value spelled `name`, or an error listing the spellings.
fn parse<T: Copy, const N: usize>(
    name: &str,
    all: [T; N],
    spell: fn(T) -> &'static str,
) -> Result<T, String> {
    all.into_iter().find(|&v| spell(v) == name).ok_or_else(|| {
        let spellings: Vec<String> = all.into_iter().map(|v| format!("`{}`", spell(v))).collect();
        format!("`{name}` is not one of {}", spellings.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_parses_from_its_own_spelling() {
        for dtype in Dtype::ALL {
            assert_eq!(dtype.to_string().parse::<Dtype>(), Ok(dtype));
        }
        for activation in ScoreActivation::ALL {
            assert_eq!(activation.to_string().parse(), Ok(activation));
        }
    }

    #[test]
    fn an_unknown_spelling_names_the_valid_ones() {
        assert_eq!(
            "f16".parse::<Dtype>(),
            Err("`f16` is not one of `f32`, `bf16`".into())
        );
        assert_eq!(
            "model".parse::<ScoreActivation>(),
            Err("`model` is not one of `sigmoid`, `identity`".into())
        );
    }
}
