//! A long document read in windows: truncation misses a passage past the window, the
//! windows find it, and the document's score is its best window's, each window scored
//! on its own through Infer. Bad reading options are refused naming the field and limit.

use serde_json::{json, Value};
use tonic::Code;

use crossenc_proto::v1::{InferRequest, LongDocuments, Pair, RerankRequest};

use crate::support::{model_dir, post_json, TestServer};

const QUERY: &str = "what is the capital of france";
/// Words of one token each in the default model's (uncased WordPiece) vocabulary, so
/// that a window of its tokens is a window of its words.
const FILLER: [&str; 10] = [
    "the", "river", "was", "cold", "and", "children", "played", "near", "old", "trees",
];
const ANSWER: &str = "paris is the capital of france";
/// The model reads 64 tokens: the query's 6, 3 special ones, and 55 of the document.
const MAX_LENGTH: usize = 64;
const WINDOW: usize = MAX_LENGTH - 3 - 6;
const OVERLAP: usize = 8;

/// 100 filler words, then the answer: far past the first window.
fn long_document() -> Vec<&'static str> {
    let mut words: Vec<&str> = (0..100).map(|i| FILLER[i % FILLER.len()]).collect();
    words.extend(ANSWER.split(' '));
    words
}

/// The windows the server should make of `words`: `WINDOW` words each, every window
/// repeating the last `OVERLAP` of the one before, the last reaching the end.
fn windows(words: &[&str]) -> Vec<String> {
    let step = WINDOW - OVERLAP;
    let mut windows = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + WINDOW).min(words.len());
        windows.push(words[start..end].join(" "));
        if end == words.len() {
            return windows;
        }
        start += step;
    }
}

fn server() -> TestServer {
    TestServer::start_on(
        &model_dir(),
        &["--max-length", "64", "--model-threads", "1"],
    )
}

/// POST /score of the query and `document` with `options`, raw scores.
fn score(server: &TestServer, document: &str, options: Value) -> (u16, Value) {
    let pair = json!({"query": QUERY, "document": document});
    let mut body = json!({"pairs": [pair], "raw_scores": true});
    body.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    post_json(server.http_addr, "/score", &body)
}

/// The raw score of a /score answer's one pair, and its tokens.
fn scored(answer: &Value) -> (f64, u64) {
    let score = answer["scores"][0].as_f64().unwrap();
    (score, answer["tokens"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_finds_a_passage_past_the_window_and_scores_the_best_window() {
    let server = TestServer::start_with_env(
        &["--max-length", "64", "--model-threads", "1"],
        &[("CROSSENC_MODEL__CHUNK_OVERLAP", "8")],
    );
    let words = long_document();
    let document = words.join(" ");
    let windows = windows(&words);
    assert_eq!(windows.len(), 3);

    // Each window on its own, through Infer: tokens say each word is one token.
    let pairs = windows.iter().map(|w| Pair {
        query: QUERY.into(),
        document: w.clone(),
    });
    let one_by_one = (server.client().await)
        .infer(InferRequest {
            pairs: pairs.collect(),
            raw_scores: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let window_tokens: u64 = windows
        .iter()
        .map(|w| (w.split(' ').count() + 9) as u64)
        .sum();
    assert_eq!(
        one_by_one.tokens, window_tokens,
        "a filler word is not one token"
    );
    let best = one_by_one.scores.iter().copied().fold(f32::MIN, f32::max);

    let (status, truncated) = score(&server, &document, json!({}));
    assert_eq!(status, 200, "{truncated}");
    let (truncated, truncated_tokens) = scored(&truncated);
    assert_eq!(truncated_tokens, MAX_LENGTH as u64);
    let (status, chunked) = score(&server, &document, json!({"long_documents": "chunk"}));
    assert_eq!(status, 200, "{chunked}");
    let (chunked, chunked_tokens) = scored(&chunked);
    eprintln!(
        "truncated {truncated:.4}, chunked {chunked:.4}, windows {:?}",
        one_by_one.scores
    );
    assert!(
        (chunked - f64::from(best)).abs() < 1e-4,
        "{chunked} vs best window {best}"
    );
    assert_eq!(chunked_tokens, window_tokens, "every window's tokens count");
    // Truncation reads the first window; from the left, the last WINDOW words.
    let first = f64::from(one_by_one.scores[0]);
    assert!(
        (truncated - first).abs() < 1e-4,
        "{truncated} vs the first window {first}"
    );
    let (status, left) = score(&server, &document, json!({"truncation_direction": "Left"}));
    assert_eq!(status, 200, "{left}");
    let tail = words[words.len() - WINDOW..].join(" ");
    let (_, alone) = score(&server, &tail, json!({}));
    assert!(
        (scored(&left).0 - scored(&alone).0).abs() < 1e-4,
        "{left} vs {alone}"
    );

    // gRPC asks the same with its enum, and gets the same score.
    let answer = (server.client().await)
        .rerank(RerankRequest {
            query: QUERY.into(),
            documents: vec![document.clone()],
            raw_scores: true,
            long_documents: LongDocuments::Chunk.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!((f64::from(answer.results[0].score) - chunked).abs() < 1e-5);
    assert_eq!(answer.tokens, window_tokens);
}

/// The workload's query whose relevant document the default model's fitted head scores
/// above every other short document of the workload, and that document.
const LEAP_QUERY: &str = "Return True for leap years, False for non-leap years.";
const LEAP_ANSWER: &str = "Return True for leap years, False for non-leap years.";
/// Words of one token each that the model scores low against that query.
const COLORS: [&str; 10] = [
    "red", "blue", "green", "yellow", "black", "white", "brown", "pink", "gray", "orange",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_misses_a_relevant_passage_past_the_window_and_chunking_finds_it() {
    // No overlap: the last window holds the passage alone, scored as its own pair.
    let server = TestServer::start_with_env(
        &["--max-length", "64", "--model-threads", "1"],
        &[("CROSSENC_MODEL__CHUNK_OVERLAP", "0")],
    );
    let pair = |document: &str| json!({"query": LEAP_QUERY, "document": document});
    let body = json!({"pairs": [pair("")]});
    let (_, empty) = post_json(server.http_addr, "/score", &body);
    let window = MAX_LENGTH - empty["tokens"].as_u64().unwrap() as usize;
    let filler: Vec<&str> = (0..2 * window).map(|i| COLORS[i % COLORS.len()]).collect();
    let document = format!("{} {LEAP_ANSWER}", filler.join(" "));
    let windows = [
        filler[..window].join(" "),
        filler[window..].join(" "),
        LEAP_ANSWER.into(),
    ];
    let body =
        json!({"pairs": windows.iter().map(|w| pair(w)).collect::<Vec<_>>(), "raw_scores": true});
    let (status, one_by_one) = post_json(server.http_addr, "/score", &body);
    assert_eq!(status, 200, "{one_by_one}");
    let each: Vec<f64> = (one_by_one["scores"].as_array().unwrap().iter())
        .map(|s| s.as_f64().unwrap())
        .collect();

    let score_of = |options: Value| {
        let mut body = json!({"pairs": [pair(&document)], "raw_scores": true});
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let (status, answer) = post_json(server.http_addr, "/score", &body);
        assert_eq!(status, 200, "{answer}");
        answer["scores"][0].as_f64().unwrap()
    };
    let truncated = score_of(json!({}));
    let chunked = score_of(json!({"long_documents": "chunk"}));
    eprintln!("windows {each:?}: truncated {truncated:.4}, chunked {chunked:.4}");
    assert!(
        (truncated - each[0]).abs() < 1e-4,
        "truncation reads the first window"
    );
    assert!(
        (chunked - each[2]).abs() < 1e-4,
        "chunking finds the passage's window"
    );
    assert!(
        chunked > truncated + 0.3,
        "the passage past the window should raise the score: {truncated} -> {chunked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_options_past_their_limits_are_refused_naming_them() {
    let server = server();
    let document = long_document().join(" ");
    let cases = [
        (
            json!({"long_documents": "chunk", "max_chunks_per_doc": 2}),
            413,
            "pairs[0] needs 4 windows, over max_chunks_per_doc (2)",
        ),
        (
            json!({"long_documents": "chunk", "max_chunks_per_doc": 9}),
            400,
            "max_chunks_per_doc is 9: it must be between 1 and this model's max_chunks_per_doc (8)",
        ),
        (
            json!({"long_documents": "chunk", "max_chunks_per_doc": 0}),
            400,
            "max_chunks_per_doc is 0",
        ),
        (
            json!({"truncate": false}),
            413,
            "pairs[0] is 115 tokens, over the model's 64, and truncate is false",
        ),
        (
            json!({"long_documents": "all"}),
            400,
            "long_documents \"all\" is not one of",
        ),
        (
            json!({"truncation_direction": "up"}),
            400,
            "truncation_direction \"up\" is not one of",
        ),
    ];
    for (options, status, message) in cases {
        let (got, answer) = score(&server, &document, options.clone());
        assert_eq!(got, status, "{options}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{options}: {error}");
    }
    // Windows cut no document: under chunk, truncate: false refuses nothing here.
    let options = json!({"truncate": false, "long_documents": "chunk"});
    let (status, answer) = score(&server, &document, options);
    assert_eq!(status, 200, "{answer}");
    // A short document is read as it is, whatever the options.
    let options = json!({"truncate": false, "long_documents": "chunk"});
    let (status, answer) = score(&server, "paris", options);
    assert_eq!(status, 200, "{answer}");

    let refused = (server.client().await)
        .infer(InferRequest {
            pairs: vec![Pair {
                query: QUERY.into(),
                document,
            }],
            truncate: Some(false),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("pairs[0] is 115 tokens"),
        "{refused:?}"
    );
    let refused = (server.client().await)
        .infer(InferRequest {
            pairs: vec![Pair {
                query: QUERY.into(),
                document: "d".into(),
            }],
            long_documents: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("long_documents 7"),
        "{refused:?}"
    );
}

#[test]
fn a_decoder_reads_one_window_and_says_so() {
    let decoder = crate::support::fixture("qwen3-reranker");
    let (code, log) = crate::support::serve_until_exit(
        &decoder,
        &["--template", "qwen3-reranker", "--long-documents", "chunk"],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("model.long_documents") && log.contains("one window"),
        "{log}"
    );

    let server = TestServer::start_on(
        &decoder,
        &["--template", "qwen3-reranker", "--max-length", "128"],
    );
    let document = long_document().join(" ");
    let (status, answer) = score(&server, &document, json!({"long_documents": "chunk"}));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("read in one window"),
        "{answer}"
    );
    let (status, answer) = score(&server, &document, json!({}));
    assert_eq!(status, 200, "truncated as usual: {answer}");
}
