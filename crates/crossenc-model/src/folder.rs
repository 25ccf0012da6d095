use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ModelError;

/// The architecture this crate can run, as `config.json` names it.
const BERT_CLASSIFIER: &str = "BertForSequenceClassification";
/// Longest sequence served when the operator does not say: BERT's usual limit.
const DEFAULT_MAX_LENGTH: usize = 512;

/// A model folder whose files exist and whose `config.json` describes a model we can run.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub path: PathBuf,
    pub config: ModelConfig,
}

/// The activation between the two feed-forward layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form. The tanh form moves scores by ~1e-3.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
}

/// What the forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub num_labels: usize,
    pub pad_token_id: u32,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default, rename = "_name_or_path")]
    name_or_path: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    num_labels: Option<usize>,
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pad_token_id: u32,
    position_embedding_type: Option<String>,
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
        let raw: RawConfig = serde_json::from_str(&text).map_err(|source| ModelError::Config {
            path: config_path.clone(),
            source,
        })?;
        let fallback_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = ModelConfig::from_raw(raw, &config_path, fallback_name)?;
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
        let limit = self.config.max_position_embeddings;
        match requested {
            None => Ok(limit.min(DEFAULT_MAX_LENGTH)),
            Some(n) if n <= limit && n >= 2 => Ok(n),
            Some(n) => Err(ModelError::Unsupported {
                path: self.path.join(Self::CONFIG),
                field: "max_position_embeddings",
                value: limit.to_string(),
                allowed: format!("max_length {n} must be between 2 and this"),
            }),
        }
    }
}

impl ModelConfig {
    fn from_raw(raw: RawConfig, path: &Path, fallback_name: String) -> Result<Self, ModelError> {
        let unsupported = |field, value: String, allowed: &str| ModelError::Unsupported {
            path: path.to_path_buf(),
            field,
            value,
            allowed: allowed.to_string(),
        };
        if !raw.architectures.iter().any(|a| a == BERT_CLASSIFIER) {
            return Err(unsupported(
                "architectures",
                format!("{:?}", raw.architectures),
                "crossenc runs BertForSequenceClassification",
            ));
        }
        let activation = match raw.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
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
        // transformers serializes id2label, not always num_labels; either names the head size.
        let num_labels = raw
            .id2label
            .map(|labels| labels.len())
            .or(raw.num_labels)
            .unwrap_or(2);
        if num_labels != 1 {
            return Err(unsupported(
                "num_labels",
                num_labels.to_string(),
                "crossenc scores single-label cross-encoders (num_labels = 1)",
            ));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(unsupported(
                "num_attention_heads",
                raw.num_attention_heads.to_string(),
                "must divide hidden_size",
            ));
        }
        let name = if raw.name_or_path.is_empty() {
            fallback_name
        } else {
            raw.name_or_path
        };
        Ok(Self {
            name,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            activation,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            num_labels,
            pad_token_id: raw.pad_token_id,
        })
    }
}
