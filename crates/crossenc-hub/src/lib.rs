//! Turning a Hugging Face model id (`ORG/NAME`) into a local model folder crossenc can load.
//!
//! A model folder holds `config.json`, `tokenizer.json` and the weights: `model.safetensors`,
//! or `model.safetensors.index.json` and every shard its `weight_map` names. [`resolve`]
//! looks for those in the Hugging Face cache (the layout Python's huggingface_hub and
//! `huggingface-cli download` use, so models fetched by either side are shared) and, unless
//! `HF_HUB_OFFLINE` is set, downloads what is missing with hf-hub, and nothing else: repos
//! often also carry `pytorch_model.bin`, ONNX and TF weights many times the size.
//!
//! A revision found complete in the cache is used as it is, without asking the hub whether
//! the branch moved: starting a server must not depend on the hub being up. To follow a
//! branch, delete its `refs/` file; to pin a model, pass a commit.

mod cache;
mod download;
mod error;
mod id;
mod settings;

use std::path::PathBuf;

pub use crate::error::HubError;
pub use crate::id::ModelId;
pub use crate::settings::HubSettings;

use crate::cache::Lookup;

/// The branch used when no revision is given, as on the hub.
pub const DEFAULT_REVISION: &str = "main";

/// The local folder of `id` at `revision` (default `main`): the cached snapshot when it
/// holds every file the model needs, else a download into the cache unless
/// `settings.offline`. The folder is `<cache>/models--ORG--NAME/snapshots/<commit>/`.
pub fn resolve(
    id: &ModelId,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<PathBuf, HubError> {
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    id::check_revision(revision)?;
    let repo_dir = cache::repo_dir(&settings.cache_dir, id);
    match cache::lookup(&repo_dir, revision)? {
        Lookup::Complete(snapshot) => Ok(snapshot),
        Lookup::Incomplete { missing, .. } if settings.offline => Err(HubError::NotCached {
            id: id.to_string(),
            revision: revision.to_owned(),
            repo_dir,
            missing,
        }),
        Lookup::Incomplete { snapshot, .. } => {
            download::fetch(id, revision, settings, snapshot.as_deref())
        }
    }
}
