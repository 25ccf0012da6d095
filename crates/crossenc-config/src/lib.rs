//! The configuration of a crossenc server: what the supervisor, its workers and its
//! batching need to know, with the defaults an operator gets when they say nothing.
//!
//! A [`ServeConfig`] is built in layers, lowest first: built-in defaults, a TOML file,
//! `CROSSENC_<SECTION>__<KEY>` environment variables, command-line flags ([`load`]).
//! `conf/crossenc.toml` documents every key. Durations take human units (`"250ms"`,
//! `"5s"`), sizes too (`"64MiB"`). Unknown keys are errors that suggest the nearest valid
//! one; [`ServeConfig::validate`] then checks what types cannot.
//!
//! [`command`] holds `crossenc serve`'s flags and `crossenc config show|check`. This crate
//! must never know models or processes: the model-folder check is passed in.

mod activation;
pub mod command;
mod load;
mod log;
mod secret;
mod sections;
mod show;
mod validate;

use serde::{Deserialize, Serialize};

pub use crate::load::{env_var, load, ConfigError, Layers, Loaded, Problem, Source};
pub use crate::log::{LogConfig, LogFormat};
pub use crate::secret::ApiKey;
pub use crate::sections::{
    BatchingConfig, MetricsConfig, ModelConfig, ServerConfig, WorkersConfig, CHUNKS_PER_DOC_LIMIT,
};
pub use crate::show::render;
pub use crate::validate::InvalidSetting;
pub use crossenc_types::{Dtype, LongDocuments, ScoreActivation};
/// A flag's value for [`Layers::flags`].
pub use figment::value::Value;

/// Everything `crossenc serve` needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub server: ServerConfig,
    /// The model, when the server serves one; `models` names several.
    pub model: ModelConfig,
    /// Several models, each with its own workers, batching and admission; requests
    /// name theirs (`model`), and the first is served to those that do not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelConfig>,
    pub workers: WorkersConfig,
    pub batching: BatchingConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// One model as the server runs it: its own settings, and the workers and batching it
/// gets, its own where it set them, `[workers]` and `[batching]` where it did not.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    pub name: String,
    pub model: ModelConfig,
    pub workers: WorkersConfig,
    pub batching: BatchingConfig,
    /// Where its keys live: `model.` or `models[N].`, for messages.
    pub prefix: String,
}

impl ServeConfig {
    /// Every model the server runs, in order: `[[models]]`, or `[model]` alone.
    pub fn served_models(&self) -> Vec<ServedModel> {
        if self.models.is_empty() {
            return vec![self.serve(&self.model, "model.".into())];
        }
        let each = self.models.iter().enumerate();
        each.map(|(i, model)| self.serve(model, format!("models[{i}].")))
            .collect()
    }

    fn serve(&self, model: &ModelConfig, prefix: String) -> ServedModel {
        let mut workers = self.workers.clone();
        workers.tokenizer = model.tokenizer_workers.unwrap_or(workers.tokenizer);
        workers.model = model.model_workers.unwrap_or(workers.model);
        workers.model_threads = model.model_threads.unwrap_or(workers.model_threads);
        // 0 shares the cores among model workers: among every model's, not one's.
        if workers.model_threads == 0 && self.models.len() > 1 {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            workers.model_threads = (cores / self.model_workers().max(1)).max(1);
        }
        ServedModel {
            name: model.served_name(),
            model: model.clone(),
            workers,
            batching: model
                .batching
                .clone()
                .unwrap_or_else(|| self.batching.clone()),
            prefix,
        }
    }

    /// Model workers of every model together.
    fn model_workers(&self) -> usize {
        let each = self.models.iter();
        each.map(|m| m.model_workers.unwrap_or(self.workers.model))
            .sum()
    }

    /// The CUDA ordinals any model runs on.
    pub fn gpus(&self) -> Vec<u32> {
        let mut gpus: Vec<u32> = self
            .served_models()
            .iter()
            .flat_map(|served| served.model.gpus())
            .collect();
        gpus.sort_unstable();
        gpus.dedup();
        gpus
    }
}
