use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::arch::{self, Architecture, Layout, PairTemplate};
use crate::weights::WeightIndex;
use crate::{ModelError, PromptTemplate, ScoreActivation};

/// Longest sequence served when the operator does not say: BERT's usual limit. Longer
/// models (8192 positions) serve longer pairs only when asked: attention's cost grows
/// with the square of a pair's length.
const DEFAULT_MAX_LENGTH: usize = 512;

/// A model folder whose files exist and whose `config.json` describes a model we can run.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub path: PathBuf,
    pub config: ModelConfig,
    /// The safetensors files: `model.safetensors`, or the shards its index names.
    weights: Vec<PathBuf>,
    /// A sharded checkpoint's index: the tensors there are.
    index: Option<WeightIndex>,
}

/// The weights' files: `model.safetensors`, else the shards that
/// `model.safetensors.index.json` names, each of which must be there.
fn weight_files(folder: &Path) -> Result<(Vec<PathBuf>, Option<WeightIndex>), ModelError> {
    let single = folder.join(ModelFolder::WEIGHTS);
    let index = folder.join(ModelFolder::WEIGHTS_INDEX);
    if single.is_file() || !index.is_file() {
        if !single.is_file() {
            return Err(ModelError::MissingFile { path: single });
        }
        return Ok((vec![single], None));
    }
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Read {
        path: index.clone(),
        source,
    })?;
    let map = serde_json::from_str::<Index>(&text)
        .map_err(|source| ModelError::Config {
            path: index.clone(),
            source,
        })?
        .weight_map;
    let mut shards = BTreeSet::new();
    for (tensor, file) in &map {
        let shard = folder.join(file);
        if Path::new(file).components().count() != 1 || !shard.is_file() {
            return Err(ModelError::MissingShard {
                path: shard,
                index,
                tensor: tensor.clone(),
            });
        }
        shards.insert(shard);
    }
    if shards.is_empty() {
        return Err(ModelError::Weights {
            path: index,
            message: "the index names no tensor".into(),
        });
    }
    let index = WeightIndex {
        path: index,
        tensors: Arc::new(map.into_keys().collect()),
    };
    Ok((shards.into_iter().collect(), Some(index)))
}

/// The activation between the two feed-forward layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: the exact erf form. The tanh form moves scores by ~1e-3.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
    /// `silu`: x · sigmoid(x), the gate of SwiGLU feed-forwards (Qwen, Llama).
    Silu,
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
    /// Key and value heads, each shared by a group of query heads (as many as the
    /// query heads where the config does not say).
    pub num_key_value_heads: usize,
    /// The width of a head: `head_dim`, or hidden / heads where the config does not say.
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    /// `layer_norm_eps`, or a decoder's `rms_norm_eps`.
    pub layer_norm_eps: f64,
    /// The head's labels in index order, as `id2label` names them: one or two.
    pub labels: Vec<String>,
    pub pad_token_id: u32,
    /// The default activation of the raw score, from the model's own config: what
    /// sentence-transformers' `CrossEncoder` applies for this model.
    pub activation: ScoreActivation,
    /// A decoder reranker's prompt; `None` for an encoder.
    pub template: Option<Arc<PromptTemplate>>,
    /// The ids of the template's answer tokens (no, yes; or yes alone), where the model
    /// scores by their logits (a causal LM).
    pub answer_ids: Option<Vec<u32>>,
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

    /// The special tokens the tokenizer's pair template must produce; `None` for a
    /// decoder, which reads a prompt.
    pub fn pair_template(&self) -> Option<PairTemplate> {
        self.layout.pair_template
    }

    /// The length at which a token's attention costs what its dense layers do: the
    /// scheduler's and admission's measure of a pair's cost (see the core's
    /// `BatchCost`). Dense FLOPs per token over attention's per token and key; causal
    /// attention reads half the keys.
    /// The FLOPs of one pair of `len` tokens through every layer, counted as roofline
    /// counts them (a multiply-add is two; norms, activations and the head left out):
    /// the dense products of every token, and attention's scores and mix, all of them
    /// for an encoder, those of the keys at or before each query for a decoder.
    pub fn pair_flops(&self, len: usize) -> f64 {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let len = len as f64;
        let (dense, attention) = match self.layout.pair_template {
            Some(_) => (
                h * (q + 2 * kv) + q * h + 2 * h * i,
                2.0 * len * len * q as f64,
            ),
            None => (
                h * (q + 2 * kv) + q * h + 3 * h * i,
                len * (len + 1.0) * q as f64,
            ),
        };
        self.num_hidden_layers as f64 * (2.0 * len * dense as f64 + 2.0 * attention)
    }

    pub fn attention_span(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        if self.layout.pair_template.is_some() {
            // An encoder: BERT's ratio, 24h² of products against 4h·len.
            return (6 * h).max(1);
        }
        // A decoder: Q|K|V, the output, a gated feed-forward of three products; keys
        // and values read by causal attention, half of them on average.
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let dense = h * (q + 2 * kv) + q * h + 3 * h * i;
        (dense / q.max(1)).max(1)
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
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    #[serde(alias = "activation")]
    hidden_act: Option<String>,
    /// ModernBERT's and Gemma's name; a Gemma config may have both, this one null.
    hidden_activation: Option<String>,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    #[serde(
        default = "default_layer_norm_eps",
        alias = "norm_eps",
        alias = "rms_norm_eps"
    )]
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
    /// Checks that the files exist and that `config.json` describes a supported
    /// encoder (a decoder needs a template: [`ModelFolder::open_with`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::open_with(path, None)
    }

    /// Checks that the files exist (every shard the index names) and that `config.json`
    /// describes a supported model; a decoder reranker reads its prompt from
    /// `template` (a built-in name or a template file), which an encoder must not have.
    pub fn open_with(path: impl AsRef<Path>, template: Option<&str>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        for file in [Self::CONFIG, Self::TOKENIZER] {
            let file = path.join(file);
            if !file.is_file() {
                return Err(ModelError::MissingFile { path: file });
            }
        }
        let (weights, index) = weight_files(&path)?;
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
        let mut config = ModelConfig::from_raw(raw, json, &config_path, fallback_name)?;
        let mut folder = Self {
            path,
            config: config.clone(),
            weights,
            index,
        };
        if let Some(template) = folder.template(template)? {
            config.answer_ids = folder.answer_ids(&template)?;
            if let Some(answers) = template
                .answers
                .as_ref()
                .filter(|_| config.answer_ids.is_some())
            {
                config.labels = answers.labels();
            }
            config.template = Some(Arc::new(template));
        }
        folder.config = config;
        Ok(folder)
    }

    pub const CONFIG: &'static str = "config.json";
    pub const TOKENIZER: &'static str = "tokenizer.json";
    pub const WEIGHTS: &'static str = "model.safetensors";
    pub const WEIGHTS_INDEX: &'static str = "model.safetensors.index.json";

    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join(Self::TOKENIZER)
    }

    /// The file that names the weights: `model.safetensors`, or the shards' index.
    pub fn weights_path(&self) -> PathBuf {
        match self.weights.len() {
            1 if self.path.join(Self::WEIGHTS).is_file() => self.path.join(Self::WEIGHTS),
            _ => self.path.join(Self::WEIGHTS_INDEX),
        }
    }

    /// Every safetensors file of the weights: one, or each shard.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.weights
    }

    /// A sharded checkpoint's index of its tensors.
    pub(crate) fn weight_index(&self) -> Option<&WeightIndex> {
        self.index.as_ref()
    }

    /// The prompt template a decoder needs and an encoder must not have.
    fn template(&self, spec: Option<&str>) -> Result<Option<PromptTemplate>, ModelError> {
        let c = &self.config;
        let decoder = c.layout.pair_template.is_none();
        let refused = |message: String| ModelError::Template {
            template: spec.unwrap_or("(none)").to_string(),
            message,
        };
        match (spec, decoder) {
            (None, false) => Ok(None),
            (Some(_), false) => Err(refused(format!(
                "{} is an encoder ({}), which reads pairs through its tokenizer's own \
                 template: serve it without --template (model.template)",
                c.name, c.architecture
            ))),
            (None, true) => Err(refused(format!(
                "{} is a decoder reranker ({}), which reads a prompt: give one with \
                 --template (model.template), a built-in ({}) or a template file",
                c.name,
                c.architecture,
                PromptTemplate::BUILT_IN.join(", ")
            ))),
            (Some(spec), true) => PromptTemplate::resolve(spec).map(Some),
        }
    }

    /// The ids of the answer tokens, for a model that scores by their logits: each
    /// must be one token of the vocabulary.
    fn answer_ids(&self, template: &PromptTemplate) -> Result<Option<Vec<u32>>, ModelError> {
        if !self.config.arch().scores_by_answers(&self.config) {
            return Ok(None);
        }
        let Some(answers) = &template.answers else {
            return Err(ModelError::Template {
                template: template.name.clone(),
                message: format!(
                    "{} is scored by the logits of answer tokens: the template must name \
                     them (`answers`, no and yes)",
                    self.config.architecture
                ),
            });
        };
        let path = self.tokenizer_path();
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let id = |token: &str| -> Result<u32, ModelError> {
            let encoded = tokenizer
                .encode(token, false)
                .map_err(|e| ModelError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            match encoded.get_ids() {
                [id] if (*id as usize) < self.config.vocab_size => Ok(*id),
                _ => Err(ModelError::Template {
                    template: template.name.clone(),
                    message: format!(
                        "answer token {token:?} is {:?} in this tokenizer: it must be one \
                         token of the model's vocabulary",
                        encoded.get_tokens()
                    ),
                }),
            }
        };
        answers
            .labels()
            .iter()
            .map(|token| id(token))
            .collect::<Result<_, _>>()
            .map(Some)
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
        let Some(hidden_act) = raw.hidden_activation.or(raw.hidden_act) else {
            return Err(unsupported(
                "hidden_act",
                "absent".into(),
                "config.json must name the feed-forward's activation",
            ));
        };
        let hidden_act = match hidden_act.as_str() {
            "gelu" => HiddenAct::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
            "relu" => HiddenAct::Relu,
            "silu" => HiddenAct::Silu,
            other => {
                return Err(unsupported(
                    "hidden_act",
                    format!("{other:?}"),
                    "expected gelu, gelu_new, gelu_pytorch_tanh, relu or silu",
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
        let heads = raw.num_attention_heads;
        if heads == 0 || (raw.head_dim.is_none() && !raw.hidden_size.is_multiple_of(heads)) {
            return Err(unsupported(
                "num_attention_heads",
                heads.to_string(),
                "must divide hidden_size (or config.json must give head_dim)",
            ));
        }
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(unsupported(
                "num_key_value_heads",
                kv_heads.to_string(),
                &format!("must divide num_attention_heads ({heads})"),
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(unsupported(
                "head_dim",
                head_dim.to_string(),
                "must be even and above 0",
            ));
        }
        let activation = default_activation(
            &raw.sentence_transformers,
            &raw.sbert_ce_default_activation_function,
        )
        .map_err(|(field, value)| {
            unsupported(field, value, "crossenc applies Sigmoid or Identity")
        })?;
        let pad_token_id = match raw.pad_token_id {
            Some(id) => id,
            // The padded pass looks padding up before it masks it: a default past a small
            // vocabulary (a test checkpoint's) must still index the table.
            None => match architecture.identity().default_pad_token_id {
                id if (id as usize) < raw.vocab_size => id,
                _ => 0,
            },
        };
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
        if layout.pair_template.is_some()
            && (kv_heads != heads || head_dim * heads != raw.hidden_size)
        {
            return Err(unsupported(
                "head_dim",
                format!("{head_dim} with {kv_heads} key-value heads"),
                "an encoder's heads split hidden_size evenly, as many keys as queries",
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
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            labels,
            pad_token_id,
            activation,
            template: None,
            answer_ids: None,
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
