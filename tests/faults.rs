//! Crash isolation with the real binary: workers killed under load, a poison input, and
//! shutdown under load. Every request must get an answer; none may hang.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{
    children_of, http_get, is_running, metric, model_dir, post_json, wait_exit, ModelCopy,
    TestServer,
};
use tokio::task::JoinHandle;
use tonic::Code;

/// Longer than any request takes here: a request past it counts as hung.
const DEADLINE: Duration = Duration::from_secs(60);

/// What one request of a load loop got.
#[derive(Debug)]
struct Outcome {
    sent: Instant,
    result: Result<(), (Code, String)>,
}

fn rerank(round: usize) -> tonic::Request<RerankRequest> {
    let documents = (0..16)
        .map(|d| {
            format!(
                "document {d} of round {round}: {}",
                "text ".repeat(d % 7 * 4)
            )
        })
        .collect();
    let mut request = tonic::Request::new(RerankRequest {
        query: format!("query of round {round}"),
        documents,
        ..Default::default()
    });
    request.set_timeout(DEADLINE);
    request
}

/// Requests the load loops have sent so far.
static SENT: AtomicUsize = AtomicUsize::new(0);

/// `clients` loops sending Rerank requests until `stop` is set.
async fn load(
    server: &TestServer,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Outcome>>> {
    let client = server.client().await;
    (0..clients)
        .map(|c| {
            let (mut client, stop) = (client.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut round = c * 1000;
                while !stop.load(Ordering::Relaxed) {
                    SENT.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let result = match client.rerank(rerank(round)).await {
                        Ok(response) => {
                            assert_eq!(response.get_ref().results.len(), 16);
                            Ok(())
                        }
                        Err(status) => Err((status.code(), status.message().to_string())),
                    };
                    outcomes.push(Outcome { sent, result });
                    round += 1;
                }
                outcomes
            })
        })
        .collect()
}

async fn gather(loops: Vec<JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for outcomes in futures_util::future::join_all(loops).await {
        all.extend(outcomes.expect("a client loop panicked"));
    }
    all
}

/// Polls until the server has a `kind` worker other than `old` and says it is ready.
fn wait_for_replacement(server: &TestServer, kind: &str, old: i32) -> Duration {
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(30) {
        let replaced = server.worker_pids(kind).iter().any(|&pid| pid != old);
        let ready = matches!(http_get(server.http_addr, "/ready"), Ok((200, _)));
        if replaced && ready {
            return killed.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no {kind} worker replaced {old} within 30 s");
}

async fn kill_a_worker_under_load(kind: &str) {
    let server = TestServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(&server, 8, &stop).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = server.worker_pids(kind)[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let back = tokio::task::block_in_place(|| wait_for_replacement(&server, kind, victim));
    let back_at = Instant::now();
    // Load goes on against the new worker until a few requests have been sent to it.
    let sent_at_back = SENT.load(Ordering::Relaxed);
    while SENT.load(Ordering::Relaxed) < sent_at_back + 3 && back_at.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes = gather(loops).await;

    let served = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    eprintln!(
        "{kind} worker killed: back and ready in {back:?}; {} requests, {served} served, {} failed: {failed:?}",
        outcomes.len(),
        failed.len()
    );
    for (code, message) in &failed {
        assert!(
            matches!(code, Code::Unavailable | Code::Internal) && !message.is_empty(),
            "a failed request says why with UNAVAILABLE or INTERNAL: {code:?} {message}"
        );
    }
    assert!(served > 8, "the server kept serving ({served} served)");
    let after_recovery: Vec<_> = outcomes.iter().filter(|o| o.sent > back_at).collect();
    assert!(!after_recovery.is_empty());
    for outcome in after_recovery {
        assert!(
            outcome.result.is_ok(),
            "requests sent once the worker was back succeed: {outcome:?}"
        );
    }
    let metrics = server.metrics();
    let restarts = format!("worker_restarts_total{{worker_type=\"{kind}\"}}");
    assert_eq!(metric(&metrics, &restarts), 1.0, "{metrics}");
    let up = format!("worker_up{{worker_id=\"0\",worker_type=\"{kind}\"}}");
    assert_eq!(metric(&metrics, &up), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_worker_is_replaced_and_every_request_is_answered() {
    kill_a_worker_under_load("model").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tokenizer_worker_is_replaced_and_every_request_is_answered() {
    kill_a_worker_under_load("tokenizer").await;
}

/// The word the debug-build fault hook aborts on.
const POISON: &str = "xylophone";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_input_fails_its_request_and_spares_the_others() {
    let server = TestServer::start_with_env(&[], &[("CROSSENC_FAULT_ABORT_ON", POISON)]);
    let client = server.client().await;
    let pair = |document: &str| Pair {
        query: "which instrument".into(),
        document: document.into(),
    };
    let (mut poisoned_client, mut innocent_client) = (client.clone(), client.clone());
    let poisoned = poisoned_client.infer(InferRequest {
        pairs: vec![
            pair("a piano"),
            pair(&format!("a {POISON} solo")),
            pair("drums"),
        ],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    });
    let innocent = innocent_client.infer(InferRequest {
        pairs: vec![pair("a violin"), pair("a flute")],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    });
    let (poisoned, innocent) = tokio::join!(poisoned, innocent);

    let status = poisoned.expect_err("the poison input fails its request");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("pair 1")
            && status
                .message()
                .contains("crashed a model worker on its own"),
        "the message names the pair: {status:?}"
    );
    let innocent = innocent.expect("a request beside the poison is served");
    assert_eq!(innocent.get_ref().scores.len(), 2);
    // The pool is whole again and serves as before.
    let mut client = client.clone();
    let after = client
        .infer(InferRequest {
            pairs: vec![pair("a cello")],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect("served after the poison");
    assert_eq!(after.get_ref().scores.len(), 1);
    // One model worker: it served `after`, so every restart has happened.
    let restarts = server.metric_reaching("worker_restarts_total{worker_type=\"model\"}", 2.0);
    // The batch of at most 5 pairs died, then its halves were bisected down to the
    // poison alone: at most 1 + ceil(log2(5)) deaths, and never a crash loop.
    assert!(
        (2.0..=4.0).contains(&restarts),
        "the poison was found by bisection in {restarts} worker deaths"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_model_worker_is_killed_at_the_batch_timeout() {
    let server = TestServer::start_with_env(
        &["--batch-timeout", "2s"],
        &[("CROSSENC_FAULT_HANG_ON", POISON)],
    );
    let mut client = server.client().await;
    let started = Instant::now();
    let status = client
        .infer(InferRequest {
            pairs: vec![Pair {
                query: "which instrument".into(),
                document: format!("a {POISON} solo"),
            }],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect_err("a pair that hangs every worker fails");
    // Hung twice, killed twice at the timeout, then not retried.
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let restarts = server.metric_reaching("worker_restarts_total{worker_type=\"model\"}", 2.0);
    assert_eq!(restarts, 2.0, "killed twice, then not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_requests_in_flight_and_exits_cleanly() {
    let mut server = TestServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(&server, 4, &stop).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let workers: Vec<i32> = children_of(server.pid()).iter().map(|c| c.0).collect();
    assert_eq!(workers.len(), 2);
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    // New connections are refused at once, while requests in flight still drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::net::TcpStream::connect(server.grpc_addr).is_err(),
        "the gRPC port stops accepting after SIGTERM"
    );
    let status = tokio::task::block_in_place(|| wait_exit(&mut server.child, DEADLINE))
        .expect("the server exits after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    let outcomes = gather(loops).await;

    assert!(status.success(), "exit status {status:?}");
    let in_flight: Vec<_> = outcomes
        .iter()
        .filter(|o| o.sent + Duration::from_millis(200) < signalled)
        .collect();
    assert!(!in_flight.is_empty());
    for outcome in &in_flight {
        assert!(
            outcome.result.is_ok(),
            "a request in flight at SIGTERM finishes: {outcome:?}"
        );
    }
    // Sent after the signal: served if the connection still took it, else refused.
    for outcome in outcomes.iter().filter(|o| o.sent > signalled) {
        if let Err((code, _)) = &outcome.result {
            assert!(
                matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled),
                "{outcome:?}"
            );
        }
    }
    for pid in workers {
        assert!(!is_running(pid), "worker {pid} outlived the server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_come_back_fails_readiness_and_requests_but_not_the_server() {
    let model = ModelCopy::of(&model_dir());
    // The patience for a missing worker comes from the configuration file: 1 s, not 10 s.
    let config = model.join("crossenc.toml");
    // Restarts go on failing here: the server must keep answering, not give up.
    std::fs::write(
        &config,
        "[workers]\nno_worker_patience = \"1s\"\nmax_start_failures = 1000\n",
    )
    .unwrap();
    let server = TestServer::start_on(model.path(), &["--config", config.to_str().unwrap()]);
    // The weights vanish, then the model worker dies: every restart now fails.
    model.remove("model.safetensors");
    let victim = server.worker_pids("model")[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let not_ready = loop {
        match http_get(server.http_addr, "/ready") {
            Ok((503, body)) => break body,
            _ if killed.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("/ready still says {other:?}"),
        }
    };
    assert!(not_ready.contains("not ready"), "{not_ready}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    // Health follows once the supervisor has taken the dead worker out of its set.
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let mut serving = -1;
    while serving != not_serving && killed.elapsed() < Duration::from_secs(10) {
        serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "crossenc.v1.CrossEncoder".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving, not_serving);
    // A request waits a while for the worker, then fails plainly rather than hang.
    let mut client = server.client().await;
    let asked = Instant::now();
    let status = client
        .infer(InferRequest {
            pairs: vec![Pair {
                query: "q".into(),
                document: "d".into(),
            }],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect_err("no model worker can score it");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Well under the default 10 s: the configured patience was used.
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert!(status.message().contains("model worker"), "{status:?}");
    // The JSON API says the same with 503.
    let (code, body) = tokio::task::block_in_place(|| {
        post_json(
            server.http_addr,
            "/score",
            &serde_json::json!({"pairs": [{"query": "q", "document": "d"}]}),
        )
    });
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error_type"], "unavailable", "{body}");
    // The supervisor itself is still up and answering.
    assert_eq!(http_get(server.http_addr, "/health").unwrap().0, 200);
}
