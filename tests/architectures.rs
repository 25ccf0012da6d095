//! Every supported architecture through the real server: small checkpoints made by
//! transformers from each architecture's own config class (scripts/make_arch_fixtures.py,
//! scripts/make_qwen3_fixtures.py), scored over gRPC (and HTTP for the decoder) and
//! compared with transformers' fp32 logits; the default activation each model's config
//! asks for; instructions for a decoder's prompt; and folders that cannot work, refused
//! at start.

mod support;

use std::path::Path;
use std::process::Command;

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use support::{fixture, goldens, post_json, Golden, ModelCopy, TestServer, BINARY};

/// What the model's own default activation makes of a raw score.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Sigmoid,
    Identity,
}

/// Serves the fixture `name` and checks every golden's raw score within 1e-4, the
/// token counts, the default activation, and the architecture `build_info` names.
async fn serves_its_goldens(name: &str, architecture: &str, activation: Expected) {
    let server = TestServer::start_on(&fixture(name), &["--model-threads", "1"]);
    let mut client = server.client().await;
    let rows = goldens(&fixture(name).join("goldens.jsonl"));
    let pairs: Vec<Pair> = rows
        .iter()
        .map(|g| Pair {
            query: g.query.clone(),
            document: g.document.clone(),
        })
        .collect();
    let ask = |raw_scores| InferRequest {
        pairs: pairs.clone(),
        raw_scores,
        instruction: None,
        ..Default::default()
    };
    let raw = client.infer(ask(true)).await.unwrap().into_inner();
    assert_eq!(raw.scores.len(), rows.len());
    assert_eq!(raw.tokens, rows.iter().map(|g| g.tokens).sum::<u64>());
    let mut worst = 0f64;
    for (golden, &score) in rows.iter().zip(&raw.scores) {
        let error = (f64::from(score) - golden.score).abs();
        worst = worst.max(error);
        assert!(
            error < 1e-4,
            "{name}: {:?} / {:.60?}: {score} vs transformers {}",
            golden.query,
            golden.document,
            golden.score
        );
    }
    eprintln!("{name}: largest raw score error against transformers {worst:e}");
    // Truncation at the limit, an empty document and unicode are among the goldens.
    assert!(
        rows.iter().any(|g| g.tokens == 128),
        "{name}: no pair at the limit"
    );
    assert!(rows.iter().any(|g| g.document.is_empty()));

    let scored = client.infer(ask(false)).await.unwrap().into_inner();
    for (golden, &score) in rows.iter().zip(&scored.scores) {
        let expected = match activation {
            Expected::Sigmoid => 1.0 / (1.0 + (-golden.score).exp()),
            Expected::Identity => golden.score,
        };
        assert!(
            (f64::from(score) - expected).abs() < 1e-4,
            "{name}: default activation {activation:?}: {score} vs {expected}"
        );
    }
    if let [negative, positive] = rows[0].logits[..] {
        // The sigmoid of the difference is the softmax probability of the second label.
        let softmax = positive.exp() / (negative.exp() + positive.exp());
        assert!((f64::from(scored.scores[0]) - softmax).abs() < 1e-4);
    }
    let metrics = server.metrics();
    let build = metrics
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info in /metrics");
    assert!(
        build.contains(&format!("architecture=\"{architecture}\"")),
        "{build}"
    );
    // An encoder reads no instruction: a request with one is refused, naming it.
    let mut instructed = ask(true);
    instructed.instruction = Some("Find code".into());
    let refused = client.infer(instructed).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("instruction"), "{refused:?}");
}

/// Serves the decoder fixture `name` with the Qwen3-Reranker template and checks every
/// golden (default and custom instructions) through gRPC Infer and Rerank and HTTP
/// `/v1/rerank` and `/rerank`, within 1e-4 of transformers as the model card scores.
async fn decoder_serves_its_goldens(name: &str) {
    decoder_serves_its_goldens_as(name, ("qwen3-reranker", "qwen3")).await
}

/// [`decoder_serves_its_goldens`] with this template, checking `build_info` names the
/// architecture. A Rerank's documents share their prompt's prefix, computed once in
/// the model worker; the Rerank after the Infer of the same pairs finds it cached.
async fn decoder_serves_its_goldens_as(name: &str, (template, architecture): (&str, &str)) {
    // The Gemma-style tokenizer has no pre-tokenizer: no word bounds prove a byte cut
    // harmless, so its long goldens are sent whole under a wider max_text_bytes.
    let whole_texts = template == "bge-reranker-gemma";
    let max_text_bytes = if whole_texts { "64KiB" } else { "0" };
    let server = TestServer::start_on(
        &fixture(name),
        &[
            "--max-text-bytes",
            max_text_bytes,
            "--model-threads",
            "1",
            "--template",
            template,
            "--max-length",
            "128",
        ],
    );
    let mut client = server.client().await;
    let rows = goldens(&fixture(name).join("goldens.jsonl"));
    let mut worst = 0f64;
    let mut check = |golden: &Golden, score: f32, how: &str| {
        let error = (f64::from(score) - golden.score).abs();
        worst = worst.max(error);
        assert!(
            error < 1e-4,
            "{name} over {how}: {:?} / {:.60?} ({:?}): {score} vs transformers {}",
            golden.query,
            golden.document,
            golden.instruction,
            golden.score
        );
    };
    let mut instructions: Vec<Option<String>> =
        rows.iter().map(|g| g.instruction.clone()).collect();
    instructions.dedup();
    assert!(
        instructions.len() > 1,
        "{name}: goldens with one instruction only"
    );
    for instruction in &instructions {
        let group: Vec<&Golden> = rows
            .iter()
            .filter(|g| &g.instruction == instruction)
            .collect();
        let pairs = group
            .iter()
            .map(|g| Pair {
                query: g.query.clone(),
                document: g.document.clone(),
            })
            .collect();
        let request = InferRequest {
            pairs,
            raw_scores: true,
            instruction: instruction.clone(),
            ..Default::default()
        };
        let raw = client.infer(request).await.unwrap().into_inner();
        assert_eq!(raw.tokens, group.iter().map(|g| g.tokens).sum::<u64>());
        for (golden, &score) in group.iter().zip(&raw.scores) {
            check(golden, score, "gRPC Infer");
        }
        // One query's documents as a Rerank, over gRPC and both HTTP shapes.
        let query = &group[0].query;
        let same: Vec<&&Golden> = group.iter().filter(|g| &g.query == query).collect();
        let documents: Vec<String> = same.iter().map(|g| g.document.clone()).collect();
        let rerank = RerankRequest {
            query: query.clone(),
            documents: documents.clone(),
            raw_scores: true,
            instruction: instruction.clone(),
            ..Default::default()
        };
        let ranked = client.rerank(rerank).await.unwrap().into_inner();
        for result in &ranked.results {
            check(same[result.index as usize], result.score, "gRPC Rerank");
        }
        let mut body = serde_json::json!({"query": query, "documents": documents, "model": name});
        if let Some(instruction) = instruction {
            body["instruction"] = serde_json::json!(instruction);
        }
        let (status, answer) = post_json(server.http_addr, "/v1/rerank", &body);
        assert_eq!(status, 200, "{answer}");
        for result in answer["results"].as_array().unwrap() {
            let golden = same[result["index"].as_u64().unwrap() as usize];
            let probability = 1.0 / (1.0 + (-golden.score).exp());
            let score = result["relevance_score"].as_f64().unwrap();
            assert!(
                (score - probability).abs() < 1e-4,
                "/v1/rerank: {score} vs {probability}"
            );
        }
        let mut body = serde_json::json!({"query": query, "texts": documents, "raw_scores": true});
        if let Some(instruction) = instruction {
            body["instruction"] = serde_json::json!(instruction);
        }
        let (status, answer) = post_json(server.http_addr, "/rerank", &body);
        assert_eq!(status, 200, "{answer}");
        for result in answer.as_array().unwrap() {
            let golden = same[result["index"].as_u64().unwrap() as usize];
            check(
                golden,
                result["score"].as_f64().unwrap() as f32,
                "HTTP /rerank",
            );
        }
    }
    eprintln!("{name}: largest raw score error against transformers {worst:e}");
    assert!(
        rows.iter().any(|g| g.tokens == 128),
        "{name}: no pair at the limit"
    );

    if !whole_texts {
        instruction_past_max_text_bytes_is_refused(&mut client, server.http_addr).await;
    }
    let build = server.metrics();
    let build = build
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .expect("build_info in /metrics")
        .to_string();
    assert!(
        build.contains(&format!("architecture=\"{architecture}\""))
            && build.contains(&format!("template=\"{template}\"")),
        "{build}"
    );
}

/// mixedbread's mxbai-rerank-v2 form (Qwen2ForCausalLM): "1" less "0", its prompt in
/// pieces, as mixedbread's package scores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mxbai_rerank_v2_matches_mixedbreads_package_over_grpc_and_http() {
    decoder_serves_its_goldens_as("mxbai-rerank-v2", ("mxbai-rerank-v2", "qwen2")).await;
}

/// BAAI's bge-reranker-v2-gemma form (GemmaForCausalLM): the "Yes" logit, as
/// FlagEmbedding scores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bge_reranker_gemma_matches_flag_embedding_over_grpc_and_http() {
    decoder_serves_its_goldens_as("bge-reranker-gemma", ("bge-reranker-gemma", "gemma")).await;
}

/// Qwen/Qwen3-Reranker-*'s published form: Qwen3ForCausalLM scored by its "yes" and
/// "no" logits at the last position; bf16 weights in two shards, tied embeddings,
/// grouped-query attention with head_dim 16 on hidden 32, transformers 5's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen3_reranker_causal_lm_matches_the_model_card_over_grpc_and_http() {
    decoder_serves_its_goldens("qwen3-reranker").await;
}

/// The converted form (Qwen3ForSequenceClassification, one label): f32 weights,
/// transformers 4's config (`torch_dtype`, top-level `rope_theta`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen3_reranker_sequence_classifier_matches_transformers_over_grpc_and_http() {
    decoder_serves_its_goldens("qwen3-reranker-seq-cls").await;
}

/// A decoder served without a template, and an encoder with one, are refused at start
/// naming the setting.
#[test]
fn a_decoder_without_a_template_is_refused_at_start_naming_the_flag() {
    let message = refused_at_start(&fixture("qwen3-reranker"));
    assert!(
        message.contains("--template") && message.contains("qwen3-reranker"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xlm_roberta_with_a_unigram_tokenizer_matches_transformers() {
    serves_its_goldens("xlm-roberta", "xlm-roberta", Expected::Sigmoid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roberta_with_byte_level_bpe_and_two_labels_matches_transformers() {
    serves_its_goldens("roberta", "xlm-roberta", Expected::Sigmoid).await;
}

/// Its config.json names `sbert_ce_default_activation_function`: Identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camembert_matches_transformers_and_keeps_its_identity_activation() {
    serves_its_goldens("camembert", "xlm-roberta", Expected::Identity).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bert_with_two_labels_matches_transformers() {
    serves_its_goldens("bert-two-labels", "bert", Expected::Sigmoid).await;
}

/// Its own tensor names, no token types, a ReLU pre-classifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distilbert_matches_transformers() {
    serves_its_goldens("distilbert", "distilbert", Expected::Sigmoid).await;
}

/// Rotary positions, local layers with a 16-token window (pairs run to 128 tokens),
/// GeGLU, no biases, mean pooling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modernbert_matches_transformers() {
    serves_its_goldens("modernbert", "modernbert", Expected::Sigmoid).await;
}

/// Disentangled attention: c2p and p2c over 16 log-bucketed relative positions, pairs to
/// 128 tokens; no absolute positions, no token types; the context pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deberta_v2_matches_transformers() {
    serves_its_goldens("deberta-v2", "deberta-v2", Expected::Sigmoid).await;
}

/// `crossenc serve` on `model` must exit 2 before any worker starts; its stderr.
fn refused_at_start(model: &Path) -> String {
    refused_by(model, Some(2))
}

/// A tokenizer that does not fit its model is refused by the tokenizer worker as it
/// loads (the supervisor does not parse tokenizer.json: a large one costs hundreds of
/// MB): `serve` exits 1 naming it, and `crossenc config check` exits 2 naming it too.
/// Both say every one of `named`.
fn refused_by_the_tokenizer(model: &Path, named: &[&str]) {
    let served = refused_by(model, Some(1));
    let file = model.join("serve.toml");
    std::fs::write(
        &file,
        format!("[model]\npath = {:?}\n", model.display().to_string()),
    )
    .unwrap();
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    let checked = command
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let check_log = String::from_utf8_lossy(&checked.stderr).into_owned();
    assert_eq!(checked.status.code(), Some(2), "{check_log}");
    for log in [served, check_log] {
        assert!(
            named.iter().all(|n| log.contains(n)),
            "{named:?} in:\n{log}"
        );
    }
}

fn refused_by(model: &Path, code: Option<i32>) -> String {
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    let output = command
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), code, "{stderr}");
    stderr
}

#[test]
fn a_folder_that_cannot_work_is_refused_at_start_naming_the_file_and_field() {
    let other = ModelCopy::of(&fixture("xlm-roberta"));
    other.edit_json("config.json", |c| {
        c["architectures"] = serde_json::json!(["NewForSequenceClassification"]);
    });
    let message = refused_at_start(other.path());
    assert!(
        message.contains("config.json")
            && message.contains("architectures")
            && message.contains("NewForSequenceClassification")
            && message.contains("XLMRobertaForSequenceClassification")
            && message.contains("DebertaV2ForSequenceClassification")
            && message.contains("BertForSequenceClassification"),
        "{message}"
    );

    let three_labels = ModelCopy::of(&fixture("roberta"));
    three_labels.edit_json("config.json", |c| {
        c["id2label"] = serde_json::json!({"0": "a", "1": "b", "2": "c"});
    });
    let message = refused_at_start(three_labels.path());
    assert!(
        message.contains("config.json") && message.contains("num_labels"),
        "{message}"
    );

    let with_biases = ModelCopy::of(&fixture("modernbert"));
    with_biases.edit_json("config.json", |c| {
        c["mlp_bias"] = serde_json::json!(true);
    });
    let message = refused_at_start(with_biases.path());
    assert!(
        message.contains("config.json") && message.contains("mlp_bias"),
        "{message}"
    );

    let with_convolution = ModelCopy::of(&fixture("deberta-v2"));
    with_convolution.edit_json("config.json", |c| {
        c["conv_kernel_size"] = serde_json::json!(3);
    });
    let message = refused_at_start(with_convolution.path());
    assert!(
        message.contains("config.json") && message.contains("conv_kernel_size"),
        "{message}"
    );

    // A tokenizer of another model: one id past the 800-row embedding table.
    let larger_vocabulary = ModelCopy::of(&fixture("xlm-roberta"));
    larger_vocabulary.edit_json("tokenizer.json", |t| {
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": 800, "content": "<extra>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
    });
    refused_by_the_tokenizer(
        larger_vocabulary.path(),
        &["tokenizer.json", "800", "vocab_size"],
    );

    let no_template = ModelCopy::of(&fixture("xlm-roberta"));
    no_template.edit_json("tokenizer.json", |t| {
        t["post_processor"] = serde_json::Value::Null;
    });
    refused_by_the_tokenizer(no_template.path(), &["tokenizer.json", "post_processor"]);

    // BERT's template on a RoBERTa model: one separator between the texts, not two.
    let bert_template = ModelCopy::of(&fixture("xlm-roberta"));
    bert_template.edit_json("tokenizer.json", |t| {
        t["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}
            }
        });
    });
    refused_by_the_tokenizer(bert_template.path(), &["post_processor", "xlm-roberta"]);
}

/// An instruction past max_text_bytes (128 tokens x 32) is refused, naming the field.
async fn instruction_past_max_text_bytes_is_refused(
    client: &mut CrossEncoderClient<tonic::transport::Channel>,
    http_addr: std::net::SocketAddr,
) {
    let long = InferRequest {
        pairs: vec![Pair {
            query: "q".into(),
            document: "d".into(),
        }],
        raw_scores: false,
        instruction: Some("x".repeat(128 * 32 + 1)),
        ..Default::default()
    };
    let refused = client.infer(long).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("instruction") && refused.message().contains("4096"),
        "{refused:?}"
    );
    let body =
        serde_json::json!({"query": "q", "documents": ["d"], "instruction": "x".repeat(5000)});
    let (status, answer) = post_json(http_addr, "/v1/rerank", &body);
    assert_eq!(status, 400, "{answer}");
}
