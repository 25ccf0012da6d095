//! The Qwen3 decoder reranker on the small checkpoints of tests/fixtures/models
//! (scripts/make_qwen3_fixtures.py): the causal LM (bf16 on disk, sharded, tied
//! embeddings, transformers 5's config) scored by its yes/no logits, and the converted
//! sequence classifier (f32, transformers 4's config) by its one label, both against
//! transformers' fp32 goldens computed as the model card computes them; prompts
//! tokenized as the card does; and what cannot work refused by name.

mod support;

use std::path::Path;

use crossenc_model::{
    CrossEncoder, Kernels, ModelError, ModelFolder, PackedPairs, PaddedBatch, PairTokenizer,
};
use support::{fixture, goldens, ModelCopy};

const TEMPLATE: &str = "qwen3-reranker";

fn open(name: &str) -> ModelFolder {
    ModelFolder::open_with(fixture(name), Some(template_of(name))).unwrap()
}

/// The built-in template each fixture was scored with.
fn template_of(name: &str) -> &str {
    match name {
        "mxbai-rerank-v2" | "bge-reranker-gemma" => name,
        _ => TEMPLATE,
    }
}

/// Every golden's ids as the model card's tokenization gives them, then its raw score
/// by the packed pass (both f32 kernels) and candle's padded pass, within 1e-4 of
/// transformers; the raw scores, for comparing the two forms.
fn scores_match_transformers(name: &str) -> Vec<f32> {
    let folder = open(name);
    let max_length = folder.max_length(Some(128)).unwrap();
    let tokenizer = PairTokenizer::load(&folder, max_length).unwrap();
    let rows = goldens(name);
    let mut packed = PackedPairs::with_capacity(rows.len(), rows.len() * 128);
    let mut padded = PaddedBatch::new(128, rows.len(), folder.config.pad_token_id);
    for g in &rows {
        let e = tokenizer
            .encode_instructed(&g.query, &g.document, g.instruction.as_deref())
            .unwrap();
        assert_eq!(e.ids(), g.ids, "{name}: ids of {:?}", g.query);
        assert_eq!(e.ids().len(), g.tokens);
        if let Some(shared) = g.shared {
            assert_eq!(e.shared(), shared, "{name}: tokens before the document");
        }
        let types = vec![0u8; e.ids().len()];
        packed.push(e.ids().iter().copied(), &types);
        padded.push(e.ids().iter().copied(), &types);
    }
    assert!(rows.iter().any(|g| g.tokens == 128), "no pair at the limit");
    assert!(rows.iter().any(|g| g.instruction.is_some()));
    let mut last = Vec::new();
    for kernels in [Kernels::Gemm, Kernels::OnednnF32] {
        let model = CrossEncoder::load_on(&folder, kernels).unwrap();
        let from_packed = model.score_pairs(&packed).unwrap();
        let from_padded = model.score_padded(&padded).unwrap();
        let mut worst = 0f32;
        for ((g, a), b) in rows.iter().zip(&from_packed).zip(&from_padded) {
            let expected = model.config().raw_score(&g.logits);
            worst = worst.max((a - expected).abs()).max((b - expected).abs());
            assert!(
                (a - expected).abs() < 1e-4 && (b - expected).abs() < 1e-4,
                "{name} on {kernels:?}: packed {a}, padded {b}, transformers {expected}"
            );
        }
        eprintln!("{name} on {kernels:?}: largest error {worst:e}");
        last = from_packed;
    }
    last
}

#[test]
fn qwen3_causal_lm_scores_by_its_answer_tokens_as_transformers_does() {
    let folder = open("qwen3-reranker");
    assert_eq!(folder.config.labels, ["no", "yes"]);
    assert!(folder.config.answer_ids.is_some());
    assert!(folder.weight_files().len() > 1, "the fixture is sharded");
    scores_match_transformers("qwen3-reranker");
}

/// mixedbread's mxbai-rerank-v2 (Qwen2: biases on Q, K and V, no head norms), scored
/// as its package scores: "1" less "0"; its prompt tokenized piece by piece, which for
/// most goldens gives other ids than the prompt as one text.
#[test]
fn qwen2_mxbai_rerank_v2_scores_as_mixedbreads_package_does() {
    let folder = open("mxbai-rerank-v2");
    assert_eq!(folder.config.architecture, "qwen2");
    assert_eq!(folder.config.labels, ["0", "1"]);
    let rows = goldens("mxbai-rerank-v2");
    assert!(rows.iter().any(|g| g.whole_differs));
    assert!(rows.iter().all(|g| g.shared.is_some()));
    scores_match_transformers("mxbai-rerank-v2");
}

/// BAAI's bge-reranker-v2-gemma (Gemma: norms by 1 + weight, embeddings by √hidden,
/// the tanh GELU, head_dim apart from hidden / heads), scored as FlagEmbedding scores:
/// the logit of "Yes" alone.
#[test]
fn gemma_bge_reranker_scores_as_flag_embedding_does() {
    let folder = open("bge-reranker-gemma");
    assert_eq!(folder.config.architecture, "gemma");
    assert_eq!(folder.config.labels, ["Yes"]);
    assert_eq!(folder.config.answer_ids.as_ref().map(Vec::len), Some(1));
    assert!(goldens("bge-reranker-gemma")
        .iter()
        .any(|g| g.whole_differs));
    scores_match_transformers("bge-reranker-gemma");
}

#[test]
fn qwen3_sequence_classifier_matches_transformers_and_the_causal_form() {
    let folder = open("qwen3-reranker-seq-cls");
    assert_eq!(folder.config.num_labels(), 1);
    assert_eq!(folder.config.answer_ids, None);
    let classifier = scores_match_transformers("qwen3-reranker-seq-cls");
    let causal = scores_match_transformers("qwen3-reranker");
    for (a, b) in classifier.iter().zip(&causal) {
        assert!((a - b).abs() < 1e-5, "classifier {a}, causal yes - no {b}");
    }
}

/// Scores of pairs batched together are those of each pair alone: no pair attends to
/// another, and each is causal on its own.
#[test]
fn a_pair_scores_the_same_alone_and_in_a_batch() {
    let folder = open("qwen3-reranker");
    let tokenizer = PairTokenizer::load(&folder, 128).unwrap();
    let model = CrossEncoder::load_on(&folder, Kernels::Gemm).unwrap();
    let rows = goldens("qwen3-reranker");
    let encoded: Vec<_> = rows
        .iter()
        .take(6)
        .map(|g| tokenizer.encode(&g.query, &g.document).unwrap())
        .collect();
    let pack = |pairs: &[&crossenc_model::EncodedPair]| {
        let mut packed = PackedPairs::with_capacity(pairs.len(), 128 * pairs.len());
        for e in pairs {
            packed.push(e.ids().iter().copied(), &vec![0; e.ids().len()]);
        }
        packed
    };
    let all: Vec<_> = encoded.iter().collect();
    let together = model.score_pairs(&pack(&all)).unwrap();
    for (e, score) in encoded.iter().zip(&together) {
        let alone = model.score_pairs(&pack(&[e])).unwrap()[0];
        assert!(
            (alone - score).abs() < 1e-5,
            "{alone} alone, {score} batched"
        );
    }
}

/// The prefix and suffix are never cut: the body is cut from its end, the document
/// first, then the query.
#[test]
fn truncation_cuts_the_body_from_its_end_and_keeps_the_prompt_whole() {
    let folder = open("qwen3-reranker");
    let tokenizer = PairTokenizer::load(&folder, 96).unwrap();
    let whole = PairTokenizer::load(&folder, 4096).unwrap();
    let long = "relevant words ".repeat(200);
    let cut = tokenizer.encode("a short query", &long).unwrap();
    let full = whole.encode("a short query", &long).unwrap();
    assert_eq!(cut.ids().len(), 96);
    // The suffix: what two pairs with nothing in common end with.
    let (a, b) = (
        whole.encode("q", "x").unwrap(),
        whole.encode("q", "y").unwrap(),
    );
    let tail = a
        .ids()
        .iter()
        .rev()
        .zip(b.ids().iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(tail > 3, "a suffix of {tail} tokens");
    // The cut pair is the whole one with its body's end taken out, before the suffix.
    assert_eq!(
        cut.ids()[96 - tail..],
        full.ids()[full.ids().len() - tail..]
    );
    assert_eq!(cut.ids()[..96 - tail], full.ids()[..96 - tail]);
    // A query longer than the budget: the document is gone, the query cut.
    let query_cut = tokenizer.encode(&long, "the document").unwrap();
    assert_eq!(query_cut.ids().len(), 96);
}

#[test]
fn an_instruction_changes_the_prompt_and_an_encoder_takes_none() {
    let folder = open("qwen3-reranker");
    let tokenizer = PairTokenizer::load(&folder, 128).unwrap();
    assert!(tokenizer.takes_instruction());
    let default = tokenizer.encode("q", "d").unwrap();
    let given = tokenizer
        .encode_instructed("q", "d", Some("Judge code"))
        .unwrap();
    assert_ne!(default.ids(), given.ids());
    let encoder = ModelFolder::open(fixture("bert-two-labels")).unwrap();
    let encoder = PairTokenizer::load(&encoder, 128).unwrap();
    assert!(!encoder.takes_instruction());
    let refused = encoder
        .encode_instructed("q", "d", Some("x"))
        .err()
        .unwrap();
    assert!(refused.to_string().contains("no instruction"), "{refused}");
}

fn template_file(dir: &Path, text: &str, extension: &str) -> String {
    let path = dir.join(format!("template.{extension}"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn folders_and_templates_that_cannot_work_are_refused_by_name() {
    let message = |e: ModelError| e.to_string();
    // A decoder without a template names the flag and the built-ins.
    let refused = message(ModelFolder::open(fixture("qwen3-reranker")).unwrap_err());
    assert!(
        refused.contains("--template") && refused.contains(TEMPLATE),
        "{refused}"
    );
    // An encoder with one.
    let refused = ModelFolder::open_with(fixture("bert-two-labels"), Some(TEMPLATE));
    assert!(message(refused.unwrap_err()).contains("encoder"));
    // A shard missing names the shard and a tensor it holds.
    let dir = ModelCopy::of(&fixture("qwen3-reranker"));
    dir.remove("model-00002-of-00003.safetensors");
    let refused = message(ModelFolder::open_with(dir.path(), Some(TEMPLATE)).unwrap_err());
    assert!(
        refused.contains("model-00002-of-00003.safetensors") && refused.contains("tensor model."),
        "{refused}"
    );
    // A tensor the model needs that the index does not name.
    let dir = ModelCopy::of(&fixture("qwen3-reranker"));
    dir.edit_json("model.safetensors.index.json", |json| {
        let map = json["weight_map"].as_object_mut().unwrap();
        map.remove("model.norm.weight")
            .expect("model.norm.weight in the index");
    });
    let folder = ModelFolder::open_with(dir.path(), Some(TEMPLATE)).unwrap();
    let refused = message(CrossEncoder::load_on(&folder, Kernels::Gemm).err().unwrap());
    assert!(
        refused.contains("model.norm.weight") && refused.contains("index.json"),
        "{refused}"
    );
    // A template file whose format misses a placeholder; an unknown built-in.
    let dir = ModelCopy::of(&fixture("qwen3-reranker"));
    let missing = template_file(dir.path(), "format = \"Q: {query}\"\n", "toml");
    let refused = message(ModelFolder::open_with(dir.path(), Some(&missing)).unwrap_err());
    assert!(
        refused.contains("{document}") && refused.contains(&missing),
        "{refused}"
    );
    let refused = message(ModelFolder::open_with(dir.path(), Some("qwen9")).unwrap_err());
    assert!(refused.contains("qwen3-reranker"), "{refused}");
    // An answer token the tokenizer splits into several pieces.
    let split = template_file(
        dir.path(),
        r#"{"format": "{query} | {document}", "answers": {"no": "no", "yes": "absolutely yes"}}"#,
        "json",
    );
    let refused = message(ModelFolder::open_with(dir.path(), Some(&split)).unwrap_err());
    assert!(
        refused.contains("\"absolutely yes\"") && refused.contains("one token"),
        "{refused}"
    );
    // Scaled rotary positions.
    let dir = ModelCopy::of(&fixture("qwen3-reranker"));
    dir.edit_json("config.json", |json| {
        json["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    });
    let refused = message(ModelFolder::open_with(dir.path(), Some(TEMPLATE)).unwrap_err());
    assert!(
        refused.contains("rope_scaling") && refused.contains("yarn"),
        "{refused}"
    );
}

/// A fine-tune's own prompt from a file: the same model read through a template file
/// that spells out the built-in one gives the same ids.
#[test]
fn a_template_file_spelling_the_built_in_prompt_gives_its_ids() {
    let dir = ModelCopy::of(&fixture("qwen3-reranker"));
    let spelled = template_file(
        dir.path(),
        r#"prefix = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
format = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
default_instruction = "Given a web search query, retrieve relevant passages that answer the query"
answers = { no = "no", yes = "yes" }
"#,
        "toml",
    );
    let from_file = ModelFolder::open_with(dir.path(), Some(&spelled)).unwrap();
    let built_in = open("qwen3-reranker");
    assert_eq!(from_file.config.answer_ids, built_in.config.answer_ids);
    let a = PairTokenizer::load(&from_file, 128).unwrap();
    let b = PairTokenizer::load(&built_in, 128).unwrap();
    for g in goldens("qwen3-reranker").iter().take(5) {
        let (x, y) = (
            a.encode(&g.query, &g.document).unwrap(),
            b.encode(&g.query, &g.document).unwrap(),
        );
        assert_eq!(x.ids(), y.ids());
    }
}

/// The prompt before the document computed once per distinct prefix (and kept across
/// batches) scores every pair as the pass without sharing does, within 1e-5, for each
/// decoder family; a second identical batch finds every prefix in the cache, and a
/// cache of 0 bytes keeps none.
#[test]
fn a_shared_prefix_scores_as_the_whole_prompt_and_a_repeat_is_served_from_the_cache() {
    for name in ["qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"] {
        let folder = open(name);
        let tokenizer = PairTokenizer::load(&folder, 128).unwrap();
        let rows = goldens(name);
        let (mut plain, mut sharing) = (PackedPairs::default(), PackedPairs::default());
        let mut queries = std::collections::HashSet::new();
        for g in &rows {
            let e = tokenizer
                .encode_instructed(&g.query, &g.document, g.instruction.as_deref())
                .unwrap();
            let types = vec![0u8; e.ids().len()];
            plain.push(e.ids().iter().copied(), &types);
            sharing.push_shared(e.ids().iter().copied(), &types, e.shared());
            queries.insert((&g.query, &g.instruction));
        }
        for kernels in [Kernels::Gemm, Kernels::OnednnF32] {
            let model = CrossEncoder::load_on(&folder, kernels).unwrap();
            model.set_prefix_cache_bytes(64 << 20);
            let whole = model.score_pairs(&plain).unwrap();
            assert_eq!(model.prefix_stats().unwrap().misses, 0, "nothing shared");
            let shared = model.score_pairs(&sharing).unwrap();
            let worst = whole
                .iter()
                .zip(&shared)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("{name} on {kernels:?}: sharing moves scores by at most {worst:e}");
            assert!(worst < 1e-5, "{name} on {kernels:?}: {worst}");
            let first = model.prefix_stats().unwrap();
            assert!(
                first.misses >= 2 && first.misses <= queries.len() as u64,
                "{first:?}"
            );
            assert_eq!(first.hits + first.misses, rows.len() as u64);
            assert!(first.bytes > 0 && first.tokens_saved > 0);
            let again = model.score_pairs(&sharing).unwrap();
            assert_eq!(again, shared, "{name}: from the cache");
            let second = model.prefix_stats().unwrap();
            assert_eq!(second.misses, first.misses, "every prefix was in the cache");
            assert_eq!(second.hits, first.hits + rows.len() as u64);
            model.set_prefix_cache_bytes(0);
            assert_eq!(model.prefix_stats().unwrap().bytes, 0);
            model.score_pairs(&sharing).unwrap();
            let third = model.prefix_stats().unwrap();
            assert_eq!(
                third.misses,
                2 * first.misses,
                "a batch still shares, keeps none"
            );
            assert_eq!(third.bytes, 0);
        }
    }
}
