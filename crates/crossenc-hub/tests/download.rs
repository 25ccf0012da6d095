//! Downloads through hf-hub against a local stand-in for the hub (see common/standin.rs):
//! the real client, the real cache writes, only the far end is ours.

mod common;

use common::standin::{FakeRepo, StandIn};
use common::{commit, index_json, write_ref, write_snapshot, TempDir, CONFIG, TOKENIZER, WEIGHTS};
use crossenc_hub::{resolve, HubError, HubSettings, ModelId};

const TOKEN: &str = "hf_standin_token";

fn online(cache: &TempDir, standin: &StandIn) -> HubSettings {
    let mut settings = HubSettings::new(cache.path());
    settings.endpoint = standin.endpoint.clone();
    settings.token = Some(TOKEN.to_owned());
    settings
}

fn read(path: std::path::PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files asked for under `/ORG/NAME/resolve/REV/`, each once, in order.
fn resolved_files(standin: &StandIn, id: &str) -> Vec<String> {
    let prefix = format!("/{id}/resolve/main/");
    let mut files: Vec<String> = Vec::new();
    for seen in standin.seen() {
        if let Some(file) = seen.path.strip_prefix(&prefix) {
            if !files.iter().any(|f| f == file) {
                files.push(file.to_owned());
            }
        }
    }
    files
}

#[test]
fn downloads_from_a_local_stand_in_for_the_hub() {
    let main = commit("tiny main");
    let standin = StandIn::start(vec![FakeRepo::new(
        "org/tiny",
        &main,
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors", WEIGHTS),
            ("pytorch_model.bin", b"big and unwanted"),
            ("README.md", b"# tiny"),
        ],
    )]);
    let cache = TempDir::new("download");
    let id = ModelId::parse("org/tiny").unwrap();

    let folder = resolve(&id, None, &online(&cache, &standin)).unwrap();

    let expected = cache.path().join("models--org--tiny/snapshots").join(&main);
    assert_eq!(folder, expected);
    assert_eq!(read(folder.join("config.json")), CONFIG);
    assert_eq!(read(folder.join("tokenizer.json")), TOKENIZER);
    assert_eq!(read(folder.join("model.safetensors")), WEIGHTS);
    // huggingface_hub's layout, so Python finds what we fetched: the LFS blob named by its
    // sha256, the snapshot entry a relative link to it, refs/main naming the commit.
    let link = std::fs::read_link(folder.join("model.safetensors")).unwrap();
    let blob = format!("../../blobs/{}", common::sha256_hex(WEIGHTS));
    assert_eq!(link, std::path::PathBuf::from(blob));
    let main_ref = cache.path().join("models--org--tiny/refs/main");
    assert_eq!(std::fs::read_to_string(main_ref).unwrap(), main);
    assert_eq!(
        resolved_files(&standin, "org/tiny"),
        ["config.json", "tokenizer.json", "model.safetensors"]
    );
    let seen = standin.seen();
    assert!(
        seen.iter()
            .all(|s| !s.path.contains("pytorch_model") && !s.path.contains("README")),
        "only the needed files may be requested: {seen:#?}"
    );
    for request in seen.iter().filter(|s| s.path.contains("/resolve/")) {
        let expected = format!("Bearer {TOKEN}");
        assert_eq!(
            request.authorization.as_deref(),
            Some(expected.as_str()),
            "{request:?}"
        );
    }
    let asked = seen.len();

    let mut offline = online(&cache, &standin);
    offline.offline = true;
    assert_eq!(resolve(&id, None, &offline).unwrap(), expected);
    assert_eq!(resolve(&id, Some("main"), &offline).unwrap(), expected);
    assert_eq!(standin.seen().len(), asked, "offline must not ask the hub");
}

#[test]
fn a_model_the_endpoint_does_not_have_names_the_id_and_the_endpoint() {
    let standin = StandIn::start(vec![]);
    let cache = TempDir::new("missing");
    let id = ModelId::parse("org/missing").unwrap();

    let err = resolve(&id, None, &online(&cache, &standin)).unwrap_err();

    let message = err.to_string();
    assert!(
        matches!(&err, HubError::Download { status: Some(404), file, .. } if file == "config.json"),
        "{err:?}"
    );
    assert!(message.contains("org/missing"), "{message}");
    assert!(message.contains(&standin.endpoint), "{message}");
    assert!(message.contains("config.json"), "{message}");
    assert!(
        message.contains("HF_TOKEN"),
        "the hint for a refusal: {message}"
    );
}

#[test]
fn a_sharded_model_is_downloaded_through_its_index() {
    let main = commit("sharded main");
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let index = index_json(shards);
    let standin = StandIn::start(vec![FakeRepo::new(
        "org/sharded",
        &main,
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors.index.json", &index),
            (shards[0], b"shard one"),
            (shards[1], b"shard two"),
            ("pytorch_model.bin", b"unwanted"),
        ],
    )]);
    let cache = TempDir::new("sharded-download");
    let id = ModelId::parse("org/sharded").unwrap();

    let folder = resolve(&id, None, &online(&cache, &standin)).unwrap();

    assert_eq!(read(folder.join(shards[0])), b"shard one");
    assert_eq!(read(folder.join(shards[1])), b"shard two");
    assert_eq!(read(folder.join("model.safetensors.index.json")), index);
    assert_eq!(
        resolved_files(&standin, "org/sharded"),
        [
            "config.json",
            "tokenizer.json",
            "model.safetensors", // 404: the repo is sharded
            "model.safetensors.index.json",
            shards[0],
            shards[1],
        ]
    );
}

#[test]
fn a_partly_cached_model_fetches_only_what_is_missing() {
    let main = commit("partial main");
    let files: [(&str, &[u8]); 3] = [
        ("config.json", CONFIG),
        ("tokenizer.json", TOKENIZER),
        ("model.safetensors", WEIGHTS),
    ];
    let standin = StandIn::start(vec![FakeRepo::new("org/partial", &main, &files)]);
    let cache = TempDir::new("partial");
    // The weights are cached; the tokenizer's link is there but its blob was deleted.
    let snapshot = write_snapshot(cache.path(), "org/partial", &main, &files);
    write_ref(cache.path(), "org/partial", "main", &main);
    let blob = std::fs::canonicalize(snapshot.join("tokenizer.json")).unwrap();
    std::fs::remove_file(blob).unwrap();
    let id = ModelId::parse("org/partial").unwrap();

    let folder = resolve(&id, None, &online(&cache, &standin)).unwrap();

    assert_eq!(folder, snapshot);
    assert_eq!(read(folder.join("tokenizer.json")), TOKENIZER);
    // config.json always (it tells the commit), the broken tokenizer, not the weights.
    assert_eq!(
        resolved_files(&standin, "org/partial"),
        ["config.json", "tokenizer.json"]
    );
}

#[test]
fn a_repo_without_safetensors_weights_says_so() {
    let standin = StandIn::start(vec![FakeRepo::new(
        "org/torch-only",
        &commit("torch main"),
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("pytorch_model.bin", b"pickled"),
        ],
    )]);
    let cache = TempDir::new("torch-only");
    let id = ModelId::parse("org/torch-only").unwrap();

    let err = resolve(&id, None, &online(&cache, &standin)).unwrap_err();

    assert!(matches!(err, HubError::NoWeights { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("org/torch-only") && message.contains(&standin.endpoint),
        "{message}"
    );
    assert!(!standin
        .seen()
        .iter()
        .any(|s| s.path.contains("pytorch_model")));
}
