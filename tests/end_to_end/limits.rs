//! Bursts past the limits and deadlines: refused at once, nothing held up afterwards.

use super::*;

/// A request of `count` pairs of about `words` words each: long pairs cost the model
/// seconds, so that requests pile up behind them.
fn long_pairs(count: usize, words: usize) -> Vec<Pair> {
    (0..count)
        .map(|i| Pair {
            query: format!("query number {i}"),
            document: format!("document {i} ") + &"lorem ipsum dolor sit amet ".repeat(words / 5),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limits_is_refused_at_once_and_the_server_recovers() {
    let server = TestServer::start(&[
        "--max-client-batch-size",
        "32",
        "--max-queued-pairs",
        "64",
        "--max-concurrent-requests",
        "4",
    ]);
    let client = server.client().await;
    // Ten times what the server holds: 40 requests of 32 long pairs.
    let burst = (0..40).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .infer(InferRequest {
                    pairs: long_pairs(32, 40),
                    raw_scores: false,
                    instruction: None,
                    ..Default::default()
                })
                .await
        }
    });
    let results = futures_util::future::join_all(burst).await;
    let mut served = 0;
    let mut tokens = 0;
    for result in &results {
        match result {
            Ok(response) => {
                assert_eq!(response.get_ref().scores.len(), 32);
                served += 1;
                tokens += response.get_ref().tokens;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let message = status.message();
                assert!(
                    message.contains("max_queued_pairs (64)")
                        || message.contains("max_concurrent_requests (4)"),
                    "the refusal names the limit: {message}"
                );
            }
        }
    }
    assert!(served >= 2, "the requests that fit are served ({served})");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("");
    eprintln!("burst of 40: {served} served; supervisor peak RSS {peak}");
    assert!(served < 40, "the burst overflows the limits");
    // Once the burst is over, the server serves as before.
    let mut client = client.clone();
    let after = client
        .infer(InferRequest {
            pairs: long_pairs(32, 10),
            raw_scores: false,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect("the server serves after the burst");
    assert_eq!(after.get_ref().scores.len(), 32);
    tokens += after.get_ref().tokens;
    // Refused requests cost the model nothing: it saw exactly the served requests' tokens.
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "total_tokens_total"),
        tokens as f64,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "batch_queue_size"), 0.0, "{metrics}");
    assert!(metric(&metrics, "scheduler_latency_seconds_count") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_cannot_be_met_is_refused_at_once() {
    let server = TestServer::start(&[]);
    let mut client = server.client_without_local_deadline();
    // Minutes of model work against 3 s.
    let mut doomed = tonic::Request::new(InferRequest {
        pairs: long_pairs(1024, 400),
        raw_scores: false,
        instruction: None,
        ..Default::default()
    });
    doomed.set_timeout(Duration::from_secs(3));
    let asked = Instant::now();
    let status = client.infer(doomed).await.expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("expected wait"), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_not_held_up(&mut server.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_answers_deadline_exceeded_and_its_pairs_are_not_retried() {
    // Admission cannot see a hang coming: the pair is admitted, its worker hangs on it
    // until the batch timeout kills it, and the deadline passes first.
    let server = TestServer::start_with_env(
        &["--batch-timeout", "4s"],
        &[("CROSSENC_FAULT_HANG_ON", "xylophone")],
    );
    let mut client = server.client_without_local_deadline();
    let mut doomed = tonic::Request::new(InferRequest {
        pairs: vec![Pair {
            query: "which instrument".into(),
            document: "a xylophone solo".into(),
        }],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    });
    doomed.set_timeout(Duration::from_secs(2));
    let asked = Instant::now();
    let status = client.infer(doomed).await.expect_err("the deadline passes");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline"), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // The hung worker is killed once; the gone request's pair is not run again.
    assert_not_held_up(&mut server.client().await).await;
    let restarts = server.metric_reaching("worker_restarts_total{worker_type=\"model\"}", 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let again = metric(
        &server.metrics(),
        "worker_restarts_total{worker_type=\"model\"}",
    );
    assert_eq!((restarts, again), (1.0, 1.0), "the withdrawn pair ran once");
}

/// Had a withdrawn request's pairs stayed queued, a small request would wait behind
/// minutes of work, and admission would refuse it for as long; withdrawn, it waits at
/// most for the batches a worker had taken. (The withdrawal reaches admission a moment
/// after the client leaves: a refusal is retried for a few seconds.)
async fn assert_not_held_up(client: &mut CrossEncoderClient<Channel>) {
    let give_up = Instant::now() + Duration::from_secs(5);
    let response = loop {
        let mut next = tonic::Request::new(InferRequest {
            pairs: long_pairs(4, 10),
            raw_scores: false,
            instruction: None,
            ..Default::default()
        });
        next.set_timeout(Duration::from_secs(40));
        match client.infer(next).await {
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            answered => break answered,
        }
    };
    let response = response.expect("the withdrawn pairs do not hold up the next request");
    assert_eq!(response.get_ref().scores.len(), 4);
}

#[test]
fn bench_measures_a_server_and_the_model_alone() {
    let server = TestServer::start(&[]);
    let dir = support::TempDir::new("crossenc-bench");
    let workload = dir.join("workload.jsonl");
    let rows: Vec<String> = (0..3)
        .map(|q| {
            let documents: Vec<String> = (0..4)
                .map(|d| format!("document {d} of query {q}, {}", "words ".repeat(d * 5)))
                .collect();
            serde_json::json!({"query": format!("query {q}"), "documents": documents}).to_string()
        })
        .collect();
    std::fs::write(&workload, rows.join("\n")).unwrap();
    let output = std::process::Command::new(BINARY)
        .arg("bench")
        .arg("--workload")
        .arg(&workload)
        .args(["--grpc-addr", &server.grpc_addr.to_string()])
        .args(["--http-addr", &server.http_addr.to_string()])
        .args(["--concurrency", "1,2", "--requests", "6"])
        .arg("--model")
        .arg(model_dir())
        .output()
        .expect("run crossenc bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("workload: 3 queries, 12 pairs"), "{stdout}");
    assert!(
        stdout.contains("model alone, scheduler batches:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("naive batch-per-request padding:"),
        "{stdout}"
    );
    for clients in [1, 2] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("closed x{clients} ")))
            .unwrap_or_else(|| panic!("no run at {clients} clients: {stdout}"));
        // "closed xN", rates, latencies, then the errors column: every request answered.
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[9], "0", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_has_its_pairs_withdrawn() {
    // A deadline far enough that admission takes the work in.
    let server = TestServer::start(&["--default-deadline", "1h"]);
    let mut client = server.client().await;
    // Minutes of model work; the client gives up after a few seconds and resets the
    // stream, as a closed connection or a cancelled call does.
    let gone = tokio::time::timeout(
        Duration::from_secs(3),
        client.infer(InferRequest {
            pairs: long_pairs(1024, 400),
            raw_scores: false,
            instruction: None,
            ..Default::default()
        }),
    )
    .await;
    assert!(gone.is_err(), "the big request cannot finish in 3 s");
    assert_not_held_up(&mut client).await;
    let queued = metric(&server.metrics(), "batch_queue_size");
    assert_eq!(queued, 0.0, "nothing of the abandoned request still waits");
}
