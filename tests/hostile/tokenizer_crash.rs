//! A text that crashes a tokenizer worker fails only its own request.

use super::*;

/// The word the debug-build tokenizer fault hook aborts on.
const TOKENIZER_POISON: &str = "xylophonequartz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_that_crashes_the_tokenizer_fails_only_its_own_request() {
    a_text_that_crashes_a_tokenizer_among(2).await;
}

/// With one tokenizer worker (the default), every other request's job dies with the
/// poison's and is retried alone, one after another, on the respawned worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_that_crashes_the_only_tokenizer_fails_only_its_own_request() {
    a_text_that_crashes_a_tokenizer_among(1).await;
}

async fn a_text_that_crashes_a_tokenizer_among(workers: usize) {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start_with_env(
        &["--tokenizer-workers", &workers.to_string()],
        &[("CROSSENC_FAULT_TOKENIZER_ABORT_ON", TOKENIZER_POISON)],
    );
    let restarts = "worker_restarts_total{worker_type=\"tokenizer\"}";
    let before = tokio::task::block_in_place(|| metric(&server.metrics(), restarts));
    let client = server.client().await;
    let innocent: Vec<_> = (0..8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let query = format!("which instrument {i}");
                let request = with_deadline(
                    rerank_request(&query, &["a piano", "a violin solo", "drums"]),
                    Duration::from_secs(60),
                );
                client
                    .rerank(request)
                    .await
                    .map(|response| response.into_inner().results.len())
            })
        })
        .collect();
    let mut poisoned_client = client.clone();
    let poisoned = tokio::spawn(async move {
        let document = format!("a {TOKENIZER_POISON} solo");
        let request = with_deadline(
            rerank_request("which instrument", &["a cello", document.as_str()]),
            Duration::from_secs(60),
        );
        poisoned_client.rerank(request).await
    });

    let status = poisoned
        .await
        .expect("the poisoned request's task")
        .expect_err("the request holding the poison fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("tokenizer"),
        "the failure names the tokenizer: {status:?}"
    );
    for (i, request) in innocent.into_iter().enumerate() {
        match request.await.expect("an innocent request's task") {
            Ok(results) => assert_eq!(results, 3),
            Err(status) => panic!("innocent request {i} failed beside the poison: {status:?}"),
        }
    }
    // Restarts are counted as replacements start: wait for the first, then a while for
    // any more.
    let grew = tokio::task::block_in_place(|| {
        server.metric_reaching(restarts, before + 1.0);
        std::thread::sleep(Duration::from_secs(3));
        metric(&server.metrics(), restarts) - before
    });
    println!("tokenizer restarts for one poison request: {grew}");
    assert!(
        (1.0..=2.0).contains(&grew),
        "the poison crashed a tokenizer once or twice (first try, isolated retry), not {grew} times"
    );
    let served = small_rerank_until_served(&server, Duration::from_secs(30)).await;
    assert_eq!(served, Ok(2), "served after the poison");
    let replaced = tokio::task::block_in_place(|| {
        let start = Instant::now();
        loop {
            let up = server.worker_pids("tokenizer").len();
            if up >= workers || start.elapsed() > Duration::from_secs(20) {
                return up;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(replaced, workers, "every tokenizer worker is back");
}
