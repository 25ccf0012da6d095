//! Finding a model in huggingface_hub's cache layout, which hf-hub writes too:
//!
//! ```text
//! <cache>/models--ORG--NAME/refs/<revision>          holds a commit hash
//! <cache>/models--ORG--NAME/snapshots/<commit>/<file> a relative symlink to ../../blobs/<etag>
//! <cache>/models--ORG--NAME/blobs/<etag>             the bytes
//! ```
//!
//! A snapshot only counts when every file crossenc reads is there behind its link: a half
//! download must not be handed to the model loader as if it were whole.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::id::{is_commit, relative_path_problem};
use crate::{HubError, ModelId};

pub(crate) const CONFIG: &str = "config.json";
pub(crate) const TOKENIZER: &str = "tokenizer.json";
pub(crate) const WEIGHTS: &str = "model.safetensors";
pub(crate) const INDEX: &str = "model.safetensors.index.json";

/// What the cache holds for one id at one revision.
pub(crate) enum Lookup {
    /// Every needed file is there.
    Complete(PathBuf),
    /// Something is missing; `snapshot` is the folder the revision points at, if any.
    Incomplete {
        snapshot: Option<PathBuf>,
        missing: String,
    },
}

/// `<cache>/models--ORG--NAME`, huggingface_hub's folder for a model.
pub(crate) fn repo_dir(cache_dir: &Path, id: &ModelId) -> PathBuf {
    cache_dir.join(format!("models--{}--{}", id.org(), id.name()))
}

/// Looks `revision` up under `repo_dir`: a commit names its snapshot directly, anything
/// else goes through `refs/`.
pub(crate) fn lookup(repo_dir: &Path, revision: &str) -> Result<Lookup, HubError> {
    let snapshot = match snapshot_of(repo_dir, revision)? {
        Ok(snapshot) => snapshot,
        Err(missing) => {
            return Ok(Lookup::Incomplete {
                snapshot: None,
                missing,
            })
        }
    };
    Ok(match first_missing(&snapshot)? {
        None => Lookup::Complete(snapshot),
        Some(file) => Lookup::Incomplete {
            missing: format!("snapshot {} lacks {file}", snapshot.display()),
            snapshot: Some(snapshot),
        },
    })
}

/// The snapshot folder `revision` names, or what is missing on the way to it.
fn snapshot_of(repo_dir: &Path, revision: &str) -> Result<Result<PathBuf, String>, HubError> {
    if !repo_dir.is_dir() {
        return Ok(Err("no such folder".to_owned()));
    }
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        match read_ref(&ref_path)? {
            Some(commit) => commit,
            None => return Ok(Err(format!("no refs/{revision}"))),
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(Ok(snapshot))
    } else {
        Ok(Err(format!("no snapshots/{commit}")))
    }
}

/// The commit a ref file holds; none when it cannot be read (absent, or a folder because
/// longer refs such as `refs/pr/1` live below it).
fn read_ref(path: &Path) -> Result<Option<String>, HubError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let commit = text.trim();
    if !is_commit(commit) {
        return Err(HubError::BadRef {
            path: path.to_owned(),
            content: commit.chars().take(80).collect(),
        });
    }
    Ok(Some(commit.to_owned()))
}

/// The first needed file `snapshot` lacks. `is_file` follows the symlink, so a link whose
/// blob is gone counts as missing.
pub(crate) fn first_missing(snapshot: &Path) -> Result<Option<String>, HubError> {
    let missing = |file: &str| !snapshot.join(file).is_file();
    if let Some(file) = [CONFIG, TOKENIZER].into_iter().find(|f| missing(f)) {
        return Ok(Some(file.to_owned()));
    }
    if !missing(WEIGHTS) {
        return Ok(None);
    }
    if missing(INDEX) {
        return Ok(Some(format!("{WEIGHTS} (or {INDEX})")));
    }
    Ok(shards(&snapshot.join(INDEX))?
        .into_iter()
        .find(|shard| missing(shard)))
}

/// The shard files an index's `weight_map` names, each once, each a plain relative path (a
/// hostile index must not make us write or read outside the snapshot).
pub(crate) fn shards(index: &Path) -> Result<BTreeSet<String>, HubError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let bad = |reason: String| HubError::BadIndex {
        path: index.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if shards.is_empty() {
        return Err(bad("its weight_map names no shard".to_owned()));
    }
    for shard in &shards {
        if let Some(reason) = relative_path_problem(shard) {
            return Err(bad(format!("shard `{shard}`: {reason}")));
        }
    }
    Ok(shards)
}

/// Removes `path` if it is a symlink whose blob is gone: hf-hub will not replace an
/// existing link, so a broken one would make the download fail rather than repair it.
pub(crate) fn drop_dangling(path: &Path) {
    let is_link = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    if is_link && !path.exists() {
        // Best effort: if it stays, hf-hub's own error names the path.
        let _ = std::fs::remove_file(path);
    }
}
