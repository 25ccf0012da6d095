//! Hostile clients against the real binary: huge texts, a burst past its deadlines,
//! arbitrary bodies, a text that crashes the tokenizer, idle connections, texts whose cut
//! would change what the model reads, and a model that cannot load. Every request gets
//! an answer and none a server error; the supervisor stays small and keeps serving, or
//! exits saying why when it cannot.

mod bodies;
mod connections;
mod load;
mod startup;
#[path = "../support/mod.rs"]
mod support;
mod tokenizer_crash;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use support::{
    http_get, http_post_bytes, is_running, metric, model_dir, post_json, proc_status_kib,
    wait_exit, ModelCopy, TestServer,
};
use tonic::Code;

/// One test of this file at a time: each loads the machine on purpose, and the timing
/// ones (the burst, the memory peak) measure what a neighbour's load would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default `server.max_text_bytes`: the default model's max_length (512) x 32.
const TEXT_LIMIT: usize = 16 * 1024;

fn rerank_request(query: &str, documents: &[&str]) -> RerankRequest {
    RerankRequest {
        query: query.into(),
        documents: documents.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Sends a small Rerank until it is served, while the server says it is busy or has no
/// worker up, for up to `patience`; returns how many results came back, or why not.
async fn small_rerank_until_served(
    server: &TestServer,
    patience: Duration,
) -> Result<usize, String> {
    let mut client = server.client().await;
    let start = Instant::now();
    loop {
        let request = with_deadline(
            rerank_request("what is this", &["a cat", "a dog"]),
            Duration::from_secs(30),
        );
        match client.rerank(request).await {
            Ok(response) => return Ok(response.into_inner().results.len()),
            Err(status)
                if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable)
                    && start.elapsed() < patience =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(format!("{status:?}")),
        }
    }
}
