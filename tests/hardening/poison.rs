//! A poison request beside eight normal clients, on two model workers: while its pair is
//! isolated (bisection, one worker death per step), the other worker keeps taking the
//! normal clients' batches, so their p99 stays within twice the p99 without the poison,
//! and the poison request is answered with its error.

use tonic::Code;

use super::*;

/// The word the debug-build fault hook aborts a model worker on.
const POISON: &str = "xylophone";
const CLIENTS: usize = 8;
const REQUESTS_EACH: usize = 200;

async fn eight_clients(server: &TestServer) -> Vec<Duration> {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = server.client().await;
        clients.push(tokio::spawn(timed_reranks(client, REQUESTS_EACH)));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.expect("a client"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_search_beside_eight_clients_keeps_their_p99_within_twice() {
    let server = TestServer::start_with_env(
        &[],
        &[
            ("CROSSENC_FAULT_ABORT_ON", POISON),
            ("CROSSENC_WORKERS__MODEL", "2"),
            ("CROSSENC_WORKERS__MODEL_THREADS", "2"),
        ],
    );
    eight_clients(&server).await; // warm, and the admission estimate learned
    let alone = eight_clients(&server).await;

    let mut poisoned = server.client().await;
    let poison = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let documents: Vec<String> = (0..16)
            .map(|i| match i {
                11 => format!("a {POISON} solo"),
                _ => format!("an ordinary document {i}"),
            })
            .collect();
        poisoned
            .rerank(crossenc_proto::v1::RerankRequest {
                query: "which instrument".into(),
                documents,
                ..Default::default()
            })
            .await
    });
    let during = eight_clients(&server).await;
    let status = poison
        .await
        .expect("the poison client")
        .expect_err("the poison request fails");
    let runs = support::metric(&server.metrics(), "poison_search_runs_total");
    let restarts = support::metric(
        &server.metrics(),
        r#"worker_restarts_total{worker_type="model"}"#,
    );
    let (p99_alone, p99_during) = (p99(&alone), p99(&during));
    println!(
        "{CLIENTS} clients x {REQUESTS_EACH} requests: p99 {p99_alone:?} alone, {p99_during:?} \
         beside a poison search of {runs} runs and {restarts} model worker restarts"
    );
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains("crashed a model worker on its own"),
        "{status:?}"
    );
    assert!(runs >= 2.0, "the search ran: {runs} runs");
    assert!(
        p99_during <= p99_alone * 2,
        "the normal clients' p99 went from {p99_alone:?} to {p99_during:?}"
    );
}
