//! The configuration layers through the real binary: a file, environment variables and
//! flags reach the server, `crossenc config show` says where each value came from, and
//! a configuration that cannot work stops everything with exit code 2, the key named,
//! before any worker starts.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crossenc_proto::v1::RerankRequest;
use support::{children_of, model_dir, workspace, ModelCopy, TempDir, TestServer, BINARY};

fn crossenc(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .current_dir(workspace())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CROSSENC_CONFIG")
        .output()
        .expect("cannot run crossenc")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file in a fresh temporary folder, and the folder (removed when dropped: hold it
/// while the file is used).
fn file_with(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("crossenc-config");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn model_line(model: &Path) -> String {
    format!("[model]\npath = {:?}\n", model.display().to_string())
}

#[test]
fn the_shipped_file_checks_and_show_names_each_layer() {
    let shipped = workspace().join("conf/crossenc.toml");
    let checked = crossenc(&["config", "check", shipped.to_str().unwrap()], &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let (_dir, file) = file_with(
        "layers.toml",
        &format!(
            "{}[batching]\nmax_batch_tokens = 2048\nmax_batch_delay = \"5ms\"\nmax_batch_size = 32\n",
            model_line(&model_dir())
        ),
    );
    let shown = crossenc(
        &[
            "config",
            "show",
            "--config",
            file.to_str().unwrap(),
            "--max-batch-size",
            "8",
            "--max-text-bytes",
            "8KiB",
            "--max-connections",
            "100",
            "--default-deadline",
            "5s",
        ],
        &[("CROSSENC_BATCHING__MAX_BATCH_DELAY", "7ms")],
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = String::from_utf8(shown.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_string()
    };
    assert!(
        line("max_batch_tokens").contains("2048") && line("max_batch_tokens").contains("# file ")
    );
    assert!(
        line("max_batch_delay").contains("\"7ms\"")
            && line("max_batch_delay").ends_with("# env CROSSENC_BATCHING__MAX_BATCH_DELAY")
    );
    assert!(
        line("max_batch_size").contains("= 8")
            && line("max_batch_size").ends_with("# command line")
    );
    assert!(line("max_queued_pairs").ends_with("# default"), "{text}");
    for (key, value) in [
        ("max_text_bytes", "8"),
        ("max_connections", "100"),
        ("default_deadline", "5s"),
    ] {
        let line = line(key);
        assert!(
            line.contains(value) && line.ends_with("# command line"),
            "{line}"
        );
    }
    assert!(line("max_start_failures").ends_with("# default"), "{text}");
}

/// Runs `crossenc serve` with a configuration that cannot work: it must exit 2 at once,
/// name the problem, and have started no worker.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut command = Command::new(BINARY);
    command
        .current_dir(workspace())
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CROSSENC_CONFIG")
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let pid = child.id() as i32;
    // Workers would be children of the server: none may appear before it exits.
    let mut workers_seen = false;
    while started.elapsed() < Duration::from_secs(10) {
        workers_seen |= !children_of(pid).is_empty();
        if !support::is_running(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        !workers_seen,
        "a worker started for a configuration that cannot work"
    );
    stderr(&output)
}

#[test]
fn a_configuration_that_cannot_work_exits_2_naming_the_key() {
    let (_typo_dir, typo) = file_with("typo.toml", "[batching]\nmax_batch_tokes = 1024\n");
    let message = refused(&["--config", typo.to_str().unwrap()], &[]);
    assert!(
        message.contains("batching.max_batch_tokes")
            && message.contains("did you mean `max_batch_tokens`?"),
        "{message}"
    );

    let message = refused(&["--max-batch-delay", "5 parsecs"], &[]);
    assert!(
        message.contains("batching.max_batch_delay (from command line)"),
        "{message}"
    );

    let message = refused(&[], &[("CROSSENC_WORKERS__MODEL", "0")]);
    assert!(
        message.contains("workers.model: 0 is not allowed: must be at least 1"),
        "{message}"
    );

    let message = refused(&["--max-connections", "0"], &[]);
    assert!(message.contains("server.max_connections"), "{message}");

    let same = "127.0.0.1:50999";
    let message = refused(&["--grpc-addr", same, "--http-addr", same], &[]);
    assert!(message.contains("server.http_addr"), "{message}");

    let message = refused(&["--model", "/nonexistent/model"], &[]);
    assert!(
        message.contains("model.path") && message.contains("/nonexistent/model"),
        "{message}"
    );

    // The default model allows 512 tokens.
    let message = refused(&["--max-length", "1000", "--max-batch-tokens", "8192"], &[]);
    assert!(
        message.contains("model.max_length") && message.contains("512"),
        "{message}"
    );

    let model = ModelCopy::of(&model_dir());
    model.remove("tokenizer.json");
    let message = refused(&["--model", model.path().to_str().unwrap()], &[]);
    assert!(message.contains("tokenizer.json"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_its_settings_from_file_environment_and_flags() {
    let (_dir, file) = file_with(
        "serve.toml",
        "[batching]\nmax_client_batch_size = 3\nmax_queued_pairs = 100\n",
    );
    let server = TestServer::start_with_env(
        &[
            "--config",
            file.to_str().unwrap(),
            "--max-queued-pairs",
            "50",
        ],
        &[("CROSSENC_SERVER__MAX_CONCURRENT_REQUESTS", "7")],
    );
    let mut client = server.client().await;
    let ask = |documents: usize| RerankRequest {
        query: "q".into(),
        documents: vec!["d".into(); documents],
        ..Default::default()
    };
    client.rerank(ask(3)).await.unwrap();
    let refused = client.rerank(ask(4)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains('3'), "{}", refused.message());
    let metrics = server.metrics();
    assert_eq!(support::metric(&metrics, "requests_in_flight_limit"), 7.0);
    // The flag beats the file's 100.
    assert_eq!(support::metric(&metrics, "queued_pairs_limit"), 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_activation_answers_the_raw_logits() {
    let server = TestServer::start(&["--activation", "identity"]);
    let mut client = server.client().await;
    // The goldens' lowest logit is negative: a sigmoid would put it in (0, 1).
    let goldens = support::goldens(&support::default_goldens_path());
    let lowest = goldens
        .iter()
        .min_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap();
    assert!(lowest.score < 0.0, "{}", lowest.score);
    let ask = |raw_scores| RerankRequest {
        query: lowest.query.clone(),
        documents: vec![lowest.document.clone()],
        raw_scores,
        ..Default::default()
    };
    let scores = |answer: crossenc_proto::v1::RerankResponse| -> Vec<(u32, f32)> {
        answer.results.iter().map(|r| (r.index, r.score)).collect()
    };
    let plain = scores(client.rerank(ask(false)).await.unwrap().into_inner());
    let raw = scores(client.rerank(ask(true)).await.unwrap().into_inner());
    assert_eq!(plain, raw);
    assert!(
        (f64::from(plain[0].1) - lowest.score).abs() < 1e-4,
        "{plain:?}"
    );
}

#[test]
fn several_models_check_and_show_one_table_each() {
    let model = model_dir().display().to_string();
    let text = format!(
        "[[models]]\nname = \"small\"\npath = {model:?}\n\n[[models]]\nname = \"chunked\"\npath = {model:?}\nlong_documents = \"chunk\"\nmodel_workers = 2\n[models.batching]\nmax_batch_tokens = 2048\n"
    );
    let (_dir, file) = file_with("models.toml", &text);
    let checked = crossenc(&["config", "check", file.to_str().unwrap()], &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let shown = crossenc(&["config", "show", "--config", file.to_str().unwrap()], &[]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert_eq!(shown.matches("[[models]]").count(), 2, "{shown}");
    for line in [
        "name = \"chunked\"",
        "long_documents = \"chunk\"",
        "model_workers = 2",
        "max_batch_tokens = 2048",
    ] {
        assert!(shown.contains(line), "no {line:?} in\n{shown}");
    }

    // One model and several at once, or two models of one name: refused, naming the key.
    let both = format!("[model]\nname = \"alone\"\n\n{text}");
    let (_dir, file) = file_with("both.toml", &both);
    let refused = crossenc(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("either [model]"),
        "{}",
        stderr(&refused)
    );
    let twice = text.replace("chunked", "small");
    let (_dir, file) = file_with("twice.toml", &twice);
    let refused = crossenc(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("models[1].name"),
        "{}",
        stderr(&refused)
    );
}
