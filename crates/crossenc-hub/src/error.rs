//! Every way turning an id into a folder can fail, each carrying what a person needs to act:
//! the id, the revision, the folder searched, the file and the endpoint.

use std::path::PathBuf;

/// Why a model id could not be turned into a local folder.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The text is not `ORG/NAME`; refused before it can reach a path or a URL.
    #[error(
        "`{id}` is not a Hugging Face model id: {reason}; give it as ORG/NAME, \
         e.g. `cross-encoder/ms-marco-MiniLM-L-6-v2`"
    )]
    InvalidId { id: String, reason: String },

    /// The revision could escape the cache folder or is not a branch, tag or commit.
    #[error(
        "`{revision}` is not a usable revision: {reason}; give a branch or tag (`main`), \
         `refs/pr/N`, or a 40-hex commit"
    )]
    InvalidRevision { revision: String, reason: String },

    /// No variable says where the Hugging Face cache is.
    #[error(
        "cannot tell where the Hugging Face cache is: none of HF_HUB_CACHE, HF_HOME, \
         XDG_CACHE_HOME or HOME is set"
    )]
    NoCacheDir,

    /// The model is not (wholly) in the cache and downloading is switched off.
    #[error(
        "model {id} at revision `{revision}` is not in the Hugging Face cache {repo_dir} \
         ({missing}), and HF_HUB_OFFLINE is set, so it is not downloaded: unset HF_HUB_OFFLINE, \
         or fill the cache first, e.g. `huggingface-cli download {id} --revision {revision}`"
    )]
    NotCached {
        id: String,
        revision: String,
        /// `<cache>/models--ORG--NAME`, the folder that was searched.
        repo_dir: PathBuf,
        /// What was missing: the ref, the snapshot, or the first absent file.
        missing: String,
    },

    /// A ref file in the cache holds something other than a commit hash.
    #[error(
        "the Hugging Face cache is damaged: {path} should hold a 40-hex commit but holds \
         `{content}`; delete it to download the model again"
    )]
    BadRef { path: PathBuf, content: String },

    /// `model.safetensors.index.json` could not be read, or names shards we refuse.
    #[error("cannot use the weight index {path}: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    /// A file the model needs could not be downloaded.
    #[error(
        "could not download {file} of model {id} (revision `{revision}`) from {endpoint}: \
         {source}{hint}",
        hint = status_hint(.status)
    )]
    Download {
        id: String,
        revision: String,
        file: String,
        endpoint: String,
        /// The HTTP status the endpoint answered, when it answered one.
        status: Option<u16>,
        source: Box<hf_hub::api::sync::ApiError>,
    },

    /// hf-hub could not set up its HTTP client.
    #[error("cannot set up an HTTP client for {endpoint}: {source}")]
    Client {
        endpoint: String,
        source: Box<hf_hub::api::sync::ApiError>,
    },

    /// The repo has none of the weight files crossenc reads.
    #[error(
        "model {id} (revision `{revision}`) on {endpoint} has neither model.safetensors nor \
         model.safetensors.index.json: crossenc reads safetensors weights only \
         (a repo with only pytorch_model.bin needs converting)"
    )]
    NoWeights {
        id: String,
        revision: String,
        endpoint: String,
    },

    /// The revision pointed at another commit for one file than for the first: it was pushed
    /// to while we downloaded, and the files would not belong together.
    #[error(
        "model {id} revision `{revision}` moved while downloading ({file} landed in {got}, \
         not in {expected}); try again, or pin a commit"
    )]
    RevisionMoved {
        id: String,
        revision: String,
        file: String,
        expected: PathBuf,
        got: PathBuf,
    },
}

impl HubError {
    /// Whether the endpoint answered 404: for a file, that the repo does not have it.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            HubError::Download {
                status: Some(404),
                ..
            }
        )
    }
}

/// What a person can do about an HTTP refusal; nothing for other failures.
fn status_hint(status: &Option<u16>) -> &'static str {
    match status {
        Some(401 | 403 | 404) => {
            " (check the id and the revision; a private or gated model needs HF_TOKEN \
             with access to it)"
        }
        _ => "",
    }
}
