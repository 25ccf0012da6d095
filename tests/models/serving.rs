//! Two models in one server: each request scored by the model it names, unknown names
//! refused with the names served, the list of models, the metrics apart, and one
//! model's crashed worker leaving the other serving.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tonic::Code;

use crate::support::{children_of, http_get, metric, post_json};
use crate::{infer_raw, minilm_goldens, two_models, worst_error, xlmr_goldens, MINILM, XLMR};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_answers_its_goldens_by_name_and_unknown_names_are_refused() {
    let (server, _dir) = two_models("");
    let (minilm, xlmr) = (minilm_goldens(), xlmr_goldens());

    let (scores, model) = infer_raw(&server, MINILM, &minilm).await;
    assert_eq!(model, MINILM);
    let minilm_error = worst_error(&scores, &minilm);
    let (scores, model) = infer_raw(&server, XLMR, &xlmr).await;
    assert_eq!(model, XLMR);
    let xlmr_error = worst_error(&scores, &xlmr);
    eprintln!("largest raw score errors: {MINILM} {minilm_error:e}, {XLMR} {xlmr_error:e}");
    assert!(minilm_error < 1e-4 && xlmr_error < 1e-4);
    // No name: the first model. Its scores are not the other's.
    let (scores, model) = infer_raw(&server, "", &minilm).await;
    assert_eq!(model, MINILM);
    assert!(worst_error(&scores, &minilm) < 1e-4);

    // HTTP names the model in the body and answers with it.
    let body = json!({"model": XLMR, "query": xlmr[0].query, "documents": [xlmr[0].document]});
    let (status, answer) = post_json(server.http_addr, "/v1/rerank", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], XLMR);
    let body = json!({"model": XLMR, "pairs": [{"query": xlmr[0].query, "document": xlmr[0].document}], "raw_scores": true});
    let (status, answer) = post_json(server.http_addr, "/score", &body);
    assert_eq!(status, 200, "{answer}");
    let score = answer["scores"][0].as_f64().unwrap();
    assert!((score - xlmr[0].score).abs() < 1e-4, "{answer}");

    // A name not served: 404 / NOT_FOUND, with the names that are.
    for path in ["/rerank", "/v1/rerank"] {
        let body = json!({"model": "nope", "query": "q", "texts": ["d"], "documents": ["d"]});
        let body = match path {
            "/rerank" => json!({"model": "nope", "query": "q", "texts": ["d"]}),
            _ => {
                let mut body = body;
                body.as_object_mut().unwrap().remove("texts");
                body
            }
        };
        let (status, answer) = post_json(server.http_addr, path, &body);
        assert_eq!(status, 404, "{path}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("\"nope\"") && error.contains("minilm, xlmr"),
            "{error}"
        );
        assert_eq!(answer["error_type"], "not_found");
    }
    let refused = server
        .client()
        .await
        .infer(crossenc_proto::v1::InferRequest {
            pairs: crate::support::pairs(&minilm[..1]),
            model: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("minilm, xlmr"), "{refused:?}");

    // The list, the readiness, and the metrics of each model apart.
    let (status, list) = http_get(server.http_addr, "/v1/models").unwrap();
    assert_eq!(status, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = (list["data"].as_array().unwrap().iter())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MINILM, XLMR]);
    assert_eq!(list["data"][1]["max_model_len"], 128, "{list}");
    let text = server.metrics();
    assert_eq!(
        metric(
            &text,
            r#"request_count_total{model="xlmr",method="http_score"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"request_count_total{model="minilm",method="grpc_infer"}"#
        ),
        2.0
    );
    // Refused before a model was known: no label value from the client's name.
    assert!(!text.contains("nope"), "a client's name became a label");
    assert_eq!(
        metric(
            &text,
            r#"request_errors_total{model="",method="grpc_infer",code="not_found"}"#
        ),
        1.0
    );
    for model in [MINILM, XLMR] {
        let info = format!(
            "build_info{{version=\"{}\",model=\"{model}\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "no {info} in\n{text}");
        let up = format!(r#"worker_up{{model="{model}",worker_id="0",worker_type="model"}}"#);
        assert_eq!(metric(&text, &up), 1.0);
    }
}

/// Pids of the server's `kind` workers that serve the model at `path`.
fn workers_of(server: &crate::TestServer, kind: &str, path: &str) -> Vec<i32> {
    let marker = format!(" worker {kind} ");
    children_of(server.pid())
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(&marker) && cmdline.contains(path))
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_models_crashed_worker_leaves_the_other_serving() {
    let (server, _dir) = two_models("");
    let (minilm, xlmr) = (minilm_goldens(), xlmr_goldens());
    let fixture = crate::fixture("xlm-roberta").to_string_lossy().into_owned();
    let victims = workers_of(&server, "model", &fixture);
    assert_eq!(victims.len(), 1, "one xlmr model worker");
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();

    // While xlmr's worker is dead and restarting, minilm answers every request.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (scores, _) = infer_raw(&server, MINILM, &minilm[..4]).await;
        assert!(worst_error(&scores, &minilm[..4]) < 1e-4);
        answered += 1;
    }
    assert!(answered > 0);
    // xlmr comes back on its own, with the right scores.
    let restarts = server.metric_reaching(
        r#"worker_restarts_total{model="xlmr",worker_type="model"}"#,
        1.0,
    );
    assert_eq!(restarts, 1.0);
    let (scores, _) = infer_raw(&server, XLMR, &xlmr).await;
    assert!(worst_error(&scores, &xlmr) < 1e-4);
    let text = server.metrics();
    assert_eq!(
        metric(
            &text,
            r#"worker_restarts_total{model="minilm",worker_type="model"}"#
        ),
        0.0,
        "the other model's workers were not touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_holds_its_own_requests_in_flight() {
    let (server, _dir) = crate::two_models_with("", &["--max-concurrent-requests", "1"]);
    let documents: Vec<String> = (0..1024)
        .map(|i| format!("document {i} with words enough to take a while ").repeat(4))
        .collect();
    let long = crossenc_proto::v1::RerankRequest {
        model: XLMR.into(),
        query: "what do documents say".into(),
        documents,
        ..Default::default()
    };
    let mut client = server.client().await;
    let in_flight = tokio::spawn(async move { client.rerank(long).await });
    // While xlmr holds its one request in flight, more for xlmr are refused naming it,
    // and minilm takes its own: xlmr's request holds no place in the gate any more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let refused = (server.client().await)
            .rerank(crate::support::small_rerank(XLMR, 0))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let message = refused.message();
        assert!(
            message.contains("model xlmr is at its max_concurrent_requests (1)"),
            "{message}"
        );
    }
    let (scores, _) = infer_raw(&server, MINILM, &minilm_goldens()[..2]).await;
    assert_eq!(scores.len(), 2);
    assert!(
        !in_flight.is_finished(),
        "the long request ended too soon to test anything"
    );
    let answered = in_flight
        .await
        .unwrap()
        .expect("the long request is served");
    assert_eq!(answered.into_inner().results.len(), 1024);
}

#[test]
fn crossenc_bench_loads_the_model_it_names_with_the_reading_it_asks() {
    // The fixture reads 128 tokens: the workload's longest documents need many windows.
    let (server, _dir) = crate::two_models("max_chunks_per_doc = 64");
    let workload = crate::support::workspace().join("bench/workload-public.jsonl");
    let (grpc, http) = (server.grpc_addr.to_string(), server.http_addr.to_string());
    let ran = std::process::Command::new(crate::support::BINARY)
        .args(["bench", "--workload", workload.to_str().unwrap()])
        .args(["--grpc-addr", &grpc, "--http-addr", &http])
        .args(["--concurrency", "1", "--requests", "4"])
        .args(["--served-model", XLMR, "--chunk"])
        .output()
        .expect("crossenc bench runs");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let text = server.metrics();
    let series =
        |model: &str| format!(r#"request_count_total{{model="{model}",method="grpc_rerank"}}"#);
    assert_eq!(metric(&text, &series(XLMR)), 4.0);
    assert!(!text.contains(&series(MINILM)), "the other model took none");
    assert!(
        !text.contains("request_errors_total{model=\"xlmr\""),
        "{text}"
    );
    // The workload's documents past the fixture's 128 tokens were read in windows: more
    // pairs scored than documents sent.
    // Workers report on their stats channel, a little after the answers.
    let series = r#"worker_request_count_total{model="xlmr",worker_type="model"}"#;
    let pairs = server.metric_reaching(series, 4.0 * 32.0 + 1.0);
    assert!(pairs > 4.0 * 32.0, "{pairs} pairs for 128 documents");
}
