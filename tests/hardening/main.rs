//! The second round of hostile clients, against the real binary: slow clients that hold
//! connections, bodies bounded in bytes, a poison request beside live traffic, and
//! thousands of random and mutated bodies. Each measures what a normal client sees
//! meanwhile, and the supervisor's file descriptors and memory afterwards.
//!
//! The tests that compare a p99 run alone (`.config/nextest.toml`: their names say p99).

mod byte_budget;
mod fuzz;
mod poison;
mod slow_clients;
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use support::{small_rerank, TestServer};

/// Latencies of `count` small Reranks sent one after another by one client.
async fn normal_client(server: &TestServer, count: usize) -> Vec<Duration> {
    timed_reranks(server.client().await, count).await
}

/// Latencies of `count` small Reranks sent one after another on `client`.
async fn timed_reranks(
    mut client: CrossEncoderClient<tonic::transport::Channel>,
    count: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for round in 0..count {
        let started = Instant::now();
        client
            .rerank(small_rerank("", round))
            .await
            .expect("a normal client's request is served");
        latencies.push(started.elapsed());
    }
    latencies
}

/// The 99th percentile (nearest rank).
fn p99(latencies: &[Duration]) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A gRPC message frame: uncompressed, its length, the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// Open file descriptors of a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: i32) -> f64 {
    support::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Waits up to `patience` for `check` to hold, polling; whether it did.
async fn settles(patience: Duration, check: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < patience {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check()
}
