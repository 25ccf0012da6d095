//! A reranker model on its own: a Hugging Face folder (`config.json`, `tokenizer.json`,
//! `model.safetensors` or its shards) of a supported architecture (BERT, XLM-RoBERTa,
//! RoBERTa, CamemBERT, DistilBERT, ModernBERT, DeBERTa-v2 encoders; the Qwen3 decoder
//! with a prompt template) loaded, pairs tokenized exactly as the reference does, and
//! scored by the packed CPU pass or candle's padded pass.
//!
//! This crate knows nothing of processes or IPC: the worker crate drives it.

mod arch;
mod cross_encoder;
mod error;
mod folder;
mod gelu;
mod layers;
mod packed;
mod template;
mod tokenize;
mod weights;
mod windows;

pub use arch::PairTemplate;
pub use cross_encoder::{CrossEncoder, PackedPairs, PaddedBatch, Products};
pub use crossenc_types::{Dtype, ScoreActivation};
pub use error::ModelError;
pub use folder::{HiddenAct, ModelConfig, ModelFolder};
pub use packed::{KernelChoice, KernelRate, Kernels, PrefixStats};
pub use template::{Answers, PromptTemplate};
pub use tokenize::{EncodedPair, EncodedText, PairTokenizer, Read};

/// Where a model runs: `cpu`, or `cuda:N` in a build with the `cuda` feature.
pub fn parse_device(name: &str) -> Result<candle_core::Device, ModelError> {
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = name
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| ModelError::Device {
            device: name.to_string(),
            message: "expected `cpu` or `cuda:N`".into(),
        })?;
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Device {
            device: name.to_string(),
            message: "this build has no CUDA support; rebuild with `--features cuda`".into(),
        });
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| ModelError::Device {
        device: name.to_string(),
        message: e.to_string(),
    })
}
