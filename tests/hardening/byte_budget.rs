//! 64 clients at once, each with a body just under the per-request limit: the bodies
//! being received and decoded are bounded by `server.max_inflight_request_bytes`, so
//! the supervisor's peak memory stays under that budget plus a stated overhead, and
//! every client is answered (served, or refused 429 / RESOURCE_EXHAUSTED).

use std::net::SocketAddr;

use crossenc_proto::v1::RerankRequest;
use tonic::Code;

use super::*;

const REQUEST_LIMIT: usize = 4 << 20;
const BUDGET: usize = 32 << 20;
const CLIENTS: usize = 64;

/// A Rerank of four documents of about a MiB each: its body just under 4 MiB.
fn big_documents() -> Vec<String> {
    let each = (REQUEST_LIMIT - 4096) / 4;
    let sentence = "the cat sat on the mat and looked at the dog. ";
    (0..4)
        .map(|i| {
            let mut text = format!("document {i}: ");
            while text.len() + sentence.len() < each {
                text.push_str(sentence);
            }
            text
        })
        .collect()
}

fn http_body(documents: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "query": "what is a cat", "texts": documents }))
        .expect("JSON")
}

async fn post(addr: SocketAddr, body: Vec<u8>) -> u16 {
    tokio::task::spawn_blocking(move || {
        support::http_post_bytes(addr, "/rerank", "application/json", &body)
            .map(|(status, _)| status)
            .unwrap_or(0)
    })
    .await
    .expect("a client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_are_bounded_in_bytes_not_in_count() {
    let budget = BUDGET.to_string();
    let limit = REQUEST_LIMIT.to_string();
    let server = TestServer::start_with_env(
        &[],
        &[
            ("CROSSENC_SERVER__MAX_REQUEST_BYTES", limit.as_str()),
            (
                "CROSSENC_SERVER__MAX_INFLIGHT_REQUEST_BYTES",
                budget.as_str(),
            ),
        ],
    );
    let pid = server.pid();
    normal_client(&server, 5).await;
    let idle = rss_mib(pid);
    let documents = big_documents();
    let body = http_body(&documents);
    assert!(body.len() < REQUEST_LIMIT && body.len() > REQUEST_LIMIT - 8192);

    let grpc = server.client().await;
    let mut http = Vec::new();
    let mut calls = Vec::new();
    for i in 0..CLIENTS {
        if i % 4 == 3 {
            let mut client = grpc.clone();
            let request = RerankRequest {
                query: "what is a cat".into(),
                documents: documents.clone(),
                ..Default::default()
            };
            calls.push(tokio::spawn(async move {
                client.rerank(request).await.err().map(|s| s.code())
            }));
        } else {
            http.push(tokio::spawn(post(server.http_addr, body.clone())));
        }
    }
    let mut statuses = Vec::new();
    for answer in http {
        statuses.push(answer.await.expect("an HTTP client"));
    }
    let mut codes = Vec::new();
    for answer in calls {
        codes.push(answer.await.expect("a gRPC client"));
    }
    let peak = support::proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0;
    let served = statuses.iter().filter(|&&s| s == 200).count()
        + codes.iter().filter(|c| c.is_none()).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count()
        + codes
            .iter()
            .filter(|c| **c == Some(Code::ResourceExhausted))
            .count();
    println!(
        "{CLIENTS} bodies of {:.1} MiB with a {} MiB budget: {served} served, {refused} refused; \
         supervisor RSS {idle:.1} MiB idle, peak {peak:.1} MiB",
        body.len() as f64 / (1 << 20) as f64,
        BUDGET >> 20,
    );
    for status in &statuses {
        assert!(
            matches!(status, 200 | 413 | 429),
            "an HTTP client got {status}"
        );
    }
    for code in codes.iter().flatten() {
        assert!(
            matches!(code, Code::ResourceExhausted | Code::InvalidArgument),
            "a gRPC client got {code:?}"
        );
    }
    assert_eq!(served + refused, CLIENTS, "{statuses:?} {codes:?}");
    assert!(served >= 1, "some bodies fit the budget");
    // The overhead: each body is held as it arrived and again as decoded text (twice
    // the budget), plus the allocator's slack.
    let overhead = 2.0 * (BUDGET >> 20) as f64 + 48.0;
    assert!(
        peak <= idle + (BUDGET >> 20) as f64 + overhead,
        "the supervisor peaked at {peak:.1} MiB ({idle:.1} MiB idle, budget {} MiB)",
        BUDGET >> 20
    );
}
