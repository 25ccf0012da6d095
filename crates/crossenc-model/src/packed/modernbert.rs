//! ModernBERT's forward pass on packed tokens: pre-norm layers, rotary positions (one
//! base for global layers, one for local ones), sliding-window attention on the local
//! layers, GeGLU feed-forward, a final norm, and the head (dense, GELU, norm) on the
//! first token or the mean of a pair's tokens. The products and attention are the
//! BERT pass's own (`super`).

use rayon::prelude::*;

use super::{
    activate, attend, first_rows, Kernels, Linear, Norm, PackedPass, PackedTokens, ProductScratch,
    Queries,
};
use crate::{HiddenAct, ModelError};

/// How a pair becomes one vector for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// The first token.
    Cls,
    /// The mean of the pair's tokens.
    Mean,
}

/// The sizes the pass needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModernBertShape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// The GeGLU's activation.
    pub activation: HiddenAct,
    /// The head's, between its dense layer and its norm.
    pub head_activation: HiddenAct,
    pub pooling: Pooling,
}

pub(crate) struct ModernBertLayer {
    /// Absent in the first layer, whose input is the normed embeddings.
    pub attention_norm: Option<Norm>,
    pub qkv: Linear,
    pub attention_out: Linear,
    pub mlp_norm: Norm,
    /// `[hidden, 2 * intermediate]`: the GeGLU's input half, then its gate half.
    pub mlp_in: Linear,
    pub mlp_out: Linear,
    /// Tokens at most this far apart attend to each other (local layers).
    pub window: Option<usize>,
    /// Shared by the layers of one kind (global or local).
    pub rotary: std::sync::Arc<Rotary>,
}

/// cos and sin of every position's angle for each of a head's `dim / 2` frequencies,
/// as transformers computes them (f32 products of position and inverse frequency).
pub(crate) struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    pub fn new(theta: f64, head_dim: usize, positions: usize) -> Self {
        let half = head_dim / 2;
        let inverse: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let angles: Vec<f32> = (0..positions)
            .flat_map(|p| inverse.iter().map(move |f| p as f32 * f))
            .collect();
        Self {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            half,
        }
    }

    /// Rotates one head's query or key at `position` in place: the two halves of the
    /// head as the real and imaginary parts (transformers' `rotate_half`).
    fn rotate(&self, x: &mut [f32], position: usize) {
        let (cos, sin) = (
            &self.cos[position * self.half..][..self.half],
            &self.sin[position * self.half..][..self.half],
        );
        let (first, second) = x.split_at_mut(self.half);
        for i in 0..self.half {
            let (a, b) = (first[i], second[i]);
            first[i] = a * cos[i] - b * sin[i];
            second[i] = b * cos[i] + a * sin[i];
        }
    }
}

pub(crate) struct ModernBertEncoder {
    pub words: Vec<f32>,
    pub embedding_norm: Norm,
    pub layers: Vec<ModernBertLayer>,
    pub final_norm: Norm,
    pub head_dense: Linear,
    pub head_norm: Norm,
    pub classifier: Linear,
    pub shape: ModernBertShape,
    /// The activations' buffers, kept from batch to batch as the BERT pass keeps its
    /// own: allocated anew, each batch's tens of MB would be faulted in again.
    pub scratch: std::sync::Mutex<ModernBertScratch>,
}

/// Scratch buffers of a ModernBERT forward pass, reused from layer to layer and batch
/// to batch.
#[derive(Default)]
pub(crate) struct ModernBertScratch {
    x: Vec<f32>,
    /// Each pair's first row of `x`, the residual of a layer that computes only those.
    firsts: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    inner: Vec<f32>,
    gated: Vec<f32>,
    products: ProductScratch,
}

impl PackedPass for ModernBertEncoder {
    fn prepare_products(&mut self, kernels: Kernels) -> Result<(), crossenc_onednn::OnednnError> {
        for layer in &mut self.layers {
            layer.qkv.prepare(kernels)?;
            layer.attention_out.prepare(kernels)?;
            layer.mlp_in.prepare(kernels)?;
            layer.mlp_out.prepare(kernels)?;
        }
        Ok(())
    }

    fn timed_layer(&self) -> Vec<&Linear> {
        self.layers
            .first()
            .map(|l| vec![&l.qkv, &l.attention_out, &l.mlp_in, &l.mlp_out])
            .unwrap_or_default()
    }

    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError> {
        let shape = &self.shape;
        let (h, tokens) = (shape.hidden, batch.ids.len());
        // One batch at a time per worker: the lock is never contended there.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let ModernBertScratch {
            x,
            firsts,
            normed,
            qkv,
            context,
            attended,
            inner,
            gated,
            products: p,
        } = &mut *scratch;
        p.threads = threads;
        x.clear();
        for &id in batch.ids {
            x.extend_from_slice(&self.words[id as usize * h..][..h]);
        }
        self.embedding_norm.apply(x, h);
        let pairs = batch.offsets.len() - 1;
        let last = self.layers.len().saturating_sub(1);
        for (l, layer) in self.layers.iter().enumerate() {
            // Pooled on the first token, the head reads no other row of the last layer:
            // it computes those rows alone past its keys and values.
            let queries = match shape.pooling {
                Pooling::Cls if l == last => Queries::First,
                _ => Queries::All,
            };
            let input = match &layer.attention_norm {
                Some(norm) => {
                    normed.clone_from(x);
                    norm.apply(normed, h);
                    &*normed
                }
                None => &*x,
            };
            layer.qkv.forward(input, tokens, None, qkv, p)?;
            self.rotate(batch.offsets, qkv, &layer.rotary);
            attend(
                batch.offsets,
                qkv,
                (shape.heads, queries),
                layer.window,
                context,
            );
            let (residual, rows) = match queries {
                Queries::All => (&x[..], tokens),
                Queries::First => (first_rows(batch.offsets, x, h, firsts), pairs),
            };
            layer
                .attention_out
                .forward(context, rows, Some(residual), attended, p)?;
            normed.clone_from(attended);
            layer.mlp_norm.apply(normed, h);
            layer.mlp_in.forward(normed, rows, None, inner, p)?;
            self.geglu(inner, gated);
            layer.mlp_out.forward(gated, rows, Some(attended), x, p)?;
        }
        self.final_norm.apply(x, h);
        let pooled_here;
        let pooled = match (self.shape.pooling, self.layers.is_empty()) {
            // The last layer computed the first tokens alone: `x` holds them.
            (Pooling::Cls, false) => &x[..pairs * h],
            _ => {
                pooled_here = self.pool(batch.offsets, x);
                &pooled_here[..]
            }
        };
        let mut one_thread = ProductScratch::new(1);
        let mut head = Vec::new();
        self.head_dense
            .forward(pooled, pairs, None, &mut head, &mut one_thread)?;
        activate(&mut head, shape.head_activation);
        self.head_norm.apply(&mut head, h);
        let mut logits = Vec::new();
        self.classifier
            .forward(&head, pairs, None, &mut logits, &mut one_thread)?;
        Ok(logits)
    }
}

impl ModernBertEncoder {
    /// Rotary positions on every head's query and key, counted from each pair's start.
    fn rotate(&self, offsets: &[usize], qkv: &mut [f32], rotary: &Rotary) {
        let (h, heads) = (self.shape.hidden, self.shape.heads);
        let d = h / heads;
        let starts: Vec<(usize, usize)> = offsets
            .windows(2)
            .flat_map(|w| (w[0]..w[1]).map(move |t| (t, t - w[0])))
            .collect();
        qkv.par_chunks_mut(3 * h)
            .zip(starts.par_iter())
            .for_each(|(row, &(_, position))| {
                // Queries, then keys: the first 2 * hidden of the row.
                for head in row[..2 * h].chunks_exact_mut(d) {
                    rotary.rotate(head, position);
                }
            });
    }

    /// GeGLU: the activation of each row's first half times its second half.
    fn geglu(&self, inner: &[f32], gated: &mut Vec<f32>) {
        let width = self.shape.intermediate;
        gated.clear();
        gated.resize(inner.len() / 2, 0.0);
        gated
            .par_chunks_mut(width)
            .zip(inner.par_chunks(2 * width))
            .for_each(|(out, row)| {
                out.copy_from_slice(&row[..width]);
                activate_row(out, self.shape.activation);
                for (o, gate) in out.iter_mut().zip(&row[width..]) {
                    *o *= gate;
                }
            });
    }

    /// One vector per pair: its first token, or the mean of its tokens.
    fn pool(&self, offsets: &[usize], x: &[f32]) -> Vec<f32> {
        let h = self.shape.hidden;
        let mut pooled = Vec::with_capacity((offsets.len() - 1) * h);
        for w in offsets.windows(2) {
            match self.shape.pooling {
                Pooling::Cls => pooled.extend_from_slice(&x[w[0] * h..][..h]),
                Pooling::Mean => {
                    let mut sum = vec![0f64; h];
                    for row in x[w[0] * h..w[1] * h].chunks_exact(h) {
                        sum.iter_mut()
                            .zip(row)
                            .for_each(|(s, &v)| *s += f64::from(v));
                    }
                    let n = (w[1] - w[0]) as f64;
                    pooled.extend(sum.iter().map(|s| (s / n) as f32));
                }
            }
        }
        pooled
    }
}

/// The activation of one row, on this thread (the rows are already spread over them).
fn activate_row(x: &mut [f32], activation: HiddenAct) {
    super::activate_slice(x, &activation);
}
