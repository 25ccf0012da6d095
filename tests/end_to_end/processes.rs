//! Worker processes: children of the supervisor, gone with it; a broken model folder named in the error.

use super::*;

#[test]
fn workers_are_children_and_none_outlives_the_server() {
    let mut server = TestServer::start(&["--tokenizer-workers", "2", "--model-workers", "2"]);
    let children = children_of(server.pid());
    let count = |kind: &str| {
        children
            .iter()
            .filter(|(_, cmd)| cmd.contains(&format!("worker {kind} ")))
            .count()
    };
    assert_eq!((count("tokenizer"), count("model")), (2, 2), "{children:?}");

    let status = server.stop();
    assert!(status.success(), "crossenc exited with {status}");
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<_> = children
        .iter()
        .filter(|(pid, _)| is_running(*pid))
        .collect();
    assert!(left.is_empty(), "workers left behind: {left:?}");
}

#[test]
fn a_worker_exits_when_its_supervisor_is_killed() {
    let server = TestServer::start(&[]);
    let children = children_of(server.pid());
    assert_eq!(children.len(), 2, "{children:?}");
    server.signal(nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while children.iter().any(|(pid, _)| is_running(*pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = children
        .iter()
        .filter(|(pid, _)| is_running(*pid))
        .collect();
    assert!(
        left.is_empty(),
        "workers outlived a SIGKILLed supervisor: {left:?}"
    );
}

/// A copy of the default model folder with links to its large files, broken by `edit`.
fn broken_model(edit: impl FnOnce(&std::path::Path)) -> std::path::PathBuf {
    let dir = support::linked_model_copy();
    edit(&dir);
    dir
}

fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn a_broken_model_folder_is_named_in_the_error() {
    let missing = broken_model(|dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap());
    let architecture = broken_model(|dir| {
        edit_config(dir, |c| {
            c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
        })
    });
    let shape =
        broken_model(|dir| edit_config(dir, |c| c["intermediate_size"] = serde_json::json!(1000)));
    let cases = [
        (&missing, "tokenizer.json: missing"),
        (&architecture, "`architectures` is [\"GPT2LMHeadModel\"]"),
        (&shape, "bert.encoder.layer.0.intermediate.dense.weight"),
    ];
    for (dir, expected) in cases {
        let loopback = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
        let (code, stderr) = support::serve_until_exit(dir, &loopback, Duration::from_secs(60));
        assert!(
            matches!(code, Some(c) if c != 0),
            "exit {code:?} for {expected}"
        );
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
