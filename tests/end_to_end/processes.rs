//! Worker processes: children of the supervisor, gone with it; a broken model folder named in the error.

use super::*;
use support::ModelCopy;

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

#[test]
fn a_broken_model_folder_is_named_in_the_error() {
    let missing = ModelCopy::of(&model_dir());
    missing.remove("tokenizer.json");
    let architecture = ModelCopy::of(&model_dir());
    architecture.edit_json("config.json", |c| {
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let shape = ModelCopy::of(&model_dir());
    shape.edit_json("config.json", |c| {
        c["intermediate_size"] = serde_json::json!(1000)
    });
    let cases = [
        (&missing, "tokenizer.json: missing"),
        (&architecture, "`architectures` is [\"GPT2LMHeadModel\"]"),
        (&shape, "bert.encoder.layer.0.intermediate.dense.weight"),
    ];
    for (dir, expected) in cases {
        let loopback = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
        let (code, stderr) =
            support::serve_until_exit(dir.path(), &loopback, Duration::from_secs(60));
        assert!(
            matches!(code, Some(c) if c != 0),
            "exit {code:?} for {expected}"
        );
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
}
