//! The packed CPU forward pass against candle's padded one, on the real default model
//! (scripts/fetch-model.sh builds it): shapes that break wrong kernels, one pair, one
//! token past a tile edge, 512 tokens, lengths 10x apart in one batch.

use std::path::PathBuf;

use crossenc_model::{CrossEncoder, ModelFolder, PackedPairs, PaddedBatch, PairTokenizer};

fn model() -> (CrossEncoder, PairTokenizer, u32) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let folder = ModelFolder::open(&dir).expect("models/default: run scripts/fetch-model.sh");
    let tokenizer = PairTokenizer::load(&folder, 512).unwrap();
    let model = CrossEncoder::load(&folder, candle_core::Device::Cpu).unwrap();
    let pad = model.config().pad_token_id;
    (model, tokenizer, pad)
}

/// A pair whose document has `words` words (so about that many tokens).
fn pair(words: usize, seed: usize) -> (String, String) {
    let vocabulary = [
        "tide", "moon", "river", "stone", "light", "rust", "bread", "wind", "sea",
    ];
    let document: Vec<&str> = (0..words)
        .map(|i| vocabulary[(i * 7 + seed) % vocabulary.len()])
        .collect();
    (
        format!("what moves the {}", vocabulary[seed % vocabulary.len()]),
        document.join(" "),
    )
}

/// The pairs both ways: padded for candle's pass, packed for the CPU one.
fn batch(
    tokenizer: &PairTokenizer,
    pad: u32,
    pairs: &[(String, String)],
) -> (PaddedBatch, PackedPairs, Vec<usize>) {
    let encoded: Vec<_> = pairs
        .iter()
        .map(|(q, d)| tokenizer.encode(q, d).unwrap())
        .collect();
    let width = encoded.iter().map(|e| e.ids().len()).max().unwrap();
    let mut batch = PaddedBatch::new(width, pairs.len(), pad);
    let mut packed = PackedPairs::with_capacity(pairs.len(), width * pairs.len());
    let mut lengths = Vec::new();
    for e in &encoded {
        let type_ids: Vec<u8> = e.type_ids().iter().map(|&t| t as u8).collect();
        batch.push(e.ids().iter().copied(), &type_ids);
        packed.push(e.ids().iter().copied(), &type_ids);
        lengths.push(e.ids().len());
    }
    (batch, packed, lengths)
}

#[test]
fn packed_scores_match_the_padded_reference_on_odd_shapes() {
    let (model, tokenizer, pad) = model();
    let shapes: Vec<Vec<usize>> = vec![
        vec![3],                              // one short pair
        vec![600],                            // truncated to 512 tokens
        vec![12, 200],                        // lengths 10x apart
        vec![10, 11, 12, 27, 28, 60, 61, 62], // around tile edges
        (0..40).map(|i| 1 + i * 3).collect(), // many pairs, all lengths
    ];
    let mut worst = 0f32;
    for (s, words) in shapes.iter().enumerate() {
        let pairs: Vec<_> = words
            .iter()
            .enumerate()
            .map(|(i, &w)| pair(w, s + i))
            .collect();
        let (batch, pairs_in, lengths) = batch(&tokenizer, pad, &pairs);
        let packed = model.score_pairs(&pairs_in).unwrap();
        let padded = model.score_padded(&batch).unwrap();
        assert_eq!(packed.len(), pairs.len());
        for (i, (a, b)) in packed.iter().zip(&padded).enumerate() {
            let error = (a - b).abs();
            worst = worst.max(error);
            assert!(
                error < 1e-4,
                "shape {s} pair {i} ({} tokens): packed {a} vs padded {b}",
                lengths[i]
            );
        }
        if s == 1 {
            assert_eq!(lengths, [512]);
        }
    }
    eprintln!("largest difference packed vs padded: {worst:e}");
}

#[test]
fn a_pair_scores_the_same_alone_and_in_a_batch() {
    let (model, tokenizer, pad) = model();
    let pairs: Vec<_> = [5, 90, 31]
        .iter()
        .enumerate()
        .map(|(i, &w)| pair(w, i))
        .collect();
    let (_, together, _) = batch(&tokenizer, pad, &pairs);
    let together = model.score_pairs(&together).unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let (_, alone, _) = batch(&tokenizer, pad, std::slice::from_ref(p));
        let alone = model.score_pairs(&alone).unwrap()[0];
        assert!(
            (alone - together[i]).abs() < 1e-5,
            "pair {i}: {alone} alone, {} in a batch",
            together[i]
        );
    }
}

#[test]
fn ids_past_the_tables_are_refused_not_read() {
    let (model, _, _) = model();
    let mut pairs = PackedPairs::with_capacity(1, 3);
    let vocab = model.config().vocab_size as u32;
    pairs.push([101, vocab, 102].into_iter(), &[0, 0, 0]);
    let error = model.score_pairs(&pairs).unwrap_err().to_string();
    assert!(
        error.contains("token id") && error.contains(&vocab.to_string()),
        "{error}"
    );
    let mut pairs = PackedPairs::with_capacity(1, 2);
    pairs.push([101, 102].into_iter(), &[0, 7]);
    let error = model.score_pairs(&pairs).unwrap_err().to_string();
    assert!(error.contains("token type id 7"), "{error}");
}
