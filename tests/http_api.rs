//! The HTTP JSON API against the real binary: the three routes score as gRPC does, every
//! error has its status and names what was wrong, and the OpenAPI document matches.

mod support;

use std::collections::BTreeSet;

use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use serde_json::{json, Value};
use support::{http_get, http_post, metric, post_json, TestServer};

const QUERY: &str = "how do I read a file line by line";
const TEXTS: [&str; 4] = [
    "Open the file and iterate over it: each step yields one line.",
    "Return the number of items in a container.",
    "Read and return one line from the stream.",
    "Beyond the mountains there are more mountains.",
];

fn scores_of(value: &Value, field: &str) -> Vec<(u64, f32)> {
    value
        .as_array()
        .expect("an array of results")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r[field].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_routes_score_exactly_as_grpc_does() {
    let server = TestServer::start(&[]);
    let mut grpc = server.client().await;
    let documents: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let grpc_rank = |raw_scores| RerankRequest {
        query: QUERY.into(),
        documents: documents.clone(),
        raw_scores,
        ..Default::default()
    };
    let by_grpc = |response: crossenc_proto::v1::RerankResponse| -> Vec<(u64, f32)> {
        response
            .results
            .iter()
            .map(|r| (u64::from(r.index), r.score))
            .collect()
    };
    let grpc_raw = by_grpc(grpc.rerank(grpc_rank(true)).await.unwrap().into_inner());
    let grpc_sigmoid = grpc.rerank(grpc_rank(false)).await.unwrap().into_inner();
    let tokens = grpc_sigmoid.tokens;
    let grpc_sigmoid = by_grpc(grpc_sigmoid);

    // POST /rerank, text-embeddings-inference's shape.
    let (status, tei) = post_json(
        server.http_addr,
        "/rerank",
        &json!({"query": QUERY, "texts": TEXTS, "raw_scores": true, "return_text": true}),
    );
    assert_eq!(status, 200, "{tei}");
    assert_eq!(scores_of(&tei, "score"), grpc_raw);
    let first = grpc_raw[0].0 as usize;
    assert_eq!(tei[0]["text"], TEXTS[first]);
    let (_, tei) = post_json(
        server.http_addr,
        "/rerank",
        &json!({"query": QUERY, "texts": TEXTS}),
    );
    assert_eq!(scores_of(&tei, "score"), grpc_sigmoid);
    assert!(tei[0].get("text").is_none(), "no text unless asked: {tei}");

    // POST /v1/rerank, Cohere's and Jina's shape, with both document forms.
    let documents = json!([TEXTS[0], {"text": TEXTS[1]}, TEXTS[2], {"text": TEXTS[3]}]);
    let (status, v1) = post_json(
        server.http_addr,
        "/v1/rerank",
        &json!({"model": served_name(&server), "query": QUERY, "documents": documents, "top_n": 2, "return_documents": true}),
    );
    assert_eq!(status, 200, "{v1}");
    assert_eq!(
        scores_of(&v1["results"], "relevance_score"),
        grpc_sigmoid[..2]
    );
    assert_eq!(v1["results"][0]["document"]["text"], TEXTS[first]);
    assert_eq!(v1["usage"]["total_tokens"].as_u64(), Some(tokens));
    assert!(v1["model"].as_str().is_some_and(|m| !m.is_empty()), "{v1}");

    // POST /score, raw pairs in order, as gRPC Infer.
    let pairs: Vec<Value> = TEXTS
        .iter()
        .map(|t| json!({"query": QUERY, "document": t}))
        .collect();
    let (status, scored) = post_json(
        server.http_addr,
        "/score",
        &json!({"pairs": pairs, "raw_scores": true}),
    );
    assert_eq!(status, 200, "{scored}");
    let infer = grpc
        .infer(InferRequest {
            pairs: TEXTS
                .iter()
                .map(|t| Pair {
                    query: QUERY.into(),
                    document: t.to_string(),
                })
                .collect(),
            raw_scores: true,
            instruction: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let http_scores: Vec<f32> = scored["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(http_scores, infer.scores);
    assert_eq!(scored["tokens"].as_u64(), Some(infer.tokens));

    let metrics = server.metrics();
    for method in ["http_rerank", "http_v1_rerank", "http_score"] {
        let expected = if method == "http_rerank" { 2.0 } else { 1.0 };
        let series = format!("request_count_total{{method=\"{method}\"}}");
        assert_eq!(metric(&metrics, &series), expected, "{metrics}");
    }
    assert_eq!(
        metric(&metrics, "request_count_total{method=\"grpc_rerank\"}"),
        2.0
    );
}

/// The name the server serves its one model by, from GET /v1/models.
fn served_name(server: &TestServer) -> String {
    let (status, text) = http_get(server.http_addr, "/v1/models").unwrap();
    assert_eq!(status, 200, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    list["data"][0]["id"].as_str().unwrap().to_string()
}

fn expect_error(response: (u16, Value), status: u16, error_type: &str, mentions: &str) {
    let (got, body) = response;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    let message = body["error"].as_str().expect("an error message");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[test]
fn json_errors_carry_the_right_status_and_say_what_was_wrong() {
    let server = TestServer::start(&[
        "--max-client-batch-size",
        "4",
        "--max-request-bytes",
        "4096",
        "--max-concurrent-requests",
        "1",
    ]);
    let addr = server.http_addr;
    let post = |path: &str, body: Value| post_json(addr, path, &body);
    let raw = |body: &str| {
        let (status, text) = http_post(addr, "/rerank", "application/json", body).unwrap();
        (
            status,
            serde_json::from_str::<Value>(&text).expect("a JSON error body"),
        )
    };
    expect_error(raw("{not json"), 400, "validation", "");
    expect_error(
        post(
            "/rerank",
            json!({"query": "q", "texts": ["a"], "colour": 1}),
        ),
        400,
        "validation",
        "colour",
    );
    expect_error(
        post("/rerank", json!({"query": "q", "texts": "a"})),
        400,
        "validation",
        "texts",
    );
    expect_error(
        post("/rerank", json!({"texts": ["a"]})),
        400,
        "validation",
        "query",
    );
    expect_error(
        post("/rerank", json!({"query": " ", "texts": ["a"]})),
        400,
        "validation",
        "query is empty",
    );
    expect_error(
        post(
            "/rerank",
            json!({"query": "q", "texts": ["a"], "truncation_direction": "Up"}),
        ),
        400,
        "validation",
        "truncation_direction \"Up\" is not one of",
    );
    expect_error(
        post(
            "/rerank",
            json!({"model": "other", "query": "q", "texts": ["a"]}),
        ),
        404,
        "not_found",
        "model \"other\" is not served here; the models served are: ",
    );
    expect_error(
        post(
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
        ),
        400,
        "validation",
        "top_n",
    );
    expect_error(
        post(
            "/v1/rerank",
            json!({"query": "q", "documents": [{"txt": "a"}]}),
        ),
        400,
        "validation",
        "documents",
    );
    expect_error(
        post("/score", json!({"pairs": [{"query": "", "document": "d"}]})),
        400,
        "validation",
        "pairs[0].query",
    );
    expect_error(
        post("/score", json!({"pairs": []})),
        400,
        "validation",
        "pairs is empty",
    );
    expect_error(
        post(
            "/rerank",
            json!({"query": "q", "texts": ["a", "b", "c", "d", "e"]}),
        ),
        413,
        "payload_too_large",
        "max_client_batch_size",
    );
    expect_error(
        post(
            "/rerank",
            json!({"query": "q", "texts": ["x".repeat(5000)]}),
        ),
        413,
        "payload_too_large",
        "max_request_bytes",
    );
    let (status, _) = http_post(
        addr,
        "/rerank",
        "text/plain",
        r#"{"query":"q","texts":["a"]}"#,
    )
    .unwrap();
    assert_eq!(status, 415);

    // One request at a time: of a burst, those over the limit get 429 at once.
    let statuses: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..8)
            .map(|i| {
                scope.spawn(move || {
                    post_json(
                        addr,
                        "/rerank",
                        &json!({"query": format!("q{i}"), "texts": ["a b c", "d e f", "g h", "i"]}),
                    )
                })
            })
            .collect();
        burst.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let served = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert!(served >= 1 && !refused.is_empty(), "{statuses:?}");
    for (status, body) in refused {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error_type"], "overloaded");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests"));
    }
    // Nothing above was a server error, and the server still serves.
    let (status, _) = post("/rerank", json!({"query": "q", "texts": ["a"]}));
    assert_eq!(status, 200);
}

/// Example values for a schema's properties, by type.
fn example(schema: &Value, property: &str) -> Value {
    match (property, schema["type"].as_str()) {
        ("truncation_direction", _) => json!("Right"),
        ("long_documents", _) => json!("chunk"),
        ("max_chunks_per_doc", _) => json!(2),
        ("truncate", _) => json!(true),
        ("model", _) => json!(""),
        ("documents", _) => json!(["a document"]),
        ("pairs", _) => json!([{"query": "q", "document": "d"}]),
        ("texts", _) => json!(["a text"]),
        ("top_n", _) => json!(1),
        (_, Some("boolean")) => json!(true),
        _ => json!("some text"),
    }
}

#[test]
fn the_openapi_document_matches_the_handlers() {
    let server = TestServer::start(&[]);
    let (status, text) = http_get(server.http_addr, "/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).expect("OpenAPI JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = &doc["components"]["schemas"];
    for (path, schema) in [
        ("/rerank", "RerankRequest"),
        ("/v1/rerank", "V1RerankRequest"),
        ("/score", "ScoreRequest"),
    ] {
        let body = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"];
        assert_eq!(
            body.as_str(),
            Some(format!("#/components/schemas/{schema}").as_str()),
            "{path}"
        );
        let properties = schemas[schema]["properties"]
            .as_object()
            .expect("properties");
        // Every property the document lists is one the handler takes: a request that
        // sets all of them is served (handlers refuse unknown fields), but for a
        // decoder's instruction, which this encoder refuses by name.
        let mut request: serde_json::Map<String, Value> = properties
            .iter()
            .map(|(name, property)| (name.clone(), example(property, name)))
            .collect();
        let (status, answer) = post_json(server.http_addr, path, &Value::Object(request.clone()));
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("instruction"),
            "{answer}"
        );
        request
            .remove("instruction")
            .expect("an instruction property");
        let (status, answer) = post_json(server.http_addr, path, &Value::Object(request));
        assert_eq!(status, 200, "{path}: {answer}");
        // And the required ones are exactly those without which the handler refuses.
        let required: BTreeSet<&str> = schemas[schema]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for name in properties.keys() {
            let mut without: serde_json::Map<String, Value> = properties
                .iter()
                .filter(|(n, _)| *n != name && *n != "instruction")
                .map(|(n, p)| (n.clone(), example(p, n)))
                .collect();
            without.remove(name);
            let (status, _) = post_json(server.http_addr, path, &Value::Object(without));
            assert_eq!(
                status == 400,
                required.contains(name.as_str()),
                "{path} without {name}: {status}"
            );
        }
    }
}

#[test]
fn a_request_past_the_http_timeout_answers_504() {
    // Admission cannot see a hang coming: the pair is admitted, its worker hangs on it,
    // and the timeout answers.
    let server = TestServer::start_with_env(
        &["--http-request-timeout", "1s", "--batch-timeout", "3s"],
        &[("CROSSENC_FAULT_HANG_ON", "xylophone")],
    );
    let pairs = json!([{"query": "which instrument", "document": "a xylophone solo"}]);
    expect_error(
        post_json(server.http_addr, "/score", &json!({"pairs": pairs})),
        504,
        "timeout",
        "http_request_timeout",
    );
}

#[test]
fn a_request_that_cannot_finish_within_the_http_timeout_is_refused_at_once() {
    let server = TestServer::start(&["--http-request-timeout", "1s"]);
    // Minutes of model work against a second of patience.
    let pairs: Vec<Value> = (0..512)
        .map(|i| json!({"query": format!("query {i}"), "document": "lorem ipsum dolor sit amet ".repeat(80)}))
        .collect();
    let asked = std::time::Instant::now();
    expect_error(
        post_json(server.http_addr, "/score", &json!({"pairs": pairs})),
        429,
        "overloaded",
        "expected wait",
    );
    assert!(asked.elapsed() < std::time::Duration::from_secs(1));
}
