//! ModernBERT's forward pass on packed tokens: pre-norm layers, rotary positions (one
//! base for global layers, one for local ones), sliding-window attention on the local
//! layers, GeGLU feed-forward, a final norm, and the head (dense, GELU, norm) on the
//! first token or the mean of a pair's tokens. The products, attention, rotary
//! positions and the gated feed-forward are the shared ones (`super`).

use super::{
    activate, attend, first_layer, first_rows, gate, last_rows, pool, prepare_layers,
    AttentionShape, FourProducts, Kernels, Linear, Norm, PackedPass, PackedTokens, Part, Pooling,
    PreNormScratch, ProductScratch, Queries, Rotary,
};
use crate::{HiddenAct, ModelError};

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
    pub scratch: std::sync::Mutex<PreNormScratch>,
}

impl FourProducts for ModernBertLayer {
    fn products(&self) -> [&Linear; 4] {
        [&self.qkv, &self.attention_out, &self.mlp_in, &self.mlp_out]
    }

    fn products_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.attention_out,
            &mut self.mlp_in,
            &mut self.mlp_out,
        ]
    }
}

impl PackedPass for ModernBertEncoder {
    fn prepare_products(&mut self, kernels: Kernels) -> Result<(), crossenc_onednn::OnednnError> {
        prepare_layers(&mut self.layers, kernels)
    }

    fn timed_layer(&self) -> Vec<&Linear> {
        first_layer(&self.layers)
    }

    fn logits(&self, batch: &PackedTokens<'_>, threads: usize) -> Result<Vec<f32>, ModelError> {
        let shape = &self.shape;
        let (h, tokens) = (shape.hidden, batch.ids.len());
        // One batch at a time per worker: the lock is never contended there.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let PreNormScratch {
            x,
            rows: firsts,
            normed,
            qkv,
            context,
            attended,
            inner,
            gated,
            products: p,
        } = &mut *scratch;
        p.threads = threads;
        let attention = AttentionShape::even(h, shape.heads);
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
            let unchanged = |_: &mut [f32], _: Part| {};
            (layer.rotary).rotate_queries_and_keys((batch.offsets, &[]), qkv, attention, unchanged);
            attend(
                batch.offsets,
                qkv,
                (attention, queries),
                layer.window,
                context,
            );
            let (residual, rows) = match queries {
                Queries::All => (&x[..], tokens),
                Queries::First => (first_rows(batch.offsets, x, h, firsts), pairs),
                Queries::Last => (last_rows(batch.offsets, x, h, firsts), pairs),
            };
            layer
                .attention_out
                .forward(context, rows, Some(residual), attended, p)?;
            normed.clone_from(attended);
            layer.mlp_norm.apply(normed, h);
            layer.mlp_in.forward(normed, rows, None, inner, p)?;
            gate(inner, self.shape.intermediate, self.shape.activation, gated);
            layer.mlp_out.forward(gated, rows, Some(attended), x, p)?;
        }
        self.final_norm.apply(x, h);
        let pooled_here;
        let pooled = match (self.shape.pooling, self.layers.is_empty()) {
            // The last layer computed the first tokens alone: `x` holds them.
            (Pooling::Cls, false) => &x[..pairs * h],
            _ => {
                pooled_here = pool(batch.offsets, x, h, self.shape.pooling);
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
