//! What the tests share: temp folders that clean up, a cache written the way
//! huggingface_hub writes it, and a local stand-in for the hub.

#![allow(dead_code)] // each test file uses part of this

pub mod standin;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("crossenc-hub-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A commit hash made from `seed`, 40 hex like the hub's.
pub fn commit(seed: &str) -> String {
    sha256_hex(seed.as_bytes())[..40].to_owned()
}

/// `<cache>/models--ORG--NAME`.
pub fn repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// Writes `files` as huggingface_hub does: the bytes in `blobs/<sha256>`, and
/// `snapshots/<commit>/<name>` a relative symlink to it. Returns the snapshot folder.
pub fn write_snapshot(cache: &Path, id: &str, commit: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let repo = repo_dir(cache, id);
    let snapshot = repo.join("snapshots").join(commit);
    for (name, bytes) in files {
        let etag = sha256_hex(bytes);
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join(&etag), bytes).unwrap();
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(name.matches('/').count() + 2);
        std::os::unix::fs::symlink(format!("{up}blobs/{etag}"), &link).unwrap();
    }
    snapshot
}

/// Writes `refs/<revision>` holding `commit`, as huggingface_hub does (no newline).
pub fn write_ref(cache: &Path, id: &str, revision: &str, commit: &str) {
    let path = repo_dir(cache, id).join("refs").join(revision);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, commit).unwrap();
}

/// The bytes of a tiny model's files, distinct so a mix-up shows.
pub const CONFIG: &[u8] = br#"{"model_type":"bert","hidden_size":4}"#;
pub const TOKENIZER: &[u8] = br#"{"version":"1.0","model":{"type":"WordPiece"}}"#;
pub const WEIGHTS: &[u8] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      not really safetensors";

/// An index naming two shards, as transformers writes it.
pub fn index_json(shards: [&str; 2]) -> Vec<u8> {
    format!(
        r#"{{"metadata":{{"total_size":16}},"weight_map":{{"a.weight":"{0}","b.weight":"{1}","c.bias":"{1}"}}}}"#,
        shards[0], shards[1]
    )
    .into_bytes()
}

/// Settings for `cache` that never go online.
pub fn offline(cache: &Path) -> crossenc_hub::HubSettings {
    let mut settings = crossenc_hub::HubSettings::new(cache);
    settings.offline = true;
    settings
}
