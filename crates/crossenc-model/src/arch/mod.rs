//! One file per architecture, behind [`Architecture`]: where its checkpoint keeps the
//! weights, what its tokenizer's pair template must be (or, for a decoder, that it
//! reads a prompt template), how it scores, and candle's padded model of it. The packed
//! CPU pass (`crate::packed`) runs BERT-style encoders from the [`Layout`] they give;
//! an architecture with another layer loop (ModernBERT, the decoders) brings its own. Nothing outside this crate learns which one runs but its name.

mod bert;
mod deberta_v2;
mod decoder;
mod distilbert;
mod modernbert;
mod xlm_roberta;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::layers::pack_encoder;
use crate::packed::PackedPass;
use crate::{ModelConfig, PaddedBatch};

/// An architecture crossenc runs.
pub(crate) trait Architecture: Sync {
    /// Its name and the checkpoints it runs.
    fn identity(&self) -> &'static Identity;

    /// Where the weights live and how the embeddings read a pair, for `config.json`'s
    /// `pad_token_id`.
    fn layout(&self, pad_token_id: u32) -> Layout;

    /// What this architecture cannot run in a config that parsed, beyond the common
    /// checks.
    fn check(&self, _config: &ModelConfig) -> Result<(), Refusal> {
        Ok(())
    }

    /// The packed CPU pass's weights; by default a BERT-style encoder read through the
    /// layout's names.
    fn packed(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PackedPass>> {
        Ok(Box::new(pack_encoder(vb, config)?))
    }

    /// Whether this checkpoint scores a pair by the logits of the template's answer
    /// tokens at the last position (a causal LM), rather than by a classifier's labels.
    fn scores_by_answers(&self, _config: &ModelConfig) -> bool {
        false
    }

    /// Why candle's padded pass of this architecture cannot run in bf16, if it cannot.
    fn no_candle_bf16(&self) -> Option<&'static str> {
        None
    }

    /// candle's forward pass over padded pairs: the path on GPUs, and the reference
    /// the packed CPU pass is checked against.
    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>>;
}

/// An architecture's name and the checkpoints it runs.
pub(crate) struct Identity {
    /// Its name in `build_info` and logs.
    pub name: &'static str,
    /// The `architectures` entries of `config.json` it runs.
    pub classes: &'static [&'static str],
    /// The `model_type`s it runs, for a `config.json` without `architectures`.
    pub model_types: &'static [&'static str],
    /// `pad_token_id` where `config.json` does not give it (transformers' default).
    pub default_pad_token_id: u32,
}

/// A forward pass over pairs padded to one width.
pub(crate) trait PaddedModel: Send + Sync {
    /// Logits `[pairs, labels]`.
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor>;
}

/// How a checkpoint of an architecture is laid out, as the packed pass reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The encoder's prefix in `model.safetensors` (`bert`, `roberta`, `distilbert`).
    pub encoder: &'static str,
    /// The encoder's tensors under that prefix, for a BERT-style encoder.
    pub names: Option<&'static LayerNames>,
    /// The head: a dense layer and its activation on the first token, then the
    /// labels' layer.
    pub head_dense: &'static str,
    pub head_activation: HeadActivation,
    pub head_out: &'static str,
    /// Whether the encoder adds absolute position embeddings (DeBERTa-v3 has only
    /// relative ones, ModernBERT rotary ones).
    pub position_table: bool,
    /// The position id of a pair's first token: RoBERTa's count from `pad_token_id + 1`.
    pub first_position: usize,
    /// Whether the tokenizer's type ids reach the model; RoBERTa's tokenizers give the
    /// model none, and its table has one row.
    pub token_types: bool,
    /// The special tokens the tokenizer's pair template must produce; `None` for a
    /// decoder, which reads a prompt template instead.
    pub pair_template: Option<PairTemplate>,
}

/// Where a BERT-style encoder keeps its tensors, under its prefix; each layer's under
/// `layers.N`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LayerNames {
    pub embeddings: &'static str,
    /// The token-type table, under `embeddings`, where the architecture has one.
    pub token_type_embeddings: Option<&'static str>,
    pub embedding_norm: &'static str,
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// The activation between the head's two layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadActivation {
    /// BERT's pooler, RoBERTa's classification head.
    Tanh,
    /// DistilBERT's pre-classifier.
    Relu,
    /// ModernBERT's head (before its norm).
    Gelu,
}

/// Why a config that parsed cannot run: the field, its value, what is allowed.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub field: &'static str,
    pub value: String,
    pub allowed: String,
}

impl Refusal {
    pub fn new(field: &'static str, value: &str, allowed: &str) -> Self {
        Self {
            field,
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }
}

/// A refusal found while building a pass, as candle's error (what `packed` and `padded`
/// return); `check` refuses the same configs first, at open.
impl From<Refusal> for candle_core::Error {
    fn from(refusal: Refusal) -> Self {
        candle_core::Error::Msg(refusal.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is {}: {}", self.field, self.value, self.allowed)
    }
}

/// Special tokens of a pair's template: before the first text, between the two, and
/// after the second (BERT's `[CLS] A [SEP] B [SEP]` is 1, 1, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairTemplate {
    pub before: usize,
    pub between: usize,
    pub after: usize,
}

impl PairTemplate {
    /// BERT's `[CLS] A [SEP] B [SEP]`.
    pub const ONE_SEPARATOR: Self = Self {
        before: 1,
        between: 1,
        after: 1,
    };
    /// RoBERTa's `<s> A </s></s> B </s>`.
    pub const TWO_SEPARATORS: Self = Self {
        before: 1,
        between: 2,
        after: 1,
    };
}

impl std::fmt::Display for PairTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let specials = |n: usize| vec!["<special>"; n].join(" ");
        write!(
            f,
            "{} A {} B {}",
            specials(self.before),
            specials(self.between),
            specials(self.after)
        )
    }
}

static ARCHITECTURES: &[&dyn Architecture] = &[
    &bert::Bert,
    &xlm_roberta::XlmRoberta,
    &distilbert::DistilBert,
    &modernbert::ModernBert,
    &deberta_v2::DebertaV2,
    &decoder::QWEN3,
    &decoder::QWEN2,
    &decoder::GEMMA,
];

/// The architecture that runs a checkpoint of these classes (or, without any, of this
/// `model_type`).
pub(crate) fn for_checkpoint(
    classes: &[String],
    model_type: Option<&str>,
) -> Option<&'static dyn Architecture> {
    let runs = |a: &&dyn Architecture| {
        if classes.is_empty() {
            model_type.is_some_and(|t| a.identity().model_types.contains(&t))
        } else {
            classes
                .iter()
                .any(|c| a.identity().classes.contains(&c.as_str()))
        }
    };
    ARCHITECTURES.iter().copied().find(runs)
}

/// The architecture of this name (its [`Identity::name`]).
pub(crate) fn named(name: &str) -> &'static dyn Architecture {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.identity().name == name)
        .expect("a ModelConfig names a known architecture")
}

/// Every class crossenc runs, for the error that refuses another.
pub(crate) fn supported_classes() -> String {
    let classes: Vec<&str> = ARCHITECTURES
        .iter()
        .flat_map(|a| a.identity().classes.iter().copied())
        .collect();
    classes.join(", ")
}
