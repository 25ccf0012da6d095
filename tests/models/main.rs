//! Several models in one server, models by their Hugging Face id, and long documents
//! read in windows, against the real binary: two models' goldens through `model`, one
//! model's crash or overload beside the other's traffic, ids found in a cache written
//! in huggingface_hub's layout, and the windows of a long document scored one by one.
//!
//! The test that compares a p99 runs alone (`.config/nextest.toml`: its name says p99).

mod hub;
mod long_documents;
mod overload;
mod serving;
/// crossenc-hub's local stand-in for the hub (no hub is reachable from test machines).
#[path = "../../crates/crossenc-hub/tests/common/standin.rs"]
mod standin;
#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use crossenc_proto::v1::InferRequest;
use support::{fixture, goldens, model_dir, pairs, Golden, TempDir, TestServer};

/// The two models the tests serve together: the default BERT and the XLM-RoBERTa
/// fixture, each with its goldens.
const MINILM: &str = "minilm";
const XLMR: &str = "xlmr";

/// The hash the stand-in names weight blobs by, as the hub does.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A config file serving `models` (name, folder) with one worker of each kind apiece
/// and `extra` lines at the end of each `[[models]]` table.
fn models_config(dir: &TempDir, models: &[(&str, &Path)], extra: &str) -> PathBuf {
    let mut text = String::new();
    for (name, path) in models {
        text.push_str(&format!(
            "[[models]]\nname = {name:?}\npath = {:?}\nmodel_threads = 1\n{extra}\n",
            path.display()
        ));
    }
    let file = dir.join("models.toml");
    std::fs::write(&file, text).expect("write the config");
    file
}

/// A server of the default model as `minilm` and the XLM-RoBERTa fixture as `xlmr`.
fn two_models(extra: &str) -> (TestServer, TempDir) {
    two_models_with(extra, &[])
}

/// [`two_models`] with more flags.
fn two_models_with(extra: &str, flags: &[&str]) -> (TestServer, TempDir) {
    let dir = TempDir::new("crossenc-models");
    let config = models_config(
        &dir,
        &[(MINILM, &model_dir()), (XLMR, &fixture("xlm-roberta"))],
        extra,
    );
    let config = config.to_string_lossy().into_owned();
    // Gauges refreshed often, for the overload test to read its queue mid-run.
    let mut args = vec!["--config", &config, "--collection-interval", "200ms"];
    args.extend_from_slice(flags);
    (TestServer::start_serving(&args, &[]), dir)
}

fn minilm_goldens() -> Vec<Golden> {
    goldens(&support::default_goldens_path())
}

fn xlmr_goldens() -> Vec<Golden> {
    goldens(&fixture("xlm-roberta").join("goldens.jsonl"))
}

/// Raw scores of `rows` from `model` (`""`: the server's first), and the model that
/// answered.
async fn infer_raw(server: &TestServer, model: &str, rows: &[Golden]) -> (Vec<f32>, String) {
    let answer = server
        .client()
        .await
        .infer(InferRequest {
            pairs: pairs(rows),
            raw_scores: true,
            model: model.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Infer on {model:?}: {e}"))
        .into_inner();
    (answer.scores, answer.model)
}

/// The largest difference between `scores` and the goldens' raw scores.
fn worst_error(scores: &[f32], rows: &[Golden]) -> f64 {
    assert_eq!(scores.len(), rows.len());
    let errors = scores
        .iter()
        .zip(rows)
        .map(|(&s, g)| (f64::from(s) - g.score).abs());
    errors.fold(0.0, f64::max)
}
