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

/// What a document too long to fit beside its query in the model's window becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongDocuments {
    /// Cut to fit: what follows the cut is never read.
    #[default]
    Truncate,
    /// Scored in windows of whole tokens, each a pair of its own; the document's score
    /// is its best window's.
    Chunk,
}

/// Which end of a text truncation cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationDirection {
    /// Keep the start.
    #[default]
    Right,
    /// Keep the end.
    Left,
}

/// How a request's pairs are read when they do not fit the model's window: what the
/// supervisor tells the tokenizers with every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reading {
    pub long_documents: LongDocuments,
    /// Under [`LongDocuments::Chunk`], most windows one document may make.
    pub max_windows: u32,
    /// Tokens each window repeats of the one before it.
    pub overlap: u32,
    /// Refuse a pair that would be cut rather than truncating it.
    pub refuse_cut: bool,
    pub direction: TruncationDirection,
}

impl Default for Reading {
    /// Truncate, from the end, as every reranker does unless asked otherwise.
    fn default() -> Self {
        Self {
            long_documents: LongDocuments::Truncate,
            max_windows: 1,
            overlap: 0,
            refuse_cut: false,
            direction: TruncationDirection::Right,
        }
    }
}

impl Reading {
    /// Windows a document may make: one unless chunked.
    pub fn windows_allowed(&self) -> usize {
        match self.long_documents {
            LongDocuments::Truncate => 1,
            LongDocuments::Chunk => self.max_windows.max(1) as usize,
        }
    }
}

/// Why a pair is refused as its request's reading asked, rather than scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairRefusal {
    /// `truncate: false`, and the pair is `tokens` long where the model reads `limit`.
    WouldCut { tokens: u32, limit: u32 },
    /// Chunked, the document makes `windows` windows where `limit` are allowed.
    TooManyWindows { windows: u32, limit: u32 },
    /// A prompt template's body is cut from its end only, and read whole: neither
    /// windows nor a cut from the start fit a decoder's prompt.
    PromptReadsOneWindow,
    /// The prompt template's own text (with the request's instruction) takes `fixed`
    /// of the `limit` tokens the model reads, leaving the query and document no room.
    PromptLeavesNoRoom { fixed: u32, limit: u32 },
}

impl fmt::Display for PairRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairRefusal::WouldCut { tokens, limit } => write!(
                f,
                "is {tokens} tokens, over the model's {limit}, and truncate is false: send it shorter, or allow truncation"
            ),
            PairRefusal::TooManyWindows { windows, limit } => write!(
                f,
                "needs {windows} windows, over max_chunks_per_doc ({limit}): send it shorter, or ask for more windows (up to the model's max_chunks_per_doc)"
            ),
            PairRefusal::PromptReadsOneWindow => f.write_str(
                "does not fit the model's window, and this model's prompt template is read in one window, cut from its end: long_documents \"chunk\" and truncation_direction \"left\" are for encoders",
            ),
            PairRefusal::PromptLeavesNoRoom { fixed, limit } => write!(
                f,
                "leaves no room for its query and document: the prompt template's text with this instruction takes {fixed} of the model's {limit} tokens: send a shorter instruction"
            ),
        }
    }
}
