//! What this crate's tests share: the small checkpoints of tests/fixtures/models and
//! their goldens, and the workspace's temporary folders and model copies
//! (tests/support/temp.rs, which the end-to-end tests use too).
#![allow(dead_code)] // each test file uses its own part of this

use std::path::PathBuf;

#[path = "../../../../tests/support/temp.rs"]
mod temp;
#[allow(unused_imports)] // as the rest: each test file uses its own part
pub use temp::{ModelCopy, TempDir};

/// One row of a fixture's goldens.jsonl: a pair, transformers' fp32 logits for every
/// label, and the pair's tokens after truncation; a decoder's also its instruction and
/// its ids as the model card tokenizes them.
#[derive(serde::Deserialize)]
pub struct Golden {
    pub query: String,
    pub document: String,
    /// A decoder's instruction (`None`: the template's default; always for an encoder).
    #[serde(default)]
    pub instruction: Option<String>,
    pub logits: Vec<f32>,
    pub tokens: usize,
    /// A decoder's ids (empty for an encoder's goldens, which do not hold them).
    #[serde(default)]
    pub ids: Vec<u32>,
    /// A decoder's tokens before the document, where the goldens give them.
    #[serde(default)]
    pub shared: Option<usize>,
    /// Whether the prompt tokenized as one text gives other ids than its pieces.
    #[serde(default)]
    pub whole_differs: bool,
}

/// The small checkpoint `name` of tests/fixtures/models.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// The rows of the fixture `name`'s goldens.jsonl.
pub fn goldens(name: &str) -> Vec<Golden> {
    let path = fixture(name).join("goldens.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a golden row: {e}", path.display()))
        })
        .collect()
}
