//! A model worker that cannot start, or cannot restart: the server exits non-zero saying
//! why.

use super::*;

/// Replaces the copy's weights (a link to the real file) by the real file's first 4 KiB:
/// the folder check, which does not read the weights, passes, and loading fails.
fn truncate_weights(model: &ModelCopy) {
    let mut head = Vec::new();
    std::fs::File::open(model_dir().join("model.safetensors"))
        .expect("the real weights")
        .take(4096)
        .read_to_end(&mut head)
        .expect("read the real weights");
    // `replace` removes the link first: writing through it would truncate the real model.
    model.replace("model.safetensors", head);
    let weights = model.join("model.safetensors");
    assert!(!weights.symlink_metadata().unwrap().file_type().is_symlink());
}

/// The exit code of a refused configuration (`crossenc serve` checks the model folder).
const EXIT_CONFIG: i32 = 2;

/// Waits (60 s at most) for a server whose model worker cannot start to exit, and checks
/// that it exits non-zero saying why.
fn expect_exit_for_a_worker_that_cannot_start(server: &mut TestServer) {
    let status = wait_exit(&mut server.child, Duration::from_secs(60));
    let says_why = |log: &str| log.contains("failed to start");
    let log = server.wait_for_log(says_why, Duration::from_secs(5));
    let tail: String = {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let status = status.unwrap_or_else(|| {
        panic!("crossenc kept running for 60 s with a model worker that cannot start:\n{tail}")
    });
    println!("crossenc exited with {status:?}");
    assert!(
        !status.success(),
        "a server without a model worker exits non-zero:\n{tail}"
    );
    assert_ne!(
        status.code(),
        Some(EXIT_CONFIG),
        "the configuration check refused the folder: the test must break the weights in a \
         way the check does not see:\n{tail}"
    );
    assert!(
        says_why(&log) && log.contains("model worker"),
        "stderr says that the model worker failed to start:\n{tail}"
    );
}

#[test]
fn a_worker_that_never_starts_makes_the_server_exit_non_zero() {
    let _serial = SERIAL.blocking_lock();
    let model = ModelCopy::of(&model_dir());
    truncate_weights(&model);
    let mut server = TestServer::spawn_on(model.path(), &[], &[]);
    expect_exit_for_a_worker_that_cannot_start(&mut server);
}

#[test]
fn a_worker_that_cannot_restart_makes_the_server_exit_non_zero() {
    let _serial = SERIAL.blocking_lock();
    let model = ModelCopy::of(&model_dir());
    let mut server = TestServer::start_on(model.path(), &[]);
    // The weights break, then the model worker dies: every restart now fails.
    truncate_weights(&model);
    let victim = server.worker_pids("model")[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    expect_exit_for_a_worker_that_cannot_start(&mut server);
}
