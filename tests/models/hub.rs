//! Models by their Hugging Face id, found in a cache written in huggingface_hub's own
//! layout (blobs, snapshots of links, refs), with no hub to reach: the download itself
//! is tested against a local stand-in for the hub in crates/crossenc-hub.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use crate::standin::{FakeRepo, StandIn};
use crate::support::{http_get, model_dir, serve_until_exit_with_env, TempDir, TestServer};
use crate::{infer_raw, minilm_goldens, worst_error};

const ID: &str = "crossenc-test/minilm";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A Hugging Face cache holding the default model as `crossenc-test/minilm` at `main`:
/// each file a blob (a link to the model's own, nothing large copied), each snapshot
/// entry a relative link to its blob, as huggingface_hub writes them.
fn hub_cache() -> TempDir {
    let cache = TempDir::new("crossenc-hub-cache");
    let repo = cache.join("models--crossenc-test--minilm");
    let (blobs, snapshot) = (repo.join("blobs"), repo.join("snapshots").join(COMMIT));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (n, file) in ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .enumerate()
    {
        let blob = format!("{n:040x}");
        symlink(model_dir().join(file), blobs.join(&blob)).unwrap();
        symlink(Path::new("../../blobs").join(&blob), snapshot.join(file)).unwrap();
    }
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_id_is_served_from_the_hub_cache_offline_under_its_id() {
    let cache = hub_cache();
    let env = [
        ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let server = TestServer::start_serving(&["--model", ID, "--model-threads", "1"], &env);
    let (status, list) = http_get(server.http_addr, "/v1/models").unwrap();
    assert_eq!(status, 200);
    assert!(list.contains(&format!("\"id\":\"{ID}\"")), "{list}");
    let rows = minilm_goldens();
    let (scores, model) = infer_raw(&server, "", &rows).await;
    assert_eq!(model, ID);
    assert!(worst_error(&scores, &rows) < 1e-4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_id_not_in_the_cache_is_downloaded_from_a_local_stand_in_for_the_hub() {
    let read = |file: &str| std::fs::read(model_dir().join(file)).unwrap();
    let files = ["config.json", "tokenizer.json", "model.safetensors"].map(|f| (f, read(f)));
    let mut served: Vec<(&str, &[u8])> = files.iter().map(|(f, b)| (*f, b.as_slice())).collect();
    // What the download must leave alone: weights in another format, and the rest.
    served.push(("pytorch_model.bin", b"not wanted"));
    served.push(("README.md", b"# minilm"));
    let standin = StandIn::start(vec![FakeRepo::new(ID, COMMIT, &served)]);
    let cache = TempDir::new("crossenc-hub-download");
    let env = [
        ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ("HF_ENDPOINT", standin.endpoint.as_str()),
        ("HF_TOKEN", "hf_test_token"),
        ("HF_HUB_OFFLINE", "0"),
    ];
    let server = TestServer::start_serving(&["--model", ID, "--model-threads", "1"], &env);
    let rows = minilm_goldens();
    let (scores, model) = infer_raw(&server, "", &rows).await;
    assert_eq!(model, ID);
    assert!(worst_error(&scores, &rows) < 1e-4);
    let seen = standin.seen();
    let resolves = seen.iter().filter(|s| s.path.contains("/resolve/"));
    for request in resolves {
        let sent = request.authorization.as_deref();
        assert_eq!(sent, Some("Bearer hf_test_token"), "{}", request.path);
    }
    let asked: Vec<String> = seen.into_iter().map(|s| s.path).collect();
    assert!(
        asked
            .iter()
            .all(|p| !p.contains("pytorch_model") && !p.contains("README")),
        "{asked:?}"
    );
    for (file, _) in &files {
        assert!(
            asked.iter().any(|p| p.ends_with(file)),
            "{file} not fetched: {asked:?}"
        );
    }
    let snapshot = cache
        .join("models--crossenc-test--minilm/snapshots")
        .join(COMMIT);
    assert!(
        snapshot.join("model.safetensors").is_file(),
        "not in the cache's layout"
    );
}

#[test]
fn ids_not_in_the_cache_offline_and_bad_ids_fail_at_start_saying_why() {
    let cache = hub_cache();
    let cache_dir = cache.path().to_str().unwrap();
    let env = [("HF_HUB_CACHE", cache_dir), ("HF_HUB_OFFLINE", "1")];
    let patience = Duration::from_secs(30);
    let folder = model_dir();
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "crossenc-test/absent",
            &[],
            &[
                "crossenc-test/absent",
                "models--crossenc-test--absent",
                "HF_HUB_OFFLINE",
            ],
        ),
        (
            ID,
            &["--revision", "v2"],
            &["model.path", "revision `v2`", "HF_HUB_OFFLINE"],
        ),
        ("crossenc-test/..", &[], &["model.path", ".."]),
        (
            "https://huggingface.co/crossenc-test/minilm",
            &[],
            &["is a URL"],
        ),
        (
            folder.to_str().unwrap(),
            &["--revision", "main"],
            &["model.revision", "is a folder"],
        ),
    ];
    for (model, args, said) in cases {
        let (code, log) = serve_until_exit_with_env(Path::new(model), args, &env, patience);
        assert_eq!(code, Some(2), "{model} {args:?}: {log}");
        for words in said {
            assert!(
                log.contains(words),
                "{model} {args:?}: no {words:?} in\n{log}"
            );
        }
    }
}
