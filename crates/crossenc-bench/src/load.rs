//! The load generator: Rerank requests over gRPC, closed or open loop.
//!
//! Closed loop: N clients, each sending its next request when the last is answered;
//! throughput is what the server gives. Open loop: requests are due at a fixed rate
//! whatever the server does, and each latency counts from the time the request was
//! due, not from when it could be sent, so a server that falls behind shows its queue
//! (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::{LongDocuments, RerankRequest};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::report::Asking;
use crate::stats::Percentiles;
use crate::workload::Query;

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loop {
    /// This many clients, each waiting for its answer before the next request.
    Closed { clients: usize },
    /// This many requests per second, due on schedule.
    Open { rate: f64 },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Requests(usize),
    #[serde(with = "humantime_serde")]
    Duration(Duration),
}

/// What a run measured on the client side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadFigures {
    pub requests: usize,
    pub answered: usize,
    /// Failed requests by gRPC code.
    pub errors: BTreeMap<String, usize>,
    pub pairs: usize,
    /// Real tokens the server reported for the answered requests.
    pub tokens: u64,
    pub seconds: f64,
    pub latency: Percentiles,
    pub requests_per_second: f64,
    pub pairs_per_second: f64,
    pub tokens_per_second: f64,
}

/// One request's outcome.
struct Outcome {
    latency: Duration,
    pairs: usize,
    result: Result<u64, tonic::Code>,
}

/// Sends requests from `workload` (in order, wrapping) until `bound`, as `mode` says.
/// `tick` is called once per finished request (for a progress bar).
pub async fn run_load(
    client: Client,
    workload: Arc<[Query]>,
    mode: Loop,
    bound: Bound,
    tick: Arc<dyn Fn() + Send + Sync>,
) -> LoadFigures {
    let started = Instant::now();
    let outcomes = match mode {
        Loop::Closed { clients } => closed(client, workload, clients, bound, tick).await,
        Loop::Open { rate } => open(client, workload, rate, bound, tick).await,
    };
    summarize(outcomes, started.elapsed())
}

/// Whether request number `i`, due at `due`, is still within the bound.
fn within(bound: Bound, i: usize, due: Instant, started: Instant) -> bool {
    match bound {
        Bound::Requests(n) => i < n,
        Bound::Duration(d) => due < started + d,
    }
}

/// A client, and what its Reranks ask for.
pub type Client = (CrossEncoderClient<Channel>, Arc<Asking>);

async fn send((client, asking): &mut Client, query: &Query, due: Instant) -> Outcome {
    let long_documents = match asking.chunk {
        true => LongDocuments::Chunk,
        false => LongDocuments::Unspecified,
    };
    let request = RerankRequest {
        query: query.query.clone(),
        documents: query.documents.clone(),
        model: asking.model.clone(),
        long_documents: long_documents.into(),
        ..Default::default()
    };
    let result = client
        .rerank(request)
        .await
        .map(|answer| answer.into_inner().tokens)
        .map_err(|status| status.code());
    Outcome {
        latency: due.elapsed(),
        pairs: query.documents.len(),
        result,
    }
}

async fn closed(
    client: Client,
    workload: Arc<[Query]>,
    clients: usize,
    bound: Bound,
    tick: Arc<dyn Fn() + Send + Sync>,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (mut client, next, workload, tick) =
                (client.clone(), next.clone(), workload.clone(), tick.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if !within(bound, i, now, started) {
                        return outcomes;
                    }
                    outcomes.push(send(&mut client, &workload[i % workload.len()], now).await);
                    tick();
                }
            })
        })
        .collect();
    gather(tasks).await.into_iter().flatten().collect()
}

async fn open(
    client: Client,
    workload: Arc<[Query]>,
    rate: f64,
    bound: Bound,
    tick: Arc<dyn Fn() + Send + Sync>,
) -> Vec<Outcome> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0usize.. {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if !within(bound, i, due, started) {
            break;
        }
        tokio::time::sleep_until(due).await;
        let (mut client, query, tick) = (
            client.clone(),
            workload[i % workload.len()].clone(),
            tick.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = send(&mut client, &query, due).await;
            tick();
            outcome
        }));
    }
    gather(tasks).await
}

/// What every task returned; a task that panicked returned nothing.
async fn gather<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(done) = task.await {
            all.push(done);
        }
    }
    all
}

fn summarize(outcomes: Vec<Outcome>, elapsed: Duration) -> LoadFigures {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut figures = LoadFigures {
        requests: outcomes.len(),
        seconds,
        ..LoadFigures::default()
    };
    let mut latencies = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome.result {
            Ok(tokens) => {
                figures.answered += 1;
                figures.pairs += outcome.pairs;
                figures.tokens += tokens;
                latencies.push(outcome.latency);
            }
            Err(code) => *figures.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }
    figures.latency = Percentiles::of(&latencies);
    figures.requests_per_second = figures.answered as f64 / seconds;
    figures.pairs_per_second = figures.pairs as f64 / seconds;
    figures.tokens_per_second = figures.tokens as f64 / seconds;
    figures
}
