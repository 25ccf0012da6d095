//! Large texts and bursts: the supervisor stays small, refuses what it cannot finish in
//! time, and refuses a text whose cut would change its tokens, naming the field.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_queries_in_parallel_keep_the_supervisor_small() {
    let _serial = SERIAL.lock().await;
    let server =
        TestServer::start_with_env(&[], &[("CROSSENC_SERVER__HTTP_REQUEST_TIMEOUT", "10s")]);
    let pid = server.pid();
    // The peak (VmHWM) counts from here where the kernel lets a test reset it; else
    // from start-up, which only makes the check stricter.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let before = proc_status_kib(pid, "VmRSS").expect("the supervisor's VmRSS");
    // A 1 MB query with 1024 documents: held once per request, it is 1 MB; copied into
    // every pair, 1 GB per request. Then 1 MB queries with 8 documents, few enough to be
    // admitted: their pairs go through the tokenizers and the model.
    let query = "word ".repeat(200_000);
    let mut answers = Vec::new();
    for documents in [1024, 8] {
        let documents = Value::Array(vec![Value::from(""); documents]);
        let body = json!({"query": query, "documents": documents}).to_string();
        answers.extend(post_in_parallel(server.http_addr, &body, 16));
    }
    let peak = proc_status_kib(pid, "VmHWM").expect("the supervisor's VmHWM");
    let statuses: Vec<u16> = answers
        .iter()
        .map(|answer| answer.as_ref().map_or(0, |(status, _)| *status))
        .collect();
    let grown = peak.saturating_sub(before);
    println!(
        "supervisor memory: VmRSS before {before} KiB, VmHWM after {peak} KiB, peak growth {} MiB \
         (peak reset: {reset}); statuses {statuses:?}",
        grown / 1024
    );
    for (i, answer) in answers.iter().enumerate() {
        // The admitted ones may still meet the 10 s timeout when the machine is busier
        // than when admission measured it (tests run side by side): the deadline's
        // promise is the burst test's; this one is about memory.
        let allowed: &[u16] = if i < 16 {
            &[200, 400, 413, 429]
        } else {
            &[200, 400, 413, 429, 504]
        };
        match answer {
            Ok((status, text)) => assert!(
                allowed.contains(status),
                "a 1 MB query is served or refused, never a server error: {status} {text}"
            ),
            Err(error) => panic!("a 1 MB query got no answer: {error}"),
        }
    }
    assert!(
        statuses[16..].contains(&200),
        "some of the 1 MB queries with 8 documents were scored: {statuses:?}"
    );
    assert!(
        grown < 256 * 1024,
        "the supervisor grew {} MiB for 32 requests of 1 MB ({before} KiB, peak {peak} KiB)",
        grown / 1024
    );
    assert!(is_running(pid), "the supervisor is still up");
    let served = small_rerank_until_served(&server, Duration::from_secs(60)).await;
    assert_eq!(served, Ok(2), "a small request is served after the burst");
}

/// The requests of bench/workload-public.jsonl: a query and (up to) 32 documents each.
/// Posts `body` to /v1/rerank from `senders` threads at once.
fn post_in_parallel(
    addr: std::net::SocketAddr,
    body: &str,
    senders: usize,
) -> Vec<std::io::Result<(u16, String)>> {
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let senders: Vec<_> = (0..senders)
                .map(|_| {
                    scope.spawn(move || {
                        http_post_bytes(addr, "/v1/rerank", "application/json", body.as_bytes())
                    })
                })
                .collect();
            senders
                .into_iter()
                .map(|sender| sender.join().expect("a sender thread panicked"))
                .collect()
        })
    })
}

fn workload() -> Vec<(String, Vec<String>)> {
    let path = support::workspace().join("bench/workload-public.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a workload row");
            let query = row["query"].as_str().expect("a query").to_string();
            let documents: Vec<String> = row["documents"]
                .as_array()
                .expect("documents")
                .iter()
                .take(32)
                .map(|d| d.as_str().expect("a document").to_string())
                .collect();
            (query, documents)
        })
        .collect()
}

/// The deadline of each request of the burst (longer on a machine so slow that one
/// request alone would take a third of it).
const BURST_DEADLINE: Duration = Duration::from_secs(3);

/// What one request of the burst got, timed from just before its send.
type BurstOutcome = (Duration, Result<usize, (Code, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_deadlines_is_refused_at_once_and_admitted_requests_finish() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(&[]);
    let rows = workload();
    assert!(!rows.is_empty(), "bench/workload-public.jsonl is empty");
    let client = server.client().await;
    // Two requests alone and without a deadline: the estimate has real batches behind it.
    let mut warm_up = Duration::ZERO;
    for (query, documents) in rows.iter().cycle().take(2) {
        let started = Instant::now();
        let response = client
            .clone()
            .rerank(RerankRequest {
                query: query.clone(),
                documents: documents.clone(),
                ..Default::default()
            })
            .await
            .expect("a warm-up request is served");
        assert_eq!(response.get_ref().results.len(), documents.len());
        warm_up = started.elapsed();
    }
    let deadline = BURST_DEADLINE.max(warm_up * 3);
    // Ten times what the server could score before the deadline at the warm-up's pace,
    // at least 100 requests and at most 250 (8000 pairs, under max_queued_pairs).
    let pace = warm_up.as_secs_f64().max(1e-3);
    let n = ((10.0 * deadline.as_secs_f64() / pace).ceil() as usize).clamp(100, 250);
    let burst: Vec<_> = (0..n)
        .map(|i| {
            let (query, documents) = rows[i % rows.len()].clone();
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = with_deadline(
                    RerankRequest {
                        query,
                        documents,
                        ..Default::default()
                    },
                    deadline,
                );
                let sent = Instant::now();
                let result = client.rerank(request).await;
                let took = sent.elapsed();
                let result = result
                    .map(|response| response.into_inner().results.len())
                    .map_err(|status| (status.code(), status.message().to_string()));
                (took, result)
            })
        })
        .collect();
    let outcomes: Vec<BurstOutcome> = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(burst),
    )
    .await
    .expect("every request of the burst is answered")
    .into_iter()
    .map(|outcome| outcome.expect("a request task panicked"))
    .collect();

    let served: Vec<Duration> = outcomes
        .iter()
        .filter(|(_, result)| result.is_ok())
        .map(|(took, _)| *took)
        .collect();
    let refused: Vec<Duration> = outcomes
        .iter()
        .filter(|(_, result)| matches!(result, Err((Code::ResourceExhausted, _))))
        .map(|(took, _)| *took)
        .collect();
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    let slowest_served = served.iter().max().copied().unwrap_or_default();
    println!(
        "burst of {n} requests with a {deadline:?} deadline (a warm-up request took {warm_up:?}): \
         {} served (slowest {slowest_served:?}), {} refused (slowest refusal {slowest_refusal:?})",
        served.len(),
        refused.len()
    );
    if let Some((_, Err((_, message)))) = outcomes.iter().find(|(_, r)| r.is_err()) {
        println!("first refusal: {message}");
    }
    // A neighbour (other tests run beside this one) can slow the machine after a request
    // was admitted, so a few admitted requests may miss their deadline; the estimate
    // learns from every batch, so most must not. A refusal takes no scoring: it comes
    // well within the deadline however busy the machine.
    // tonic's own timer can answer CANCELLED for a deadline the server answered a few
    // milliseconds late on a busy machine: that too is a deadline missed.
    let missed = outcomes.iter().filter(|(_, r)| missed_deadline(r)).count();
    let admitted = served.len() + missed;
    assert!(
        missed * 4 <= admitted,
        "{missed} of {admitted} admitted requests missed their deadline"
    );
    for (took, result) in &outcomes {
        match result {
            Ok(results) => assert!(*results > 0, "a served request has its results"),
            missed if missed_deadline(missed) => {}
            Err((code, message)) => {
                assert_eq!(
                    *code,
                    Code::ResourceExhausted,
                    "a request is served or refused at admission: {message}"
                );
                assert!(
                    message.contains("expected wait"),
                    "a refusal says the expected wait: {message}"
                );
                assert!(
                    *took < deadline / 2,
                    "a refusal comes at once, not after {took:?}: {message}"
                );
            }
        }
    }
    assert!(
        !served.is_empty(),
        "some of the burst is admitted and served"
    );
    assert!(
        refused.len() >= 10,
        "a burst of {n} past its deadline is mostly refused ({} were)",
        refused.len()
    );
    let after = tokio::time::timeout(
        Duration::from_secs(60),
        client
            .clone()
            .rerank(rerank_request("what is this", &["a cat", "a dog"])),
    )
    .await
    .expect("answered within 60 s")
    .expect("a request after the burst is served");
    assert_eq!(after.get_ref().results.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_limits_refuse_a_lossy_cut_naming_the_field() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(&[]);
    let limit = TEXT_LIMIT.to_string();

    // Spaces and then a word: cut at the limit, the word is lost, so it is refused.
    let spaces_then_word = format!("{}hello", " ".repeat(20_000));
    assert_eq!(spaces_then_word.len(), 20_005);
    let request = json!({"query": "what is this", "documents": ["fine", spaces_then_word]});
    let (status, body) =
        tokio::task::block_in_place(|| post_json(server.http_addr, "/v1/rerank", &request));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error_type"], "payload_too_large", "{body}");
    let message = body["error"].as_str().expect("an error message");
    for needle in ["documents[1]", "20005", limit.as_str()] {
        assert!(
            message.contains(needle),
            "{message:?} should name {needle:?}"
        );
    }

    // Words well past the limit: the cut keeps far more than the model reads.
    let mut client = server.client().await;
    let long_query = "word ".repeat(5000);
    assert_eq!(long_query.len(), 25_000);
    let response = client
        .rerank(rerank_request(&long_query, &["a", "b"]))
        .await
        .expect("a query cut without loss is scored");
    assert_eq!(response.get_ref().results.len(), 2);

    // The same refusal over gRPC, naming the pair's query.
    let status = client
        .infer(InferRequest {
            pairs: vec![Pair {
                query: format!("{}q", " ".repeat(20_000)),
                document: "d".into(),
            }],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect_err("a query whose cut loses its only word is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for needle in ["pairs[0].query", "20001", limit.as_str()] {
        assert!(
            status.message().contains(needle),
            "{:?} should name {needle:?}",
            status.message()
        );
    }
}

/// A burst request that ran out of time: the server's DEADLINE_EXCEEDED, or the client's
/// own timer firing first.
fn missed_deadline(result: &Result<usize, (Code, String)>) -> bool {
    match result {
        Err((Code::DeadlineExceeded, _)) => true,
        Err((Code::Cancelled, message)) => message.contains("Timeout expired"),
        _ => false,
    }
}
