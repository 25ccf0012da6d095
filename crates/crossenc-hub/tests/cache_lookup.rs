//! Finding models in a cache written exactly as huggingface_hub writes it, offline, so no
//! request could be made even by mistake.

mod common;

use common::{
    commit, index_json, offline, repo_dir, write_ref, write_snapshot, TempDir, CONFIG, TOKENIZER,
    WEIGHTS,
};
use crossenc_hub::{resolve, HubError, ModelId};

const ID: &str = "cross-encoder/ms-marco-MiniLM-L-6-v2";

fn id() -> ModelId {
    ModelId::parse(ID).unwrap()
}

/// A whole single-file model at `commit`.
fn whole(cache: &TempDir, commit: &str) -> std::path::PathBuf {
    write_snapshot(
        cache.path(),
        ID,
        commit,
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors", WEIGHTS),
        ],
    )
}

#[test]
fn found_by_id_through_refs_main() {
    let cache = TempDir::new("by-id");
    let main = commit("main");
    let snapshot = whole(&cache, &main);
    write_ref(cache.path(), ID, "main", &main);

    let folder = resolve(&id(), None, &offline(cache.path())).unwrap();

    assert_eq!(folder, snapshot);
    assert_eq!(std::fs::read(folder.join("config.json")).unwrap(), CONFIG);
}

#[test]
fn found_by_a_branch_revision_in_refs() {
    let cache = TempDir::new("by-branch");
    let (main, dev, pr) = (commit("main"), commit("dev"), commit("pr"));
    whole(&cache, &main);
    let dev_snapshot = whole(&cache, &dev);
    let pr_snapshot = whole(&cache, &pr);
    write_ref(cache.path(), ID, "main", &main);
    write_ref(cache.path(), ID, "dev", &dev);
    write_ref(cache.path(), ID, "refs/pr/1", &pr);
    let settings = offline(cache.path());

    assert_eq!(
        resolve(&id(), Some("dev"), &settings).unwrap(),
        dev_snapshot
    );
    assert_eq!(
        resolve(&id(), Some("refs/pr/1"), &settings).unwrap(),
        pr_snapshot
    );
}

#[test]
fn found_by_a_commit_without_a_ref() {
    let cache = TempDir::new("by-commit");
    let old = commit("old");
    let snapshot = whole(&cache, &old);
    write_ref(cache.path(), ID, "main", &commit("newer, not cached"));

    let folder = resolve(&id(), Some(&old), &offline(cache.path())).unwrap();

    assert_eq!(folder, snapshot);
}

#[test]
fn a_revision_not_in_the_cache_is_not_cached_offline() {
    let cache = TempDir::new("no-revision");
    let main = commit("main");
    whole(&cache, &main);
    write_ref(cache.path(), ID, "main", &main);

    let err = resolve(&id(), Some("v2.0"), &offline(cache.path())).unwrap_err();

    assert!(
        matches!(&err, HubError::NotCached { revision, .. } if revision == "v2.0"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("`v2.0`") && message.contains("refs/v2.0"),
        "{message}"
    );
}

#[test]
fn a_missing_id_offline_names_the_id_the_cache_and_hf_hub_offline() {
    let cache = TempDir::new("no-id");

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    let message = err.to_string();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    assert!(message.contains(ID), "{message}");
    let searched = repo_dir(cache.path(), ID);
    assert!(
        message.contains(&searched.display().to_string()),
        "{message}"
    );
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(
        message.contains(&format!("huggingface-cli download {ID}")),
        "{message}"
    );
}

const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

fn sharded(cache: &TempDir, shards: &[&str]) -> std::path::PathBuf {
    let main = commit("sharded");
    let index = index_json(SHARDS);
    let mut files: Vec<(&str, &[u8])> = vec![
        ("config.json", CONFIG),
        ("tokenizer.json", TOKENIZER),
        ("model.safetensors.index.json", &index),
    ];
    files.extend(shards.iter().map(|s| (*s, s.as_bytes())));
    write_ref(cache.path(), ID, "main", &main);
    write_snapshot(cache.path(), ID, &main, &files)
}

#[test]
fn a_sharded_snapshot_is_found() {
    let cache = TempDir::new("sharded");
    let snapshot = sharded(&cache, &SHARDS);

    assert_eq!(
        resolve(&id(), None, &offline(cache.path())).unwrap(),
        snapshot
    );
}

#[test]
fn a_snapshot_missing_a_shard_is_not_present() {
    let cache = TempDir::new("shard-missing");
    sharded(&cache, &SHARDS[..1]);

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    assert!(err.to_string().contains(SHARDS[1]), "{err}");
}

#[test]
fn a_shard_whose_blob_is_gone_is_not_present() {
    let cache = TempDir::new("blob-gone");
    let snapshot = sharded(&cache, &SHARDS);
    let blob = std::fs::canonicalize(snapshot.join(SHARDS[0])).unwrap();
    std::fs::remove_file(blob).unwrap();

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    assert!(err.to_string().contains(SHARDS[0]), "{err}");
}

#[test]
fn a_snapshot_without_weights_is_not_present() {
    let cache = TempDir::new("no-weights");
    let main = commit("main");
    write_snapshot(
        cache.path(),
        ID,
        &main,
        &[("config.json", CONFIG), ("tokenizer.json", TOKENIZER)],
    );
    write_ref(cache.path(), ID, "main", &main);

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn an_index_naming_a_shard_outside_the_snapshot_is_refused() {
    let cache = TempDir::new("hostile-index");
    let main = commit("main");
    let index = index_json(["../../../../etc/passwd", SHARDS[1]]);
    write_snapshot(
        cache.path(),
        ID,
        &main,
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors.index.json", &index),
        ],
    );
    write_ref(cache.path(), ID, "main", &main);

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    assert!(matches!(err, HubError::BadIndex { .. }), "{err:?}");
}

#[test]
fn a_ref_that_is_not_a_commit_is_reported() {
    let cache = TempDir::new("bad-ref");
    whole(&cache, &commit("main"));
    write_ref(cache.path(), ID, "main", "../../../elsewhere");

    let err = resolve(&id(), None, &offline(cache.path())).unwrap_err();

    assert!(matches!(err, HubError::BadRef { .. }), "{err:?}");
}

#[test]
fn revisions_that_could_leave_the_cache_are_refused() {
    let cache = TempDir::new("bad-revision");
    let settings = offline(cache.path());
    for revision in [
        "",
        "../main",
        "a/../../b",
        "/etc/passwd",
        "main/",
        "a//b",
        "a b",
        "./x",
    ] {
        let err = resolve(&id(), Some(revision), &settings).unwrap_err();
        assert!(
            matches!(err, HubError::InvalidRevision { .. }),
            "{revision:?}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("`{revision}`")), "{err}");
    }
}
