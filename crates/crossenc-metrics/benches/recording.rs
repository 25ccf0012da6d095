//! What recording metrics costs the request path: each kind of record alone, and all
//! the records one request and its batch make together.
//!
//! `cargo bench -p crossenc-metrics --bench recording`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use crossenc_ipc::{StatsReport, WorkerKind};
use crossenc_metrics::{Metrics, RequestRecorder, StageTimes};

fn single_records(c: &mut Criterion) {
    let metrics = Metrics::new(false).model("m");
    c.bench_function("counter inc", |b| {
        b.iter(|| metrics.total_tokens.inc_by(black_box(7)))
    });
    c.bench_function("histogram observe", |b| {
        b.iter(|| metrics.inference_latency.observe(black_box(0.0123)))
    });
    c.bench_function("labelled family inc", |b| {
        b.iter(|| {
            metrics.record_request(black_box("grpc_infer"), Duration::from_millis(3), Ok(None))
        })
    });
}

/// Everything recorded for one request of 32 pairs scored in one batch: the request,
/// its stages, the batch, the pairs' waits, one tokenizer and one model report, and
/// the IPC and codec timings.
fn one_request(c: &mut Criterion) {
    let root = Arc::new(Metrics::new(false));
    let metrics = Arc::new(root.model("m"));
    let tokenizer = metrics.worker_window(WorkerKind::Tokenizer, 0);
    let model = metrics.worker_window(WorkerKind::Model, 0);
    let report = StatsReport {
        pairs: 32,
        tokens: 2000,
        compute: Duration::from_millis(40),
        answer_send: Duration::from_micros(20),
        dropped: 0,
    };
    let stages = StageTimes {
        tokenization: Duration::from_millis(2),
        tokenizer_wait: Duration::from_micros(100),
        model_wait: Duration::from_millis(5),
        inference: Duration::from_millis(40),
    };
    c.bench_function("all records of one 32-pair request", |b| {
        b.iter(|| {
            let recorder = RequestRecorder::start(Arc::clone(&root), "grpc_rerank", Instant::now());
            root.grpc_deserialize_latency.observe(2e-5);
            recorder.route(&metrics);
            metrics.tokenizer_queue_wait_latency.observe(1e-4);
            metrics.record_worker_report(WorkerKind::Tokenizer, 0, &tokenizer, &report);
            metrics.scheduler_latency.observe(3e-6);
            metrics.record_batch(32, 2000, 2200, 70);
            for _ in 0..32 {
                metrics.model_queue_wait_latency.observe(5e-3);
            }
            metrics.record_worker_report(WorkerKind::Model, 0, &model, &report);
            for _ in 0..4 {
                metrics.mp_queue_send_latency.observe(2e-5);
            }
            metrics.mp_queue_receive_latency.observe(3e-5);
            metrics.mp_queue_receive_latency.observe(3e-5);
            root.grpc_serialize_latency.observe(1e-5);
            recorder.finish(Ok(Some(stages)));
        })
    });
}

criterion_group!(benches, single_records, one_request);
criterion_main!(benches);
