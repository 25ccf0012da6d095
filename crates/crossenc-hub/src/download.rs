//! Filling the cache with hf-hub, file by file, and only with the files crossenc reads.
//!
//! hf-hub (the blocking ureq API) does the HTTP, the blobs, the snapshot symlinks and the
//! ref; it always asks the hub about a file it is told to download, even one already cached.
//! So `config.json` is downloaded first, always (it is small), and the snapshot it lands in
//! tells which commit the revision is at now; every other file is downloaded only when that
//! snapshot lacks it, so a weight file already cached is not fetched twice.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::cache::{drop_dangling, shards, CONFIG, INDEX, TOKENIZER, WEIGHTS};
use crate::{HubError, HubSettings, ModelId};

/// Downloads what `id` at `revision` needs into the cache and returns its snapshot folder.
/// `cached` is the snapshot the cache already has for the revision, if any.
pub(crate) fn fetch(
    id: &ModelId,
    revision: &str,
    settings: &HubSettings,
    cached: Option<&Path>,
) -> Result<PathBuf, HubError> {
    let fetcher = Fetcher::new(id, revision, settings)?;
    if let Some(cached) = cached {
        drop_dangling(&cached.join(CONFIG));
    }
    let config = fetcher.download(CONFIG)?;
    let snapshot = snapshot_of(&config).to_owned();
    fetcher.ensure(&snapshot, TOKENIZER)?;
    fetcher.ensure_weights(&snapshot)?;
    Ok(snapshot)
}

/// One model at one revision on one endpoint, and what errors need to name.
struct Fetcher<'a> {
    repo: ApiRepo,
    id: &'a ModelId,
    revision: &'a str,
    endpoint: &'a str,
}

impl<'a> Fetcher<'a> {
    /// hf-hub's client set from `settings` alone: its own defaults would read `HF_HOME`,
    /// `HF_ENDPOINT` and the token file behind our back.
    fn new(
        id: &'a ModelId,
        revision: &'a str,
        settings: &'a HubSettings,
    ) -> Result<Fetcher<'a>, HubError> {
        let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            .with_progress(settings.progress)
            .with_user_agent("crossenc", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|source| HubError::Client {
                endpoint: settings.endpoint.clone(),
                source: Box::new(source),
            })?;
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_owned());
        Ok(Fetcher {
            repo: api.repo(repo),
            id,
            revision,
            endpoint: &settings.endpoint,
        })
    }

    /// Downloads `file` whatever the cache holds; returns its path in the snapshot.
    fn download(&self, file: &str) -> Result<PathBuf, HubError> {
        self.repo.download(file).map_err(|e| self.error(file, e))
    }

    /// Makes sure `snapshot` holds `file`, downloading it if not. A download that lands in
    /// another snapshot means the revision moved since `config.json` was fetched.
    fn ensure(&self, snapshot: &Path, file: &str) -> Result<(), HubError> {
        let wanted = snapshot.join(file);
        if wanted.is_file() {
            return Ok(());
        }
        drop_dangling(&wanted);
        let got = self.download(file)?;
        if got == wanted {
            return Ok(());
        }
        Err(HubError::RevisionMoved {
            id: self.id.to_string(),
            revision: self.revision.to_owned(),
            file: file.to_owned(),
            expected: snapshot.to_owned(),
            got,
        })
    }

    /// `model.safetensors`, or when the repo has none (404), the index and every shard.
    fn ensure_weights(&self, snapshot: &Path) -> Result<(), HubError> {
        if !snapshot.join(WEIGHTS).is_file() && snapshot.join(INDEX).is_file() {
            return self.ensure_shards(snapshot);
        }
        match self.ensure(snapshot, WEIGHTS) {
            Err(e) if e.is_not_found() => self.ensure_shards(snapshot),
            done => done,
        }
    }

    fn ensure_shards(&self, snapshot: &Path) -> Result<(), HubError> {
        match self.ensure(snapshot, INDEX) {
            Err(e) if e.is_not_found() => return Err(self.no_weights()),
            done => done?,
        }
        for shard in shards(&snapshot.join(INDEX))? {
            self.ensure(snapshot, &shard)?;
        }
        Ok(())
    }

    fn error(&self, file: &str, source: ApiError) -> HubError {
        HubError::Download {
            id: self.id.to_string(),
            revision: self.revision.to_owned(),
            file: file.to_owned(),
            endpoint: self.endpoint.to_owned(),
            status: http_status(&source),
            source: Box::new(source),
        }
    }

    fn no_weights(&self) -> HubError {
        HubError::NoWeights {
            id: self.id.to_string(),
            revision: self.revision.to_owned(),
            endpoint: self.endpoint.to_owned(),
        }
    }
}

/// The snapshot folder a top-level file was downloaded into.
fn snapshot_of(file: &Path) -> &Path {
    file.parent().unwrap_or(file)
}

/// The HTTP status behind an hf-hub error, when the endpoint answered with one.
fn http_status(error: &ApiError) -> Option<u16> {
    match error {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    }
}
