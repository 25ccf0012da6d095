//! The CPU forward pass on packed tokens: no FLOPs on padding.
//!
//! A batch's pairs are laid end to end, `[total_tokens, hidden]`. Every dense layer
//! (QKV, attention output, FFN: nearly all the FLOPs) is one matrix product over all
//! tokens of the batch; only attention looks at each pair on its own, per head. Weights
//! are transposed once at load into the `[inputs, outputs]` layout the products read;
//! bias and residual are written into the output before the product accumulates onto
//! them, GELU runs in place, layer norm in place. The encoder's products run on the
//! kernels timed fastest at load ([`kernels`]): the `gemm` crate (candle's own CPU
//! matmul) across the worker's rayon threads, or oneDNN (`crossenc-onednn`) in f32, or
//! with bf16 asked for, oneDNN on inputs rounded to bf16 and accumulating in f32; all
//! between the products stays f32. The head reads only each pair's first token, so the
//! last layer runs for those tokens alone ([`Queries::First`], [`first_token`]).

mod attention;
mod decoder;
mod elementwise;
mod first_token;
mod gated;
mod kernels;
mod linear;
mod modernbert;
mod pooling;
mod prefix;
mod rotary;

pub(crate) use attention::{
    attend, attend_causal, attend_relative, AttentionShape, Past, Queries, RelativeAttention,
};
pub(crate) use decoder::{DecoderLayer, DecoderPass, DecoderShape};
pub(crate) use elementwise::{activate, activate_slice, softmax_rows};
use first_token::{attend_first, FirstTokenScratch};
pub(crate) use gated::gate;
pub(crate) use kernels::{fastest, measure, timed_rows};
pub use kernels::{KernelChoice, KernelRate, Kernels};
use linear::{product, product_into, View};
pub(crate) use linear::{Linear, ProductScratch};
pub(crate) use modernbert::{ModernBertEncoder, ModernBertLayer, ModernBertShape};
pub(crate) use pooling::{first_rows, last_rows, pool, Pooling};
pub use prefix::PrefixStats;
pub(crate) use prefix::{PrefixCache, PrefixKv};
pub(crate) use rotary::{Part, Rotary};

use crossenc_onednn::OnednnError;

use crate::arch::HeadActivation;
use crate::{HiddenAct, ModelConfig, ModelError};

pub(crate) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

/// RMS norm: no mean taken off, no beta (Qwen's, Llama's).
pub(crate) struct RmsNorm {
    pub gamma: Vec<f32>,
    pub eps: f32,
}

pub(crate) struct PackedLayer {
    /// Q, K and V in one product: `[hidden, 3 * hidden]`.
    pub qkv: Linear,
    pub attention_out: Linear,
    pub attention_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: Norm,
}

/// Everything the packed forward pass reads, prepared at load.
pub(crate) struct PackedEncoder {
    pub words: Vec<f32>,
    /// Absent where positions are only relative (DeBERTa).
    pub positions: Option<Vec<f32>>,
    pub token_types: Vec<f32>,
    pub embedding_norm: Norm,
    pub layers: Vec<PackedLayer>,
    /// The head on each pair's first token: dense, tanh, then the labels' layer.
    pub head_dense: Linear,
    pub head_out: Linear,
    pub config: ModelConfig,
    /// DeBERTa's disentangled attention, where the architecture has it.
    pub relative: Option<RelativeAttention>,
    /// The activations' buffers, kept from batch to batch: allocated anew, each batch's
    /// tens of MB would be faulted in page by page again.
    pub scratch: std::sync::Mutex<Scratch>,
}

/// A packed forward pass over a batch's pairs, as an architecture prepares it at load.
pub(crate) trait PackedPass: Send + Sync {
    /// The logits of every label, pair after pair.
    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError>;

    /// Moves the encoder's products to `kernels` (the head, one row per pair, keeps
    /// `gemm`).
    fn prepare_products(&mut self, kernels: Kernels) -> Result<(), OnednnError>;

    /// One encoder layer's dense layers, in the order they run: what the candidate
    /// kernels are timed on.
    fn timed_layer(&self) -> Vec<&Linear>;

    /// Bounds the bytes of prompt prefixes kept across batches (a decoder's; 0 keeps
    /// none). Batches share their pairs' prefixes whatever the bound.
    fn set_prefix_cache(&self, _bytes: usize) {}

    /// What sharing prefixes did, for a pass that shares them.
    fn prefix_stats(&self) -> Option<PrefixStats> {
        None
    }
}

/// Scratch buffers of a pre-norm pass (ModernBERT's, a decoder's), reused from layer to
/// layer and batch to batch.
#[derive(Default)]
pub(crate) struct PreNormScratch {
    pub x: Vec<f32>,
    /// Each pair's first or last row of `x`: the residual of a last layer that computes
    /// only those.
    pub rows: Vec<f32>,
    pub normed: Vec<f32>,
    pub qkv: Vec<f32>,
    pub context: Vec<f32>,
    pub attended: Vec<f32>,
    pub inner: Vec<f32>,
    pub gated: Vec<f32>,
    pub products: ProductScratch,
}

/// A pre-norm layer's four dense products (Q|K|V, attention output, the gated
/// feed-forward's two), in the order they run: what its pass prepares and times.
pub(crate) trait FourProducts {
    fn products(&self) -> [&Linear; 4];
    fn products_mut(&mut self) -> [&mut Linear; 4];
}

/// Moves every layer's products to `kernels`.
pub(crate) fn prepare_layers<L: FourProducts>(
    layers: &mut [L],
    kernels: Kernels,
) -> Result<(), OnednnError> {
    for layer in layers {
        for linear in layer.products_mut() {
            linear.prepare(kernels)?;
        }
    }
    Ok(())
}

/// The first layer's products, which the candidate kernels are timed on.
pub(crate) fn first_layer<L: FourProducts>(layers: &[L]) -> Vec<&Linear> {
    layers
        .first()
        .map(|l| l.products().to_vec())
        .unwrap_or_default()
}

/// The pairs of one batch, packed: token ids end to end and where each pair starts.
pub(crate) struct PackedTokens<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
    /// Start of each pair in `ids`, plus the total at the end.
    pub offsets: &'a [usize],
    /// Each pair's leading tokens that are a prompt prefix (a decoder's to share; empty
    /// or zeros: none).
    pub shared: &'a [usize],
}

/// Scratch buffers of a forward pass, reused from layer to layer and batch to batch:
/// the activations, and the products' bf16 copy of their input.
#[derive(Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    /// Each pair's first row of `x`, the residual of a layer that computes only those.
    firsts: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    inner: Vec<f32>,
    first_token: FirstTokenScratch,
    products: ProductScratch,
}

impl PackedPass for PackedEncoder {
    fn prepare_products(&mut self, kernels: Kernels) -> Result<(), OnednnError> {
        let last = self.layers.len().saturating_sub(1);
        let keys_skipped = self.keys_skipped_last();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            // Without keys and values, the last layer's Q|K|V weights are read by the
            // first tokens' attention, in f32.
            if !(keys_skipped && l == last) {
                layer.qkv.prepare(kernels)?;
            }
            layer.attention_out.prepare(kernels)?;
            layer.intermediate.prepare(kernels)?;
            layer.output.prepare(kernels)?;
        }
        Ok(())
    }

    fn timed_layer(&self) -> Vec<&Linear> {
        self.layers
            .first()
            .map(|l| vec![&l.qkv, &l.attention_out, &l.intermediate, &l.output])
            .unwrap_or_default()
    }

    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let h = c.hidden_size;
        // One batch at a time per worker: the lock is never contended there.
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *s;
        s.products.threads = threads;
        self.embed(batch, &mut s.x);
        let pairs = batch.offsets.len() - 1;
        let last = self.layers.len().saturating_sub(1);
        for (l, layer) in self.layers.iter().enumerate() {
            // The head reads each pair's first token alone, so the last layer computes
            // only those rows, and with absolute positions no keys or values either.
            let queries = if l == last {
                Queries::First
            } else {
                Queries::All
            };
            self.layer((l, layer), batch, queries, s)?;
        }
        let cls = match self.layers.is_empty() {
            false => &s.x[..pairs * h],
            true => first_rows(batch.offsets, &s.x, h, &mut s.firsts),
        };
        let mut one_thread = ProductScratch::new(1);
        let mut pooled = Vec::new();
        self.head_dense
            .forward(cls, pairs, None, &mut pooled, &mut one_thread)?;
        match c.layout.head_activation {
            HeadActivation::Tanh => pooled.iter_mut().for_each(|v| *v = v.tanh()),
            HeadActivation::Relu => pooled.iter_mut().for_each(|v| *v = v.max(0.0)),
            HeadActivation::Gelu => activate_slice(&mut pooled, &HiddenAct::GeluErf),
        }
        let mut logits = Vec::new();
        self.head_out
            .forward(&pooled, pairs, None, &mut logits, &mut one_thread)?;
        Ok(logits)
    }
}

impl PackedEncoder {
    /// Whether the last layer attends for the first tokens without the other tokens'
    /// keys and values ([`first_token`]): where positions are absolute, not relative.
    fn keys_skipped_last(&self) -> bool {
        self.relative.is_none()
    }

    /// Encoder layer `l` over the batch in `s.x`: its output replaces `s.x`, a row for
    /// each of the `queries` (every token, or each pair's first).
    fn layer(
        &self,
        (l, layer): (usize, &PackedLayer),
        batch: &PackedTokens<'_>,
        queries: Queries,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (h, tokens) = (c.hidden_size, batch.ids.len());
        let pairs = batch.offsets.len() - 1;
        let heads = c.num_attention_heads;
        let p = &mut s.products;
        let residual = match queries {
            Queries::All => &s.x,
            Queries::First => first_rows(batch.offsets, &s.x, h, &mut s.firsts),
            Queries::Last => last_rows(batch.offsets, &s.x, h, &mut s.firsts),
        };
        if queries == Queries::First && self.keys_skipped_last() {
            let inputs = (batch.offsets, &s.x[..], residual);
            attend_first(
                inputs,
                &layer.qkv,
                heads,
                &mut s.first_token,
                &mut s.context,
            );
        } else {
            layer.qkv.forward(&s.x, tokens, None, &mut s.qkv, p)?;
            let asked = (AttentionShape::even(h, heads), queries);
            match &self.relative {
                Some(relative) => {
                    attend_relative(batch.offsets, &s.qkv, asked, (relative, l), &mut s.context)
                }
                None => attend(batch.offsets, &s.qkv, asked, None, &mut s.context),
            }
        }
        let rows = queries.rows(tokens, pairs);
        layer
            .attention_out
            .forward(&s.context, rows, Some(residual), &mut s.attended, p)?;
        layer.attention_norm.apply(&mut s.attended, h);
        layer
            .intermediate
            .forward_activated(&s.attended, rows, c.hidden_act, &mut s.inner, p)?;
        layer
            .output
            .forward(&s.inner, rows, Some(&s.attended), &mut s.x, p)?;
        layer.output_norm.apply(&mut s.x, h);
        Ok(())
    }

    /// Word + position + token-type embeddings, then layer norm: `[tokens, hidden]`.
    /// Positions count from the layout's first; without token types, every token
    /// reads the table's one row.
    fn embed(&self, batch: &PackedTokens<'_>, x: &mut Vec<f32>) {
        let h = self.config.hidden_size;
        let layout = &self.config.layout;
        x.clear();
        x.reserve(batch.ids.len() * h);
        for pair in batch.offsets.windows(2) {
            for (position, t) in (pair[0]..pair[1]).enumerate() {
                let word = &self.words[batch.ids[t] as usize * h..][..h];
                let kind = match layout.token_types {
                    true => batch.type_ids[t] as usize,
                    false => 0,
                };
                let kind = &self.token_types[kind * h..][..h];
                match &self.positions {
                    Some(table) => {
                        let place = &table[(layout.first_position + position) * h..][..h];
                        x.extend(
                            word.iter()
                                .zip(place)
                                .zip(kind)
                                .map(|((w, p), k)| w + p + k),
                        );
                    }
                    None => x.extend(word.iter().zip(kind).map(|(w, k)| w + k)),
                }
            }
        }
        self.embedding_norm.apply(x, h);
    }
}
