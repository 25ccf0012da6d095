//! The core's state machines against fake workers on tokio's paused clock: crashes,
//! hangs, withdrawals, put-backs and missing workers, each in the same steps every run,
//! without a process.

mod fake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_config::ScoreActivation;
use crossenc_core::admission::Refused;
use crossenc_core::dispatch::DispatchLimits;
use crossenc_core::scheduler::{BatchCost, SchedulerLimits};
use crossenc_core::{Pipeline, PipelineError, PipelineLimits, RequestId, Scores, WorkerKind};
use crossenc_metrics::Metrics;
use fake::{add_tokenizer, expected_score, keep_models, Log, COMPUTE};

const QUERY: &str = "q";
const RESPAWN: Duration = Duration::from_millis(500);

fn limits() -> PipelineLimits {
    PipelineLimits {
        scheduler: SchedulerLimits {
            cost: BatchCost::Padded,
            max_batch_tokens: 10_000,
            max_batch_size: 2,
            max_batch_delay: Duration::from_millis(2),
        },
        dispatch: DispatchLimits {
            batches_per_worker: 2,
            batch_timeout: Duration::from_secs(5),
            no_worker_patience: Duration::from_secs(3),
        },
        max_concurrent_requests: 64,
        max_queued_pairs: 1000,
        max_text_bytes: 1 << 20,
        max_text_bytes_in_flight: 1 << 24,
        tokenizer_workers: 1,
        activation: Some(ScoreActivation::Identity),
        long_documents: Default::default(),
        max_chunks_per_doc: 1,
        chunk_overlap: 0,
    }
}

/// A pipeline with one fake tokenizer and `models` fake model workers that come back
/// [`RESPAWN`] after each death (never, with `respawn = false`).
fn pipeline(limits: PipelineLimits, models: u32, respawn: bool) -> (Arc<Pipeline>, Arc<Log>) {
    let pipeline = Arc::new(Pipeline::start(
        limits,
        Arc::new(Metrics::new(false).model("m")),
    ));
    let log = Arc::new(Log::default());
    add_tokenizer(&pipeline.tokenizers, &log);
    keep_models(&pipeline.models, models, &log, respawn.then_some(RESPAWN));
    (pipeline, log)
}

fn later() -> Instant {
    tokio::time::Instant::now().into_std() + Duration::from_secs(600)
}

/// Scores a Rerank of `documents`; a request the core never answers fails the test
/// (after an hour of paused time, which passes at once) instead of hanging it.
async fn score(pipeline: &Pipeline, documents: &[&str]) -> Result<Scores, PipelineError> {
    let documents: Vec<String> = documents.iter().map(|d| d.to_string()).collect();
    let texts = pipeline.rerank_texts(QUERY, &documents, "documents", Default::default());
    let id = RequestId::generate();
    let scoring = pipeline.score(texts, later(), &id);
    let answered = tokio::time::timeout(Duration::from_secs(3600), scoring);
    answered.await.expect("the core never answered the request")
}

fn expected(documents: &[&str]) -> Vec<f32> {
    documents.iter().map(|d| expected_score(QUERY, d)).collect()
}

/// Lets every task run until all wait on the clock or on each other.
async fn settle() {
    tokio::time::sleep(Duration::from_micros(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_dying_with_two_batches_fails_only_the_poison_pair() {
    let (pipeline, log) = pipeline(limits(), 1, true);
    // Both requests' pairs are the same length: batches follow arrival, so the poison
    // (the oldest pair) is in the first batch and the worker holds two when it dies.
    let poisoned = ["POISON", "docA1", "docA2"];
    let innocent = ["docB0", "docB1", "docB2"];
    let (first, second) = tokio::join!(score(&pipeline, &poisoned), async {
        settle().await;
        score(&pipeline, &innocent).await
    });
    match first {
        Err(PipelineError::Poison { index: 0 }) => {}
        other => panic!("the poison pair's request must fail naming index 0: {other:?}"),
    }
    let second = second.expect("the innocent request is answered");
    assert_eq!(second.scores, expected(&innocent));
    let deaths = log.deaths.lock().unwrap().clone();
    assert_eq!(deaths[0], 2, "the first death held two batches: {deaths:?}");
    assert_eq!(deaths, [2, 1], "then the poison pair alone killed one more");
    for document in innocent {
        assert_eq!(log.times_answered(document), 1, "{document} answered once");
    }
    assert_eq!(
        pipeline.admission.queued_pairs(),
        0,
        "every pair given back"
    );
    // The dispatch task is still whole: a later request is scored.
    let after = score(&pipeline, &["later"]).await.unwrap();
    assert_eq!(after.scores, expected(&["later"]));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_hangs_past_batch_timeout_is_killed_and_the_hang_isolated() {
    let (pipeline, log) = pipeline(limits(), 1, true);
    let started = tokio::time::Instant::now();
    let hanging = ["HANG"];
    let fine = ["docF0", "docF1"];
    let (hung, answered) = tokio::join!(score(&pipeline, &hanging), async {
        settle().await;
        score(&pipeline, &fine).await
    });
    assert!(
        matches!(hung, Err(PipelineError::Poison { index: 0 })),
        "{hung:?}"
    );
    assert_eq!(answered.unwrap().scores, expected(&fine));
    let timeout = limits().dispatch.batch_timeout;
    assert!(log.kills.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert!(started.elapsed() >= timeout * 2, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_during_tokenization_sends_nothing_to_the_model() {
    let (pipeline, log) = pipeline(limits(), 1, true);
    // The tokenizer takes COMPUTE per chunk: give up before it answers.
    let dropped = tokio::time::timeout(COMPUTE / 2, score(&pipeline, &["docX0", "docX1"])).await;
    assert!(dropped.is_err(), "the request was still tokenizing");
    tokio::time::sleep(COMPUTE * 10).await;
    assert!(log.batch_sizes().is_empty(), "{:?}", log.batch_sizes());
    assert_eq!(pipeline.admission.queued_pairs(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_during_scoring_withdraws_its_unsent_pairs() {
    let mut limits = limits();
    limits.dispatch.batches_per_worker = 1;
    let (pipeline, log) = pipeline(limits, 1, true);
    let documents: Vec<String> = (0..10).map(|i| format!("doc{i:02}")).collect();
    let documents: Vec<&str> = documents.iter().map(String::as_str).collect();
    // Tokenized after one COMPUTE, first batch sent, then dropped while it runs.
    let dropped = tokio::time::timeout(COMPUTE * 3 / 2 + Duration::from_millis(3), {
        score(&pipeline, &documents)
    })
    .await;
    assert!(dropped.is_err(), "the request was still being scored");
    tokio::time::sleep(COMPUTE * 20).await;
    let sent: usize = log.batch_sizes().iter().sum();
    assert_eq!(
        sent,
        2,
        "only the batch already sent ran: {:?}",
        log.batch_sizes()
    );
    assert_eq!(pipeline.admission.queued_pairs(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_undeliverable_batch_is_put_back_whole_not_bisected() {
    let pipeline = Arc::new(Pipeline::start(
        limits(),
        Arc::new(Metrics::new(false).model("m")),
    ));
    let log = Arc::new(Log::default());
    add_tokenizer(&pipeline.tokenizers, &log);
    let died = Arc::new(tokio::sync::Notify::new());
    let model = fake::FakeWorker::start(WorkerKind::Model, 0, &log, &died);
    model.refuse_next(1);
    pipeline.models.add(model);
    let documents = ["docP0", "docP1"];
    let scores = score(&pipeline, &documents).await.unwrap();
    assert_eq!(scores.scores, expected(&documents));
    assert_eq!(log.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        log.batch_sizes(),
        [2],
        "the refused batch went again as one"
    );
    assert!(log.deaths.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pairs_fail_unavailable_once_no_worker_came_back_within_the_patience() {
    let (pipeline, log) = pipeline(limits(), 1, false);
    // The only worker dies on this request and is not restarted.
    let started = tokio::time::Instant::now();
    let failed = score(&pipeline, &["ONCE"]).await;
    assert!(
        matches!(failed, Err(PipelineError::NoWorker(WorkerKind::Model))),
        "{failed:?}"
    );
    let patience = limits().dispatch.no_worker_patience;
    let waited = started.elapsed();
    assert!(
        waited >= patience && waited < patience + Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(log.deaths.lock().unwrap().len(), 1);
    assert_eq!(pipeline.admission.queued_pairs(), 0);
}

#[tokio::test(start_paused = true)]
async fn pairs_wait_for_a_worker_that_comes_back_within_the_patience() {
    let (pipeline, log) = pipeline(limits(), 1, true);
    let scores = score(&pipeline, &["ONCE"]).await.unwrap();
    assert_eq!(scores.scores, expected(&["ONCE"]));
    assert_eq!(log.deaths.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn requeued_pairs_count_against_the_queue_limit_again() {
    let mut limits = limits();
    limits.max_queued_pairs = 4;
    limits.scheduler.max_batch_size = 4;
    limits.dispatch.batches_per_worker = 1;
    let (pipeline, _log) = pipeline(limits, 1, true);
    let pipeline_for_a = Arc::clone(&pipeline);
    let first =
        tokio::spawn(
            async move { score(&pipeline_for_a, &["ONCE", "docQ1", "docQ2", "docQ3"]).await },
        );
    // Tokenized, sent as one batch of four (the queue is empty: the limit has room)...
    tokio::time::sleep(COMPUTE + Duration::from_millis(5)).await;
    assert_eq!(
        pipeline.admission.queued_pairs(),
        0,
        "all four are on the worker"
    );
    // ...the worker dies on it: the four are queued again while the worker restarts.
    tokio::time::sleep(COMPUTE + RESPAWN / 2).await;
    assert_eq!(pipeline.admission.queued_pairs(), 4);
    let refused = score(&pipeline, &["docR"]).await;
    assert!(
        matches!(refused, Err(PipelineError::Refused(Refused::Pairs { .. }))),
        "{refused:?}"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.scores, expected(&["ONCE", "docQ1", "docQ2", "docQ3"]));
    assert_eq!(pipeline.admission.queued_pairs(), 0);
    assert!(score(&pipeline, &["docR"]).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_poison_search_keeps_one_worker_and_the_others_serve_new_requests_meanwhile() {
    let mut limits = limits();
    limits.scheduler.max_batch_size = 64;
    let (pipeline, log) = pipeline(limits, 2, true);
    let poisoned: Vec<String> = (0..64)
        .map(|i| match i {
            45 => "POISON".to_string(),
            _ => format!("docP{i}"),
        })
        .collect();
    let poisoned: Vec<&str> = poisoned.iter().map(String::as_str).collect();
    let searching = {
        let pipeline = Arc::clone(&pipeline);
        let poisoned: Vec<String> = poisoned.iter().map(|d| d.to_string()).collect();
        tokio::spawn(async move {
            let poisoned: Vec<&str> = poisoned.iter().map(String::as_str).collect();
            let failed = score(&pipeline, &poisoned).await;
            (failed, tokio::time::Instant::now())
        })
    };
    // The first death (after tokenizing and one batch) starts the search: eight groups
    // of eight, the poison's killing its worker, then eight of one; requests that come
    // during it are answered beside its runs, before it ends.
    let during: Vec<_> = (0..6)
        .map(|i| {
            let pipeline = Arc::clone(&pipeline);
            tokio::spawn(async move {
                tokio::time::sleep(COMPUTE * (3 + 10 * i)).await;
                let document = format!("docL{i}");
                let scores = score(&pipeline, &[document.as_str()]).await.unwrap();
                assert_eq!(scores.scores, expected(&[document.as_str()]));
                tokio::time::Instant::now()
            })
        })
        .collect();
    let (failed, search_ended) = searching.await.unwrap();
    assert!(
        matches!(failed, Err(PipelineError::Poison { index: 45 })),
        "{failed:?}"
    );
    let deaths = log.deaths.lock().unwrap().len();
    assert_eq!(
        deaths, 3,
        "the batch, its group of eight, then the poison alone"
    );
    let mut answered_during = Vec::new();
    for request in during {
        answered_during.push(request.await.unwrap());
    }
    let before_the_end = answered_during
        .iter()
        .filter(|&&at| at < search_ended)
        .count();
    assert!(
        before_the_end >= 5,
        "new requests waited for the search: answered {answered_during:?}, search ended {search_ended:?}"
    );
    let runs = pipeline.metrics.poison_search_runs.get();
    // Two steps of at most eight groups (those after the poison's dropped with its
    // request), where halving would have taken six deaths.
    assert!((7..=16).contains(&runs), "{runs} search runs");
}
