//! A decoder's forward pass on packed tokens (Qwen3): pre-norm layers with RMS norms,
//! grouped-query attention whose queries and keys are normed per head and rotated,
//! causal within each pair, a SwiGLU feed-forward, a final norm, and a head on each
//! pair's last token. Each pair is its own causal segment: no padding is computed, and
//! no pair sees another. The last layer computes only the last tokens' rows past its
//! keys and values: the head reads nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    attend_causal, first_layer, gate, last_rows, pool, prepare_layers, AttentionShape,
    FourProducts, Kernels, Linear, PackedPass, PackedTokens, Part, Past, Pooling, PreNormScratch,
    PrefixCache, PrefixKv, PrefixStats, ProductScratch, Queries, RmsNorm, Rotary,
};
use crate::{HiddenAct, ModelError};

/// The sizes the pass needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecoderShape {
    pub hidden: usize,
    pub attention: AttentionShape,
    pub intermediate: usize,
    /// The gate's activation.
    pub activation: HiddenAct,
}

pub(crate) struct DecoderLayer {
    pub input_norm: RmsNorm,
    /// Q, K and V in one product: `[hidden, (heads + 2 kv_heads) x head_dim]`.
    pub qkv: Linear,
    /// Qwen3's norms of each query and key head, before the rotation.
    pub query_norm: Option<RmsNorm>,
    pub key_norm: Option<RmsNorm>,
    pub attention_out: Linear,
    pub mlp_norm: RmsNorm,
    /// `[hidden, 2 x intermediate]`: the gate, then the up projection.
    pub gate_up: Linear,
    pub down: Linear,
}

pub(crate) struct DecoderPass {
    pub words: Vec<f32>,
    /// What multiplies each embedding (Gemma's √hidden; 1 elsewhere).
    pub embedding_scale: f32,
    pub layers: Vec<DecoderLayer>,
    pub final_norm: RmsNorm,
    /// On each pair's last token: the answer tokens' rows of the output projection, or
    /// a sequence classifier's score.
    pub head: Linear,
    pub rotary: Rotary,
    pub shape: DecoderShape,
    /// The activations' buffers, kept from batch to batch as the encoders' are.
    pub scratch: Mutex<PreNormScratch>,
    /// Prompt prefixes' keys and values, kept across batches.
    pub prefixes: Mutex<PrefixCache>,
}

impl FourProducts for DecoderLayer {
    fn products(&self) -> [&Linear; 4] {
        [&self.qkv, &self.attention_out, &self.gate_up, &self.down]
    }

    fn products_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.attention_out,
            &mut self.gate_up,
            &mut self.down,
        ]
    }
}

impl PackedPass for DecoderPass {
    fn prepare_products(&mut self, kernels: Kernels) -> Result<(), crossenc_onednn::OnednnError> {
        prepare_layers(&mut self.layers, kernels)
    }

    fn timed_layer(&self) -> Vec<&Linear> {
        first_layer(&self.layers)
    }

    fn set_prefix_cache(&self, bytes: usize) {
        let mut cache = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        cache.set_limit(bytes);
    }

    fn prefix_stats(&self) -> Option<PrefixStats> {
        let cache = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        Some(cache.stats)
    }

    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError> {
        // One batch at a time per worker: the lock is never contended there.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *scratch;
        s.products.threads = threads;
        if batch.shared.iter().all(|&n| n == 0) {
            let whole = Segments {
                ids: batch.ids,
                offsets: batch.offsets,
                starts: &[],
                past: &[],
            };
            return self.run(&whole, s);
        }
        let prefixes = self.prefixes_of(batch, s)?;
        // Each pair's own tokens, after its prefix.
        let pairs = batch.offsets.len() - 1;
        let (mut ids, mut offsets) = (Vec::with_capacity(batch.ids.len()), vec![0]);
        for (pair, w) in batch.offsets.windows(2).enumerate() {
            ids.extend_from_slice(&batch.ids[w[0] + batch.shared[pair]..w[1]]);
            offsets.push(ids.len());
        }
        let past: Vec<Option<&PrefixKv>> = (0..pairs).map(|p| prefixes[p].as_deref()).collect();
        let rest = Segments {
            ids: &ids,
            offsets: &offsets,
            starts: batch.shared,
            past: &past,
        };
        self.run(&rest, s)
    }
}

/// Pairs as a layer reads them: their tokens end to end, and for each pair the position
/// of its first token and the prefix it continues (empty slices: none).
struct Segments<'a> {
    ids: &'a [u32],
    offsets: &'a [usize],
    starts: &'a [usize],
    past: &'a [Option<&'a PrefixKv>],
}

impl DecoderPass {
    /// The head's logits for each pair, through every layer.
    fn run(&self, pairs: &Segments<'_>, s: &mut PreNormScratch) -> Result<Vec<f32>, ModelError> {
        let h = self.shape.hidden;
        let count = pairs.offsets.len() - 1;
        self.embed(pairs.ids, s);
        let last = self.layers.len().saturating_sub(1);
        for (l, layer) in self.layers.iter().enumerate() {
            let queries = match l == last {
                true => Queries::Last,
                false => Queries::All,
            };
            self.layer((l, layer), pairs, queries, s, None)?;
        }
        if self.layers.is_empty() {
            s.x = pool(pairs.offsets, &s.x, h, Pooling::Last);
        }
        let x = &mut s.x[..count * h];
        self.final_norm.apply(x);
        let mut logits = Vec::new();
        let mut one_thread = ProductScratch::new(1);
        self.head
            .forward(x, count, None, &mut logits, &mut one_thread)?;
        Ok(logits)
    }

    fn embed(&self, ids: &[u32], s: &mut PreNormScratch) {
        let h = self.shape.hidden;
        s.x.clear();
        for &id in ids {
            s.x.extend_from_slice(&self.words[id as usize * h..][..h]);
        }
        if self.embedding_scale != 1.0 {
            s.x.iter_mut().for_each(|x| *x *= self.embedding_scale);
        }
    }

    /// Each pair's prefix's keys and values: from the cache, or computed here once for
    /// every pair of the batch that shares it (and kept, where the cache has room).
    fn prefixes_of(
        &self,
        batch: &PackedTokens<'_>,
        s: &mut PreNormScratch,
    ) -> Result<Vec<Option<Arc<PrefixKv>>>, ModelError> {
        let mut distinct: HashMap<&[u32], usize> = HashMap::new();
        let mut keys: Vec<&[u32]> = Vec::new();
        let mut of_pair = Vec::with_capacity(batch.shared.len());
        for (pair, &shared) in batch.shared.iter().enumerate() {
            let start = batch.offsets[pair];
            let key = &batch.ids[start..start + shared];
            of_pair.push((shared > 0).then(|| {
                *distinct.entry(key).or_insert_with(|| {
                    keys.push(key);
                    keys.len() - 1
                })
            }));
        }
        let mut cache = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Option<Arc<PrefixKv>>> = keys.iter().map(|k| cache.get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&k| found[k].is_none()).collect();
        let missing_ids: Vec<&[u32]> = missing.iter().map(|&k| keys[k]).collect();
        let computed = self.prefix_pass(&missing_ids, s)?;
        for (&k, kv) in missing.iter().zip(computed) {
            let kv = Arc::new(kv);
            cache.insert(keys[k].to_vec(), Arc::clone(&kv));
            found[k] = Some(kv);
        }
        let stats = &mut cache.stats;
        let sharing = of_pair.iter().flatten().count() as u64;
        stats.misses += missing.len() as u64;
        stats.hits += sharing - missing.len() as u64;
        stats.tokens_saved += batch.shared.iter().map(|&n| n as u64).sum::<u64>()
            - missing_ids.iter().map(|k| k.len() as u64).sum::<u64>();
        Ok(of_pair
            .into_iter()
            .map(|k| k.and_then(|k| found[k].clone()))
            .collect())
    }

    /// The keys and values of each prefix at every layer: the layers run over the
    /// prefixes as pairs of their own, and the last stops once its keys and values are
    /// known (nothing reads its output).
    fn prefix_pass(
        &self,
        prefixes: &[&[u32]],
        s: &mut PreNormScratch,
    ) -> Result<Vec<PrefixKv>, ModelError> {
        if prefixes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u32> = prefixes.concat();
        let mut offsets = vec![0];
        offsets.extend(prefixes.iter().scan(0, |end, p| {
            *end += p.len();
            Some(*end)
        }));
        let mut kvs: Vec<PrefixKv> = prefixes
            .iter()
            .map(|p| PrefixKv {
                tokens: p.len(),
                layers: Vec::with_capacity(self.layers.len()),
            })
            .collect();
        let segments = Segments {
            ids: &ids,
            offsets: &offsets,
            starts: &[],
            past: &[],
        };
        self.embed(&ids, s);
        for (l, layer) in self.layers.iter().enumerate() {
            self.layer((l, layer), &segments, Queries::All, s, Some(&mut kvs))?;
        }
        Ok(kvs)
    }

    /// One layer over the batch in `s.x`: its output replaces `s.x`, a row for each of
    /// the `queries` (every token, or each pair's last). With `keep`, each pair's keys
    /// and values are kept there, and the last layer stops once it has them.
    fn layer(
        &self,
        (l, layer): (usize, &DecoderLayer),
        pairs: &Segments<'_>,
        queries: Queries,
        s: &mut PreNormScratch,
        keep: Option<&mut Vec<PrefixKv>>,
    ) -> Result<(), ModelError> {
        let (h, shape) = (self.shape.hidden, self.shape.attention);
        let tokens = pairs.ids.len();
        let count = pairs.offsets.len() - 1;
        let p = &mut s.products;
        s.normed.clone_from(&s.x);
        layer.input_norm.apply(&mut s.normed);
        layer.qkv.forward(&s.normed, tokens, None, &mut s.qkv, p)?;
        let norm_head = |head: &mut [f32], part: Part| {
            let norm = match part {
                Part::Query => &layer.query_norm,
                Part::Key => &layer.key_norm,
            };
            if let Some(norm) = norm {
                norm.apply_here(head);
            }
        };
        (self.rotary).rotate_queries_and_keys(
            (pairs.offsets, pairs.starts),
            &mut s.qkv,
            shape,
            norm_head,
        );
        if let Some(kvs) = keep {
            keep_keys_and_values(&s.qkv, pairs.offsets, shape, kvs);
            if l + 1 == self.layers.len() {
                return Ok(());
            }
        }
        let past: Vec<Past<'_>> = (pairs.past.iter())
            .map(|kv| kv.map(|kv| kv.layers[l].as_slice()))
            .collect();
        attend_causal(
            pairs.offsets,
            &s.qkv,
            (shape, queries),
            &past,
            &mut s.context,
        );
        let residual = match queries {
            Queries::Last => last_rows(pairs.offsets, &s.x, h, &mut s.rows),
            _ => &s.x,
        };
        let rows = queries.rows(tokens, count);
        layer
            .attention_out
            .forward(&s.context, rows, Some(residual), &mut s.attended, p)?;
        s.normed.clone_from(&s.attended);
        layer.mlp_norm.apply(&mut s.normed);
        layer
            .gate_up
            .forward(&s.normed, rows, None, &mut s.inner, p)?;
        gate(
            &s.inner,
            self.shape.intermediate,
            self.shape.activation,
            &mut s.gated,
        );
        layer
            .down
            .forward(&s.gated, rows, Some(&s.attended), &mut s.x, p)?;
        Ok(())
    }
}

/// Appends each pair's K | V columns of the fused rows to its prefix's layers.
fn keep_keys_and_values(
    qkv: &[f32],
    offsets: &[usize],
    shape: AttentionShape,
    kvs: &mut [PrefixKv],
) {
    let width = shape.row_width();
    let from = shape.heads * shape.head_dim;
    for (kv, w) in kvs.iter_mut().zip(offsets.windows(2)) {
        let mut rows = Vec::with_capacity((w[1] - w[0]) * (width - from));
        for row in qkv[w[0] * width..w[1] * width].chunks_exact(width) {
            rows.extend_from_slice(&row[from..]);
        }
        kv.layers.push(rows);
    }
}
