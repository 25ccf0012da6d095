//! What people type: model ids, and the variables huggingface_hub reads.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::TempDir;
use crossenc_hub::{HubError, HubSettings, ModelId};

#[test]
fn real_ids_parse() {
    for text in [
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "BAAI/bge-reranker-base",
        "mixedbread-ai/mxbai-rerank-xsmall-v1",
        "org/name_with.dots_and_underscores",
    ] {
        let id = ModelId::parse(text).unwrap();
        assert_eq!(id.as_str(), text);
        assert_eq!(format!("{}/{}", id.org(), id.name()), text);
        assert_eq!(id.to_string(), text);
    }
}

#[test]
fn bad_ids_are_refused_with_a_message_naming_them() {
    let long = format!("org/{}", "n".repeat(97));
    for text in [
        "../x/y",
        "a/../b",
        "https://huggingface.co/a/b",
        "/abs/path",
        "~/models/x",
        "a/b/c",
        "a",
        "a/",
        "/b",
        "",
        "org/na me",
        "org/naïve",
        "-org/name",
        "org/.name",
        long.as_str(),
    ] {
        let err = ModelId::parse(text).unwrap_err();
        assert!(
            matches!(err, HubError::InvalidId { .. }),
            "{text:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("`{text}`")),
            "{text:?}: {message}"
        );
        assert!(message.contains("ORG/NAME"), "{message}");
    }
}

#[test]
fn the_reasons_fit_the_mistakes() {
    let reason = |text: &str| ModelId::parse(text).unwrap_err().to_string();
    assert!(reason("https://huggingface.co/a/b").contains("URL"));
    assert!(reason("/abs/path").contains("path"));
    assert!(reason("a/../b").contains(".."));
    assert!(reason("a").contains("exactly one `/`"));
    assert!(reason("").contains("empty"));
}

#[test]
fn looks_like_id_tells_ids_from_paths() {
    for id in ["org/name", "BAAI/bge-reranker-base"] {
        assert!(ModelId::looks_like_id(id), "{id}");
    }
    for path in [
        "/models/x",
        "./x/y",
        "../x",
        "~/x",
        "models",
        "a/b/c",
        ".cache/x",
    ] {
        assert!(!ModelId::looks_like_id(path), "{path}");
    }
}

fn settings(vars: &[(&str, &str)]) -> Result<HubSettings, HubError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HubSettings::from_vars(|name| vars.get(name).cloned(), false)
}

#[test]
fn the_cache_is_found_in_huggingface_hubs_order() {
    let home = [("HOME", "/home/u")];
    assert_eq!(
        settings(&home).unwrap().cache_dir,
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    let xdg = [("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")];
    assert_eq!(
        settings(&xdg).unwrap().cache_dir,
        PathBuf::from("/xdg/huggingface/hub")
    );
    let hf_home = [("HOME", "/home/u"), ("HF_HOME", "/hf")];
    assert_eq!(
        settings(&hf_home).unwrap().cache_dir,
        PathBuf::from("/hf/hub")
    );
    let tilde = [("HOME", "/home/u"), ("HF_HOME", "~/hf")];
    assert_eq!(
        settings(&tilde).unwrap().cache_dir,
        PathBuf::from("/home/u/hf/hub")
    );
    let hub_cache = [("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/models")];
    assert_eq!(
        settings(&hub_cache).unwrap().cache_dir,
        PathBuf::from("/models")
    );
    let empty = [("HF_HUB_CACHE", ""), ("HF_HOME", "/hf")];
    assert_eq!(
        settings(&empty).unwrap().cache_dir,
        PathBuf::from("/hf/hub")
    );
    assert!(matches!(settings(&[]), Err(HubError::NoCacheDir)));
}

#[test]
fn endpoint_offline_and_progress_follow_the_variables() {
    let base = [("HOME", "/home/u")];
    let plain = settings(&base).unwrap();
    assert_eq!(plain.endpoint, "https://huggingface.co");
    assert!(!plain.offline && !plain.progress && plain.token.is_none());

    let mirror = settings(&[("HOME", "/h"), ("HF_ENDPOINT", "http://mirror:8080/")]).unwrap();
    assert_eq!(mirror.endpoint, "http://mirror:8080");

    for yes in ["1", "true", "YES", "On"] {
        assert!(
            settings(&[("HOME", "/h"), ("HF_HUB_OFFLINE", yes)])
                .unwrap()
                .offline,
            "{yes}"
        );
    }
    for no in ["0", "false", "no", ""] {
        assert!(
            !settings(&[("HOME", "/h"), ("HF_HUB_OFFLINE", no)])
                .unwrap()
                .offline,
            "{no}"
        );
    }

    let vars: HashMap<&str, &str> = HashMap::from([("HOME", "/h")]);
    let terminal = HubSettings::from_vars(|n| vars.get(n).map(|v| v.to_string()), true).unwrap();
    assert!(terminal.progress);
}

#[test]
fn the_token_comes_from_hf_token_else_the_token_file() {
    let home = TempDir::new("token");
    let hf_home = home.path().display().to_string();
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    let other = home.path().join("other-token");
    std::fs::write(&other, "hf_from_token_path").unwrap();
    let other = other.display().to_string();

    let from_file = settings(&[("HF_HOME", &hf_home)]).unwrap();
    assert_eq!(from_file.token.as_deref(), Some("hf_from_file"));
    let from_path = settings(&[("HF_HOME", &hf_home), ("HF_TOKEN_PATH", &other)]).unwrap();
    assert_eq!(from_path.token.as_deref(), Some("hf_from_token_path"));
    let from_var = settings(&[("HF_HOME", &hf_home), ("HF_TOKEN", "hf_from_var")]).unwrap();
    assert_eq!(from_var.token.as_deref(), Some("hf_from_var"));
    let none = settings(&[("HF_HOME", "/nonexistent-hf-home")]).unwrap();
    assert_eq!(none.token, None);
    assert!(
        !format!("{from_var:?}").contains("hf_from_var"),
        "Debug must not show the token"
    );
}
