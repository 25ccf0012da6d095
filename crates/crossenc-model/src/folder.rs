use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::arch::{self, Architecture, Layout, PairTemplate};
use crate::ModelError;

/// Longest sequence served when the operator does not say: BERT's usual limit. Longer
/// models (8192 positions) serve longer pairs only when asked: attention's cost grows
/// with the square of a pair's length.
const DEFAULT_MAX_LENGTH: usize = 512;

/// A model folder whose files exist and whose `config.json` describes a model we can run.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub path: PathBuf,
    pub config: ModelConfig,
}

/// The activation between the two feed-forward layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: the exact erf form. The tanh form moves scores by ~1e-3.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
}

/// What turns a pair's raw score into the score a client gets, unless the operator
/// says otherwise: what sentence-transformers' `CrossEncoder` applies for this model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreActivation {
    /// 1 / (1 + e^-raw): a probability.
    Sigmoid,
    /// The raw score itself.
    Identity,
}

/// What the forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    /// The architecture that runs it, by the name `build_info` gives it.
    pub architecture: &'static str,
    pub(crate) layout: Layout,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// The head's labels in index order, as `id2label` names them: one or two.
    pub labels: Vec<String>,
    pub pad_token_id: u32,
    /// The default activation of the raw score, from the model's own config.
    pub activation: ScoreActivation,
    /// The whole `config.json`, for what one architecture alone reads.
    pub(crate) json: std::sync::Arc<serde_json::Value>,
}

impl ModelConfig {
    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// A pair's one raw score from its logits: the logit of a one-label head; for a
    /// two-label head, the positive (second) label's logit less the other's, whose
    /// sigmoid is the softmax probability of the positive label.
    pub fn raw_score(&self, logits: &[f32]) -> f32 {
        match logits {
            [negative, positive] => positive - negative,
            _ => logits[0],
        }
    }

    /// The longest pair the position table holds: RoBERTa's positions start past
    /// `pad_token_id`, so 514 positions hold 512 tokens.
    pub fn max_pair_length(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.layout.first_position)
    }

    /// The special tokens the tokenizer's pair template must produce.
    pub fn pair_template(&self) -> PairTemplate {
        self.layout.pair_template
    }

    pub(crate) fn arch(&self) -> &'static dyn Architecture {
        arch::named(self.architecture)
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    #[serde(default, rename = "_name_or_path")]
    name_or_path: String,
    vocab_size: usize,
    // DistilBERT's config.json spells these its own way.
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    // ModernBERT's: hidden_activation.
    #[serde(alias = "activation", alias = "hidden_activation")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps", alias = "norm_eps")]
    layer_norm_eps: f64,
    num_labels: Option<usize>,
    id2label: Option<BTreeMap<String, String>>,
    pad_token_id: Option<u32>,
    position_embedding_type: Option<String>,
    /// sentence-transformers before v4: the CrossEncoder's default activation.
    sbert_ce_default_activation_function: Option<String>,
    /// sentence-transformers v4 on: `{"activation_fn": ...}`.
    sentence_transformers: Option<SentenceTransformersConfig>,
}

#[derive(Deserialize)]
struct SentenceTransformersConfig {
    activation_fn: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl ModelFolder {
    /// Checks that the three files exist and that `config.json` describes a supported model.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        for file in [Self::CONFIG, Self::TOKENIZER, Self::WEIGHTS] {
            let file = path.join(file);
            if !file.is_file() {
                return Err(ModelError::MissingFile { path: file });
            }
        }
        let config_path = path.join(Self::CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Read {
            path: config_path.clone(),
            source,
        })?;
        let config_error = |source| ModelError::Config {
            path: config_path.clone(),
            source,
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(config_error)?;
        let raw: RawConfig = serde_json::from_value(json.clone()).map_err(config_error)?;
        let fallback_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = ModelConfig::from_raw(raw, json, &config_path, fallback_name)?;
        Ok(Self { path, config })
    }

    pub const CONFIG: &'static str = "config.json";
    pub const TOKENIZER: &'static str = "tokenizer.json";
    pub const WEIGHTS: &'static str = "model.safetensors";

    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join(Self::TOKENIZER)
    }

    pub fn weights_path(&self) -> PathBuf {
        self.path.join(Self::WEIGHTS)
    }

    /// The truncation length: the operator's choice, checked against the model's
    /// position table; by default the model's own limit, at most 512.
    pub fn max_length(&self, requested: Option<usize>) -> Result<usize, ModelError> {
        let limit = self.config.max_pair_length();
        match requested {
            None => Ok(limit.min(DEFAULT_MAX_LENGTH)),
            Some(n) if n <= limit && n >= 2 => Ok(n),
            Some(n) => Err(ModelError::Unsupported {
                path: self.path.join(Self::CONFIG),
                field: "max_position_embeddings",
                value: self.config.max_position_embeddings.to_string(),
                allowed: format!(
                    "it holds pairs of up to {limit} tokens; max_length {n} must be between 2 and {limit}"
                ),
            }),
        }
    }
}

impl ModelConfig {
    fn from_raw(
        raw: RawConfig,
        json: serde_json::Value,
        path: &Path,
        fallback_name: String,
    ) -> Result<Self, ModelError> {
        let unsupported = |field, value: String, allowed: &str| ModelError::Unsupported {
            path: path.to_path_buf(),
            field,
            value,
            allowed: allowed.to_string(),
        };
        let Some(architecture) =
            arch::for_checkpoint(&raw.architectures, raw.model_type.as_deref())
        else {
            let (field, value) = match raw.architectures.is_empty() {
                true => ("model_type", format!("{:?}", raw.model_type)),
                false => ("architectures", format!("{:?}", raw.architectures)),
            };
            return Err(unsupported(
                field,
                value,
                &format!("crossenc runs {}", arch::supported_classes()),
            ));
        };
        let hidden_act = match raw.hidden_act.as_str() {
            "gelu" => HiddenAct::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
            "relu" => HiddenAct::Relu,
            other => {
                return Err(unsupported(
                    "hidden_act",
                    format!("{other:?}"),
                    "expected gelu, gelu_new, gelu_pytorch_tanh or relu",
                ))
            }
        };
        if let Some(kind) = raw.position_embedding_type.filter(|k| k != "absolute") {
            return Err(unsupported(
                "position_embedding_type",
                format!("{kind:?}"),
                "only absolute position embeddings are supported",
            ));
        }
        let labels = labels(raw.id2label, raw.num_labels).map_err(|(field, value)| {
            unsupported(
                field,
                value,
                "crossenc scores one-label heads (a relevance logit) and two-label heads \
                 (softmax; the second label is the relevant one)",
            )
        })?;
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(unsupported(
                "num_attention_heads",
                raw.num_attention_heads.to_string(),
                "must divide hidden_size",
            ));
        }
        let activation = default_activation(
            &raw.sentence_transformers,
            &raw.sbert_ce_default_activation_function,
        )
        .map_err(|(field, value)| {
            unsupported(field, value, "crossenc applies Sigmoid or Identity")
        })?;
        let pad_token_id = raw
            .pad_token_id
            .unwrap_or(architecture.identity().default_pad_token_id);
        let layout = architecture.layout(pad_token_id);
        if raw.max_position_embeddings <= layout.first_position + 1 {
            return Err(unsupported(
                "max_position_embeddings",
                raw.max_position_embeddings.to_string(),
                &format!(
                    "positions start at {}: the table holds no pair",
                    layout.first_position
                ),
            ));
        }
        if raw.type_vocab_size == 0 && layout.token_types {
            return Err(unsupported(
                "type_vocab_size",
                "0".into(),
                "the table needs a row",
            ));
        }
        let name = if raw.name_or_path.is_empty() {
            fallback_name
        } else {
            raw.name_or_path
        };
        let config = Self {
            name,
            architecture: architecture.identity().name,
            layout,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            labels,
            pad_token_id,
            activation,
            json: std::sync::Arc::new(json),
        };
        architecture
            .check(&config)
            .map_err(|r| ModelError::Unsupported {
                path: path.to_path_buf(),
                field: r.field,
                value: r.value,
                allowed: r.allowed,
            })?;
        Ok(config)
    }
}

/// The head's label names in index order. transformers writes `id2label`, not always
/// `num_labels`; either gives the head's size, and without both it is 2.
fn labels(
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
) -> Result<Vec<String>, (&'static str, String)> {
    let labels: Vec<String> = match id2label {
        Some(names) => {
            let mut numbered = names
                .into_iter()
                .map(|(id, name)| id.parse::<usize>().map(|id| (id, name)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("id2label", format!("a key that is not a number ({e})")))?;
            numbered.sort();
            if numbered.iter().enumerate().any(|(i, (id, _))| i != *id) {
                let ids: Vec<usize> = numbered.iter().map(|(id, _)| *id).collect();
                return Err(("id2label", format!("keyed {ids:?}, not 0..n")));
            }
            numbered.into_iter().map(|(_, name)| name).collect()
        }
        None => (0..num_labels.unwrap_or(2))
            .map(|i| format!("LABEL_{i}"))
            .collect(),
    };
    match labels.len() {
        1 | 2 => Ok(labels),
        n => Err(("num_labels", n.to_string())),
    }
}

/// The activation sentence-transformers' CrossEncoder applies by default, where the
/// config names one (`torch.nn.modules.activation.Sigmoid`, `...linear.Identity`):
/// the v4 key, then the older one; sigmoid without either.
fn default_activation(
    current: &Option<SentenceTransformersConfig>,
    older: &Option<String>,
) -> Result<ScoreActivation, (&'static str, String)> {
    let named = match (
        current.as_ref().and_then(|c| c.activation_fn.as_ref()),
        older,
    ) {
        (Some(name), _) => Some(("sentence_transformers.activation_fn", name)),
        (None, Some(name)) => Some(("sbert_ce_default_activation_function", name)),
        (None, None) => None,
    };
    let Some((field, name)) = named else {
        return Ok(ScoreActivation::Sigmoid);
    };
    match name.rsplit('.').next() {
        Some("Sigmoid") => Ok(ScoreActivation::Sigmoid),
        Some("Identity") => Ok(ScoreActivation::Identity),
        _ => Err((field, format!("{name:?}"))),
    }
}
