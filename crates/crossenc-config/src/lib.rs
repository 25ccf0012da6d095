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
    BatchingConfig, MetricsConfig, ModelConfig, ServerConfig, WorkersConfig,
};
pub use crate::show::render;
pub use crate::validate::InvalidSetting;
pub use crossenc_types::{Dtype, ScoreActivation};
/// A flag's value for [`Layers::flags`].
pub use figment::value::Value;

/// Everything `crossenc serve` needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub workers: WorkersConfig,
    pub batching: BatchingConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}
