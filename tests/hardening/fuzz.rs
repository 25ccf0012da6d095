//! A fuzz pass against a live server: 10,000 bodies, random and mutated from valid
//! requests (JSON for the three HTTP routes, protobuf in gRPC frames for Rerank and
//! Infer), from a seeded generator so that a failure can be replayed. No answer is a
//! server error but the documented 503 / 504 (gRPC: UNAVAILABLE, DEADLINE_EXCEEDED); the
//! supervisor stays up and its memory comes back to idle.

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use prost::Message;

use crossenc_proto::v1::{InferRequest, Pair};

use super::*;

const BODIES: usize = 10_000;
const SEED: [u8; 32] = *b"crossenc fuzz pass, seed number1";

/// Valid requests to start mutations from.
fn http_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("/rerank", br#"{"query":"what is a cat","texts":["a cat is a feline","stocks fell"],"raw_scores":false,"truncate":true}"#.to_vec()),
        ("/v1/rerank", br#"{"model":"m","query":"what is a cat","documents":["a cat","stocks"],"top_n":1,"return_documents":true}"#.to_vec()),
        ("/score", br#"{"pairs":[{"query":"what is a cat","document":"a feline"}],"raw_scores":true}"#.to_vec()),
    ]
}

fn grpc_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let infer = InferRequest {
        pairs: vec![Pair {
            query: "what is a cat".into(),
            document: "a feline".into(),
        }],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    };
    vec![
        (
            "/crossenc.v1.CrossEncoder/Rerank",
            small_rerank("", 1).encode_to_vec(),
        ),
        ("/crossenc.v1.CrossEncoder/Infer", infer.encode_to_vec()),
    ]
}

/// Tokens a JSON mutation splices in: the values that break parsers and limits.
const JSON_TOKENS: &[&str] = &[
    "null",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "[]",
    "{}",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "true",
    "[[[[[[[[[[",
    "\"top_n\":-5",
    ",",
    ":",
    "\"texts\":[]",
    "\"documents\":null",
    "\"query\":[1,2]",
];

/// One mutation of `seed`, picked by `rng`.
fn mutate(rng: &mut TestRng, seed: &[u8], json: bool) -> Vec<u8> {
    let mut body = seed.to_vec();
    let rounds = 1 + rng.next_u32() % 4;
    for _ in 0..rounds {
        let at = if body.is_empty() {
            0
        } else {
            rng.next_u32() as usize % body.len()
        };
        match rng.next_u32() % 7 {
            0 => {
                if let Some(byte) = body.get_mut(at) {
                    *byte ^= 1 << (rng.next_u32() % 8);
                }
            }
            1 => body.insert(at, rng.next_u32() as u8),
            2 => {
                if at < body.len() {
                    body.remove(at);
                }
            }
            3 => body.truncate(at),
            4 => {
                let end = (at + 1 + rng.next_u32() as usize % 16).min(body.len());
                let piece = body[at..end].to_vec();
                body.splice(at..at, piece.iter().copied().cycle().take(piece.len() * 64));
            }
            5 if json => {
                let token = JSON_TOKENS[rng.next_u32() as usize % JSON_TOKENS.len()];
                body.splice(at..at, token.bytes());
            }
            _ => {
                let len = rng.next_u32() as usize % 64;
                let noise: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
                body.splice(at..at, noise);
            }
        }
    }
    body
}

/// A gRPC frame whose header may lie: a compressed flag, or a length that is not the
/// message's.
fn framed(rng: &mut TestRng, message: &[u8]) -> Bytes {
    let mut frame = grpc_frame(message).to_vec();
    match rng.next_u32() % 10 {
        0 => frame[0] = 1,
        1 => frame[1..5].copy_from_slice(&rng.next_u32().to_be_bytes()),
        _ => {}
    }
    Bytes::from(frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_and_mutated_bodies_get_no_server_error() {
    let server = TestServer::start(&[]);
    let pid = server.pid();
    normal_client(&server, 5).await;
    let idle = rss_mib(pid);
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let grpc = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &SEED);
    let (http_seeds, grpc_seeds) = (http_seeds(), grpc_seeds());
    // Every body first (the seeded sequence does not depend on the answers), then eight
    // at a time.
    let bodies: Vec<(bool, &str, Vec<u8>, Bytes)> = (0..BODIES)
        .map(|i| {
            if i % 5 >= 3 {
                let (path, seed) = &grpc_seeds[i % grpc_seeds.len()];
                let message = mutate(&mut rng, seed, false);
                let frame = framed(&mut rng, &message);
                (true, *path, message, frame)
            } else {
                let (path, seed) = &http_seeds[i % http_seeds.len()];
                let body = mutate(&mut rng, seed, true);
                let sent = Bytes::from(body.clone());
                (false, *path, body, sent)
            }
        })
        .collect();
    let answers: Vec<(usize, String)> = futures_util::stream::iter(bodies.iter().enumerate())
        .map(|(i, (grpc_call, path, _, sent))| {
            let (http, grpc) = (http.clone(), grpc.clone());
            let addr = if *grpc_call {
                server.grpc_addr
            } else {
                server.http_addr
            };
            let content_type = if *grpc_call {
                "application/grpc"
            } else {
                "application/json"
            };
            let request = hyper::Request::post(format!("http://{addr}{path}"))
                .header("content-type", content_type)
                .header("te", "trailers")
                .body(Full::new(sent.clone()))
                .expect("a request");
            async move {
                let answer = if *grpc_call {
                    grpc_outcome(grpc.request(request).await).await
                } else {
                    http_outcome(http.request(request).await).await
                };
                (i, answer)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for (i, answer) in answers {
        let bad = answer.starts_with("http 5")
            && !matches!(answer.as_str(), "http 503" | "http 504")
            || answer.starts_with("http error")
            || answer.starts_with("grpc error")
            || matches!(
                answer.as_str(),
                "grpc 2" | "grpc 12" | "grpc 13" | "grpc 15"
            );
        if bad && failures.len() < 5 {
            let sent = String::from_utf8_lossy(&bodies[i].2);
            failures.push(format!("body {i}: {answer} for {sent:?}"));
        }
        *statuses.entry(answer).or_default() += 1;
    }
    println!("{BODIES} bodies: {statuses:?}");
    assert!(failures.is_empty(), "server errors: {failures:#?}");
    assert!(support::is_running(pid), "the supervisor is alive");
    assert!(server
        .client()
        .await
        .rerank(small_rerank("", 0))
        .await
        .is_ok());
    let settled = settles(Duration::from_secs(20), || rss_mib(pid) <= idle + 16.0).await;
    assert!(
        settled,
        "the supervisor's memory comes back: {:.1} MiB, {idle:.1} MiB idle",
        rss_mib(pid)
    );
}

async fn http_outcome(
    answer: Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
) -> String {
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            format!("http {status}")
        }
        Err(error) => format!("http error {error}"),
    }
}

/// The two INTERNAL answers that are a client's framing, not a server fault: tonic's
/// answer to a frame whose length runs past the body, and the one gRPC's compression
/// spec requires for a compressed flag without `grpc-encoding`.
const FRAMING_ERRORS: [&str; 2] = [
    "Unexpected EOF decoding stream",
    "protocol error: received message with compressed-flag",
];

/// `grpc N` (the grpc-status; `grpc framing` for the client framing errors above), or
/// `grpc error ...` when no status came back.
async fn grpc_outcome(
    answer: Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
) -> String {
    let response = match answer {
        Ok(response) => response,
        Err(error) => return format!("grpc error {error}"),
    };
    if response.status() != 200 {
        return format!("grpc error HTTP {}", response.status());
    }
    if response.headers().contains_key("grpc-status") {
        return grpc_status(response.headers());
    }
    match response.into_body().collect().await {
        Ok(body) => match body.trailers() {
            Some(trailers) if trailers.contains_key("grpc-status") => grpc_status(trailers),
            _ => "grpc error no status".into(),
        },
        Err(error) => format!("grpc error {error}"),
    }
}

fn grpc_status(headers: &hyper::HeaderMap) -> String {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (code, message) = (text("grpc-status"), text("grpc-message"));
    let message = percent_decoded(message);
    if code == "13" && FRAMING_ERRORS.iter().any(|e| message.starts_with(e)) {
        return "grpc framing".into();
    }
    format!("grpc {code}")
}

/// grpc-message is percent-encoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
