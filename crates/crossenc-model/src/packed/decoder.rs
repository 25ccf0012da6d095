//! A decoder's forward pass on packed tokens (Qwen3): pre-norm layers with RMS norms,
//! grouped-query attention whose queries and keys are normed per head and rotated,
//! causal within each pair, a SwiGLU feed-forward, a final norm, and a head on each
//! pair's last token. Each pair is its own causal segment: no padding is computed, and
//! no pair sees another. The last layer computes only the last tokens' rows past its
//! keys and values: the head reads nothing else.

use super::{
    attend_causal, first_layer, gate, last_rows, pool, prepare_layers, AttentionShape,
    FourProducts, Kernels, Linear, PackedPass, PackedTokens, Part, Pooling, PreNormScratch,
    ProductScratch, Queries, RmsNorm, Rotary,
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
    pub scratch: std::sync::Mutex<PreNormScratch>,
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

    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError> {
        let h = self.shape.hidden;
        let pairs = batch.offsets.len() - 1;
        // One batch at a time per worker: the lock is never contended there.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *scratch;
        s.products.threads = threads;
        s.x.clear();
        for &id in batch.ids {
            s.x.extend_from_slice(&self.words[id as usize * h..][..h]);
        }
        if self.embedding_scale != 1.0 {
            s.x.iter_mut().for_each(|x| *x *= self.embedding_scale);
        }
        let last = self.layers.len().saturating_sub(1);
        for (l, layer) in self.layers.iter().enumerate() {
            let queries = match l == last {
                true => Queries::Last,
                false => Queries::All,
            };
            self.layer(layer, batch, queries, s)?;
        }
        if self.layers.is_empty() {
            s.x = pool(batch.offsets, &s.x, h, Pooling::Last);
        }
        let x = &mut s.x[..pairs * h];
        self.final_norm.apply(x);
        let mut logits = Vec::new();
        let mut one_thread = ProductScratch::new(1);
        self.head
            .forward(x, pairs, None, &mut logits, &mut one_thread)?;
        Ok(logits)
    }
}

impl DecoderPass {
    /// One layer over the batch in `s.x`: its output replaces `s.x`, a row for each of
    /// the `queries` (every token, or each pair's last).
    fn layer(
        &self,
        layer: &DecoderLayer,
        batch: &PackedTokens<'_>,
        queries: Queries,
        s: &mut PreNormScratch,
    ) -> Result<(), ModelError> {
        let (h, shape) = (self.shape.hidden, self.shape.attention);
        let tokens = batch.ids.len();
        let pairs = batch.offsets.len() - 1;
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
        self.rotary
            .rotate_queries_and_keys(batch.offsets, &mut s.qkv, shape, norm_head);
        attend_causal(batch.offsets, &s.qkv, (shape, queries), &mut s.context);
        let residual = match queries {
            Queries::Last => last_rows(batch.offsets, &s.x, h, &mut s.rows),
            _ => &s.x,
        };
        let rows = queries.rows(tokens, pairs);
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
