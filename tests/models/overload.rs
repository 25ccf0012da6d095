//! One model saturated beside another: the other's requests never wait in the
//! saturated model's queue, so its latency stays what it was (within what sharing the
//! machine's cores costs), and none of its requests is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_proto::v1::RerankRequest;

use crate::support::{small_rerank, TestServer};
use crate::{two_models, MINILM, XLMR};

/// Latencies of `count` small Reranks of `model`, one after another.
async fn latencies(server: &TestServer, model: &str, count: usize) -> Vec<Duration> {
    let mut client = server.client().await;
    let mut taken = Vec::with_capacity(count);
    for round in 0..count {
        let started = Instant::now();
        client
            .rerank(small_rerank(model, round))
            .await
            .expect("a small Rerank");
        taken.push(started.elapsed());
    }
    taken
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// Clients that keep `model` saturated with large Reranks until `stop`: what they got
/// answered and refused.
fn saturate(
    server: &TestServer,
    model: &'static str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (answered, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let documents: Vec<String> = (0..64)
        .map(|i| format!("document {i} about the many things a long text can hold ").repeat(6))
        .collect();
    let tasks = (0..clients)
        .map(|_| {
            let addr = format!("http://{}", server.grpc_addr);
            let (stop, answered, refused) = (
                Arc::clone(stop),
                Arc::clone(&answered),
                Arc::clone(&refused),
            );
            let documents = documents.clone();
            tokio::spawn(async move {
                let mut client =
                    crossenc_proto::v1::cross_encoder_client::CrossEncoderClient::connect(addr)
                        .await
                        .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let request = RerankRequest {
                        model: model.into(),
                        query: "what do long texts hold".into(),
                        documents: documents.clone(),
                        ..Default::default()
                    };
                    match client.rerank(request).await {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (answered, refused, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_model_leaves_the_other_models_p99_unchanged() {
    let (server, _dir) = two_models("");
    let _warm = latencies(&server, MINILM, 20).await;
    let alone = p99(latencies(&server, MINILM, 200).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (answered, refused, tasks) = saturate(&server, XLMR, 12, &stop);
    // Let the saturating clients fill the other model's queue first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued = crate::support::metric(&server.metrics(), r#"queued_pairs{model="xlmr"}"#);
    let beside = p99(latencies(&server, MINILM, 200).await);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (answered, refused) = (
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "{MINILM} p99 alone {alone:?}, beside a saturated {XLMR} {beside:?}; {XLMR}: {answered} answered, {refused} refused, {queued} pairs queued mid-run"
    );
    assert!(answered > 0, "the saturating clients were served");
    assert!(
        queued >= 64.0,
        "{XLMR} was not saturated: {queued} pairs queued"
    );
    // What sharing two cores with the other model's worker costs, and no queue's wait:
    // a shared queue would put a small request behind the other model's backlog.
    assert!(
        beside <= alone * 3 + Duration::from_millis(30),
        "{MINILM} p99 went from {alone:?} to {beside:?} beside a saturated {XLMR}"
    );
}
