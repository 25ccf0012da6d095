//! The last layer's attention for each pair's first token, without the other tokens'
//! keys and values.
//!
//! Where the head reads only the first token, the last layer needs one query a pair.
//! Its scores `q · (x_j Wk + bk)` equal `(Wk q) · x_j` plus `q · bk`, the same for every
//! key and so gone in the softmax; and its context `Σ p_j (x_j Wv + bv)` equals
//! `(Σ p_j x_j) Wv + bv`, the probabilities summing to one. So each head carries its
//! query back through the key projection once (a `hidden`-wide probe), scores the
//! pair's inputs against it, mixes the inputs by those probabilities and projects the
//! mix forward: a pair's cost grows with its length times `hidden`, where projecting
//! every token's key and value costs its length times `hidden²`. Rotary or relative
//! positions change each key by its position, so ModernBERT and DeBERTa keep the
//! projected keys.

use rayon::prelude::*;

use super::{product, softmax_rows, Linear, View};

/// Buffers of [`attend_first`], kept from batch to batch with the pass's others.
#[derive(Default)]
pub(crate) struct FirstTokenScratch {
    /// `[pairs, hidden]`: each first token's query.
    queries: Vec<f32>,
    /// `[pairs, heads, hidden]`: each head's query through its key projection, scaled.
    probes: Vec<f32>,
    /// `[pairs, heads, hidden]`: each head's probability-weighted sum of the pair's inputs.
    mixed: Vec<f32>,
}

/// The context `[pairs, hidden]` of each pair's first token: `x` the layer's input
/// `[tokens, hidden]`, `firsts` its first rows, `qkv` the layer's fused Q|K|V weights,
/// which must be the f32 `[hidden, 3 * hidden]` the products read on `gemm`.
pub(crate) fn attend_first(
    (offsets, x, firsts): (&[usize], &[f32], &[f32]),
    qkv: &Linear,
    heads: usize,
    scratch: &mut FirstTokenScratch,
    context: &mut Vec<f32>,
) {
    let h = qkv.inputs;
    let (pairs, d) = (offsets.len() - 1, h / heads);
    assert_eq!(
        qkv.weight.len(),
        h * 3 * h,
        "the Q|K|V weights are not on gemm"
    );
    // Column block `part` (0 Q, 1 K, 2 V) of the weights, `width` columns from `from`.
    let weights = |part: usize, from: usize, width: usize| {
        View::columns(&qkv.weight, h, (part * h + from, width), 3 * h)
    };
    let FirstTokenScratch {
        queries,
        probes,
        mixed,
    } = scratch;
    queries.clear();
    for _ in 0..pairs {
        queries.extend_from_slice(&qkv.bias[..h]);
    }
    let firsts = View::rows(firsts, pairs, h);
    product(queries, h, true, (firsts, weights(0, 0, h)), 1.0, 1);

    let scale = 1.0 / (d as f32).sqrt();
    probes.clear();
    probes.resize(pairs * heads * h, 0.0);
    for head in 0..heads {
        let query = View::columns(queries, pairs, (head * d, d), h);
        let keys = weights(1, head * d, d).transposed();
        product(
            &mut probes[head * h..],
            heads * h,
            false,
            (query, keys),
            scale,
            1,
        );
    }

    mixed.clear();
    mixed.resize(pairs * heads * h, 0.0);
    mixed
        .par_chunks_mut(heads * h)
        .zip(probes.par_chunks(heads * h))
        .zip(offsets.par_windows(2))
        .for_each(|((mixed, probes), pair)| {
            let len = pair[1] - pair[0];
            let inputs = View::rows(&x[pair[0] * h..pair[1] * h], len, h);
            let mut scores = vec![0.0f32; heads * len];
            let probes = View::rows(probes, heads, h);
            product(
                &mut scores,
                len,
                false,
                (probes, inputs.transposed()),
                1.0,
                1,
            );
            softmax_rows(&mut scores, &len);
            let probabilities = View::rows(&scores, heads, len);
            product(mixed, h, false, (probabilities, inputs), 1.0, 1);
        });

    context.clear();
    for _ in 0..pairs {
        context.extend_from_slice(&qkv.bias[2 * h..3 * h]);
    }
    for head in 0..heads {
        let mix = View::columns(mixed, pairs, (head * h, h), heads * h);
        let values = weights(2, head * d, d);
        product(&mut context[head * d..], h, true, (mix, values), 1.0, 1);
    }
}
