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
mod modernbert;
mod pooling;
mod rotary;

pub(crate) use attention::{
    attend, attend_causal, attend_relative, AttentionShape, Queries, RelativeAttention,
};
pub(crate) use decoder::{DecoderLayer, DecoderPass, DecoderShape};
pub(crate) use elementwise::{activate, activate_slice, softmax_rows};
use first_token::{attend_first, FirstTokenScratch};
pub(crate) use gated::gate;
pub(crate) use kernels::{fastest, measure, timed_rows};
pub use kernels::{KernelChoice, KernelRate, Kernels};
pub(crate) use modernbert::{ModernBertEncoder, ModernBertLayer, ModernBertShape};
pub(crate) use pooling::{first_rows, last_rows, pool, Pooling};
pub(crate) use rotary::{Part, Rotary};

use crossenc_onednn::{bf16, Bf16Weights, F32Weights, OnednnError};
use rayon::prelude::*;

use crate::arch::HeadActivation;
use crate::{HiddenAct, ModelConfig, ModelError};

/// A dense layer, weights `[inputs, outputs]` row-major.
pub(crate) struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// The same weights laid out for oneDNN, where its kernels run the products.
    pub onednn: Option<OnednnWeights>,
}

/// A dense layer's weights prepared for oneDNN's products, in the format they run in.
pub(crate) enum OnednnWeights {
    F32(F32Weights),
    Bf16(Bf16Weights),
}

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
}

/// A matrix in memory: `rows x cols`, element (r, c) at `r * row_stride + c * col_stride`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `width` columns from column `from` of `rows` rows `stride` apart: one head's
    /// share of a fused product, or a block of a weight matrix.
    fn columns(data: &'a [f32], rows: usize, (from, width): (usize, usize), stride: usize) -> Self {
        Self {
            data: &data[from..],
            rows,
            cols: width,
            row_stride: stride,
            col_stride: 1,
        }
    }

    /// The same elements read as the transposed matrix.
    fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            data: self.data,
        }
    }

    /// Whether every element it names lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `out (+)= scale * a * b`, `out` row-major with `out_stride` between rows. With
/// `accumulate`, the product is added to what `out` holds (bias, residual).
fn product(
    out: &mut [f32],
    out_stride: usize,
    accumulate: bool,
    (a, b): (View<'_>, View<'_>),
    scale: f32,
    threads: usize,
) {
    let len = out.len();
    // SAFETY: `out` is borrowed mutably for the call: valid and unaliased for `len`.
    unsafe {
        product_into(
            out.as_mut_ptr(),
            len,
            out_stride,
            accumulate,
            (a, b),
            scale,
            threads,
        )
    }
}

/// [`product`] into raw memory.
///
/// # Safety
/// `out` must be valid for writes of `out_len` elements that nothing else reads or
/// writes during the call.
unsafe fn product_into(
    out: *mut f32,
    out_len: usize,
    out_stride: usize,
    accumulate: bool,
    (a, b): (View<'_>, View<'_>),
    scale: f32,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert!(a.fits() && b.fits(), "an operand view overruns its data");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * out_stride + n <= out_len,
        "the output overruns its data"
    );
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts keep every element read inside `a` and `b` and every element
    // written inside the caller's `out_len`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// What every product of one forward pass shares: its threads and the bf16 copy of
/// its input.
pub(crate) struct ProductScratch {
    pub(crate) threads: usize,
    bf16: Vec<bf16>,
}

impl Default for ProductScratch {
    /// On one thread, until a pass sets its own.
    fn default() -> Self {
        Self::new(1)
    }
}

impl ProductScratch {
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            threads,
            bf16: Vec::new(),
        }
    }

    /// `x` rounded to bf16, converted in parallel: it runs before every bf16 product.
    /// The buffer only grows, so it is not cleared before each conversion overwrites it.
    fn rounded(&mut self, x: &[f32]) -> &[bf16] {
        const CHUNK: usize = 32 * 1024;
        if self.bf16.len() < x.len() {
            self.bf16.resize(x.len(), bf16::ZERO);
        }
        let rounded = &mut self.bf16[..x.len()];
        x.par_chunks(CHUNK)
            .zip(rounded.par_chunks_mut(CHUNK))
            .for_each(|(from, to)| crossenc_onednn::to_bf16_into(from, to));
        rounded
    }
}

impl Linear {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        Self {
            weight,
            bias,
            inputs,
            outputs,
            onednn: None,
        }
    }

    /// Prepares the weights for `kernels`, which later forward passes use; where
    /// oneDNN runs them the f32 copy is dropped (nothing reads it any more).
    pub fn prepare(&mut self, kernels: Kernels) -> Result<(), OnednnError> {
        let (inputs, outputs) = (self.inputs, self.outputs);
        self.onednn = match kernels {
            Kernels::Gemm => return Ok(()),
            Kernels::OnednnF32 => Some(OnednnWeights::F32(F32Weights::new(
                &self.weight,
                inputs,
                outputs,
            )?)),
            Kernels::OnednnBf16 => Some(OnednnWeights::Bf16(Bf16Weights::new(
                &self.weight,
                inputs,
                outputs,
            )?)),
        };
        self.weight = Vec::new();
        Ok(())
    }

    /// A copy prepared for `kernels`, to time them without touching the model.
    fn prepared_copy(&self, kernels: Kernels) -> Result<Linear, OnednnError> {
        let mut copy = Linear::new(
            self.weight.clone(),
            self.bias.clone(),
            self.inputs,
            self.outputs,
        );
        copy.prepare(kernels)?;
        Ok(copy)
    }

    /// The name of the kernels a product of `rows` rows runs on.
    pub(crate) fn implementation(&self, rows: usize) -> String {
        let rows = rows.min(crossenc_onednn::BLOCK_ROWS);
        let named = match &self.onednn {
            None => return "gemm".into(),
            Some(OnednnWeights::F32(w)) => w.implementation(rows),
            Some(OnednnWeights::Bf16(w)) => w.implementation(rows),
        };
        named.unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// `out = activation(x * W + b)` for `rows` rows of `x`: on oneDNN the bias and
    /// activation are the product's epilogue, and `out` is written once.
    pub(crate) fn forward_activated(
        &self,
        x: &[f32],
        rows: usize,
        activation: HiddenAct,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<(), ModelError> {
        // oneDNN's shim has no SiLU epilogue: it runs after the product.
        let fused = match activation {
            HiddenAct::GeluErf => Some(crossenc_onednn::Activation::GeluErf),
            HiddenAct::GeluTanh => Some(crossenc_onednn::Activation::GeluTanh),
            HiddenAct::Relu => Some(crossenc_onednn::Activation::Relu),
            HiddenAct::Silu => None,
        };
        let applied = match fused {
            Some(fused) => self.apply(x, rows, fused, out, scratch)?,
            None => false,
        };
        if !applied {
            self.forward(x, rows, None, out, scratch)?;
            activate(out, activation);
        }
        Ok(())
    }

    /// `out = activation(x * W + b)` on oneDNN, bias and activation in the product's
    /// epilogue; `false` (nothing done) where oneDNN does not run these weights.
    fn apply(
        &self,
        x: &[f32],
        rows: usize,
        activation: crossenc_onednn::Activation,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<bool, ModelError> {
        let Some(weights) = &self.onednn else {
            return Ok(false);
        };
        let x = &x[..rows * self.inputs];
        let (len, threads) = (rows * self.outputs, scratch.threads);
        out.clear();
        out.reserve(len);
        let epilogue = (&self.bias[..], activation);
        let spare = &mut out.spare_capacity_mut()[..len];
        match weights {
            OnednnWeights::Bf16(w) => {
                w.apply(scratch.rounded(x), rows, epilogue, spare, threads)?
            }
            OnednnWeights::F32(w) => w.apply(x, rows, epilogue, spare, threads)?,
        }
        // SAFETY: `apply` succeeded, so it wrote all `len` elements.
        unsafe { out.set_len(len) };
        Ok(true)
    }

    /// `out = x * W + b (+ residual)` for `rows` rows of `x`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<(), ModelError> {
        if residual.is_none()
            && self.apply(x, rows, crossenc_onednn::Activation::None, out, scratch)?
        {
            return Ok(());
        }
        out.clear();
        out.reserve(rows * self.outputs);
        for r in 0..rows {
            match residual {
                Some(res) => out.extend(
                    res[r * self.outputs..(r + 1) * self.outputs]
                        .iter()
                        .zip(&self.bias)
                        .map(|(x, b)| x + b),
                ),
                None => out.extend_from_slice(&self.bias),
            }
        }
        let x = &x[..rows * self.inputs];
        let threads = scratch.threads;
        match &self.onednn {
            Some(OnednnWeights::Bf16(w)) => w.accumulate(scratch.rounded(x), rows, out, threads)?,
            Some(OnednnWeights::F32(w)) => w.accumulate(x, rows, out, threads)?,
            None => {
                let a = View::rows(x, rows, self.inputs);
                let w = View::rows(&self.weight, self.inputs, self.outputs);
                product(out, self.outputs, true, (a, w), 1.0, threads);
            }
        }
        Ok(())
    }
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
