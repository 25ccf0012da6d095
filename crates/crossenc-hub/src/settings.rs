//! Where the cache is, which hub to ask, with which token, and whether asking is allowed:
//! read from the same variables, in the same order, as Python's huggingface_hub, so a cache
//! filled by `huggingface-cli download` is found and one we fill is found by Python.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::HubError;

/// How [`resolve`](crate::resolve) finds and fetches models.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder, holding `models--ORG--NAME/`.
    pub cache_dir: PathBuf,
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …`; needed for private and gated models.
    pub token: Option<String>,
    /// Never download: only the cache is used.
    pub offline: bool,
    /// Draw download progress bars on stderr.
    pub progress: bool,
}

impl HubSettings {
    /// The public hub.
    pub const DEFAULT_ENDPOINT: &'static str = "https://huggingface.co";

    /// Settings for `cache_dir` on the public hub: no token, online, no progress bar.
    pub fn new(cache_dir: impl Into<PathBuf>) -> HubSettings {
        HubSettings {
            cache_dir: cache_dir.into(),
            endpoint: HubSettings::DEFAULT_ENDPOINT.to_owned(),
            token: None,
            offline: false,
            progress: false,
        }
    }

    /// Reads the process environment (see [`HubSettings::from_vars`]); progress bars only
    /// when stderr is a terminal, so logs are not filled with them.
    pub fn from_env() -> Result<HubSettings, HubError> {
        HubSettings::from_vars(
            |name| std::env::var(name).ok(),
            std::io::stderr().is_terminal(),
        )
    }

    /// Reads huggingface_hub's variables through `var`, empty values counting as unset:
    /// the cache is `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, where `HF_HOME` defaults to
    /// `$XDG_CACHE_HOME/huggingface`, else `$HOME/.cache/huggingface`; the endpoint is
    /// `HF_ENDPOINT`; the token is `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else
    /// `$HF_HOME/token`; `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to 1, true, yes or
    /// on means offline; `HF_HUB_DISABLE_PROGRESS_BARS` turns bars off.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        stderr_is_terminal: bool,
    ) -> Result<HubSettings, HubError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let home = var("HOME").map(PathBuf::from);
        let path = |name: &str| var(name).map(|value| expand_home(&value, home.as_deref()));
        let hf_home = path("HF_HOME")
            .or_else(|| path("XDG_CACHE_HOME").map(|cache| cache.join("huggingface")))
            .or_else(|| home.as_ref().map(|h| h.join(".cache").join("huggingface")));
        let cache_dir = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let token_file = path("HF_TOKEN_PATH").or_else(|| hf_home.map(|h| h.join("token")));
        let token = var("HF_TOKEN")
            .map(|token| token.trim().to_owned())
            .or_else(|| token_file.as_deref().and_then(read_token));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| HubSettings::DEFAULT_ENDPOINT.into());
        Ok(HubSettings {
            cache_dir,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
            offline: is_true(var("HF_HUB_OFFLINE")) || is_true(var("TRANSFORMERS_OFFLINE")),
            progress: stderr_is_terminal && !is_true(var("HF_HUB_DISABLE_PROGRESS_BARS")),
        })
    }
}

/// The token is a secret: logs and error reports say only whether one is set.
impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .finish()
    }
}

/// huggingface_hub's truthy values.
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        ["1", "true", "yes", "on"]
            .iter()
            .any(|yes| v.trim().eq_ignore_ascii_case(yes))
    })
}

/// `~/…` as huggingface_hub expands it, for values that did not pass through a shell.
fn expand_home(value: &str, home: Option<&Path>) -> PathBuf {
    match (value.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(value),
    }
}

/// The token `huggingface-cli login` saved; none when the file is absent or blank.
fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}
