//! What following a request costs it: the spans and the access line one request makes
//! (its request span, admission, tokenization, scoring, the model batch it rode in with
//! its link, the access log), under the subscribers a server runs with: none, the
//! default text log at info, JSON at info, the text log with spans exported over
//! OpenTelemetry, and a filter that turns them all off (warn).
//!
//! `cargo bench -p crossenc-api --bench tracing`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use crossenc_api::access::{self, Served};
use crossenc_core::RequestId;
use opentelemetry::trace::TracerProvider as _;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// An exporter that drops what it is given.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// The tracing one request does, as the server does it.
fn one_request(id: &RequestId) {
    let request = tracing::info_span!("request", request_id = %id, path = "/rerank");
    let _in_request = request.enter();
    {
        let _admission = tracing::info_span!("admission", pairs = 32).entered();
    }
    let tokenized =
        std::future::ready(()).instrument(tracing::info_span!("tokenization", chunks = 1));
    futures_util::FutureExt::now_or_never(tokenized);
    let scoring = tracing::info_span!("scoring", pairs = 32, tokens = 2900u64);
    let batch = tracing::info_span!(
        parent: None,
        "model_batch",
        pairs = 32,
        tokens = 2900usize,
        isolated = false,
        requests = tracing::field::Empty,
        queued_ms = tracing::field::Empty,
        compute_ms = tracing::field::Empty,
    );
    batch.follows_from(&scoring);
    batch.record("requests", id.as_str());
    batch.record("queued_ms", 1.5);
    batch.record("compute_ms", 420.0);
    drop(batch);
    drop(scoring);
    let served = Served {
        pairs: 32,
        tokens: 2900,
        ..Served::default()
    };
    access::log(
        Some(id),
        "http_rerank",
        &200,
        Some(&served),
        Duration::from_millis(480),
    );
}

fn subscribers(c: &mut Criterion) {
    let id = RequestId::generate();
    c.bench_function("request tracing, no subscriber", |b| {
        b.iter(|| one_request(black_box(&id)))
    });
    let text = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(text, || {
        c.bench_function("request tracing, text log at info", |b| {
            b.iter(|| one_request(black_box(&id)))
        });
    });
    let json = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .finish();
    tracing::subscriber::with_default(json, || {
        c.bench_function("request tracing, JSON log at info", |b| {
            b.iter(|| one_request(black_box(&id)))
        });
    });
    // The OpenTelemetry layer on top of the text log, its spans built and handed to a
    // batch exporter that drops them (what an OTLP export costs the request's thread).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let traced = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")));
    tracing::subscriber::with_default(traced, || {
        c.bench_function("request tracing, text log and span export", |b| {
            b.iter(|| one_request(black_box(&id)))
        });
    });
    let _ = provider.shutdown();
    let off = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(off, || {
        c.bench_function("request tracing, filtered out (warn)", |b| {
            b.iter(|| one_request(black_box(&id)))
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = subscribers
}
criterion_main!(benches);
