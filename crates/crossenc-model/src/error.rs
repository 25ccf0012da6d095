use std::path::PathBuf;

/// Why a model folder could not be loaded or a batch could not be scored. Each variant
/// names the file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: missing (a model folder needs config.json, tokenizer.json and model.safetensors, or model.safetensors.index.json and its shards)", path.display())]
    MissingFile { path: PathBuf },
    #[error("{}: missing, though {} names it for tensor {tensor}", path.display(), index.display())]
    MissingShard {
        path: PathBuf,
        index: PathBuf,
        tensor: String,
    },
    #[error("template {template}: {message}")]
    Template { template: String, message: String },
    #[error("{}: {message}", path.display())]
    Prompt { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a usable model config: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: `{field}` is {value}: {allowed}", path.display())]
    Unsupported {
        path: PathBuf,
        field: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{}: cannot load the tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
    #[error("tokenizing a pair failed: {0}")]
    Encode(String),
    #[error("a pair holds {what} {value}, past the model's {limit}")]
    TokenOutOfRange {
        what: &'static str,
        value: u32,
        limit: usize,
    },
    #[error("the forward pass failed: {0}")]
    Forward(#[from] candle_core::Error),
    #[error("oneDNN products: {0}")]
    Onednn(#[from] crossenc_onednn::OnednnError),
}
