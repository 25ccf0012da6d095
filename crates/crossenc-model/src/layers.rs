//! The pieces BERT-style encoders share, as candle modules: dense layers with weights
//! transposed once at load, embeddings, and encoder layers whose Q, K and V are one
//! fused product. The architectures build their padded passes from them, and
//! [`pack_encoder`] turns any of their checkpoints into the packed CPU pass's weights.

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::arch::{HeadActivation, LayerNames, PaddedModel};
use crate::packed::{Linear, Norm, PackedEncoder, PackedLayer};
use crate::{HiddenAct, ModelConfig, PaddedBatch};

pub(crate) struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::from_parts(&weight, bias)
    }

    fn from_parts(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `x` is `[rows, inputs]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }

    fn pack(&self) -> candle_core::Result<Linear> {
        let (inputs, outputs) = self.weight_t.dims2()?;
        Ok(Linear::new(
            flat(&self.weight_t)?,
            flat(&self.bias)?,
            inputs,
            outputs,
        ))
    }
}

pub(crate) struct Embeddings {
    words: Embedding,
    /// Absent where positions are relative or rotary.
    positions: Option<Embedding>,
    /// Absent where the architecture has no table (DistilBERT).
    token_types: Option<Embedding>,
    norm: LayerNorm,
    first_position: usize,
    uses_token_types: bool,
}

pub(crate) struct EncoderLayer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb)
}

impl Embeddings {
    /// The embeddings under the encoder's `vb`.
    pub fn load(vb: VarBuilder, c: &ModelConfig) -> candle_core::Result<Self> {
        let names = bert_style(c);
        let vb = vb.pp(names.embeddings);
        let table = |rows, name| candle_nn::embedding(rows, c.hidden_size, vb.pp(name));
        Ok(Self {
            words: table(c.vocab_size, "word_embeddings")?,
            positions: c
                .layout
                .position_table
                .then(|| table(c.max_position_embeddings, "position_embeddings"))
                .transpose()?,
            token_types: names
                .token_type_embeddings
                .map(|name| table(c.type_vocab_size, name))
                .transpose()?,
            norm: layer_norm(vb.pp(names.embedding_norm), c.hidden_size, c.layer_norm_eps)?,
            first_position: c.layout.first_position,
            uses_token_types: c.layout.token_types,
        })
    }

    /// `[pairs, width]` ids in, `[pairs * width, hidden]` out.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (pairs, width) = ids.dims2()?;
        let first = self.first_position as u32;
        let positions = Tensor::arange(first, first + width as u32, ids.device())?;
        let type_ids = if self.uses_token_types {
            type_ids.clone()
        } else {
            type_ids.zeros_like()?
        };
        let mut x = self.words.forward(ids)?;
        if let Some(table) = &self.token_types {
            x = x.add(&table.forward(&type_ids)?)?;
        }
        let x = match &self.positions {
            Some(table) => x.broadcast_add(&table.forward(&positions)?)?,
            None => x,
        };
        let hidden = x.dim(D::Minus1)?;
        self.norm.forward(&x.reshape((pairs * width, hidden))?)
    }
}

impl EncoderLayer {
    /// Layer `index` under the encoder's `vb`.
    pub fn load(vb: VarBuilder, index: usize, c: &ModelConfig) -> candle_core::Result<Self> {
        let (h, n) = (c.hidden_size, bert_style(c));
        let vb = vb.pp(n.layers).pp(index);
        let projection = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
        };
        let (q, qb) = projection(n.query)?;
        let (k, kb) = projection(n.key)?;
        let (v, vbias) = projection(n.value)?;
        let qkv = Dense::from_parts(
            &Tensor::cat(&[&q, &k, &v], 0)?,
            Tensor::cat(&[&qb, &kb, &vbias], 0)?,
        )?;
        let eps = c.layer_norm_eps;
        Ok(Self {
            qkv,
            attention_out: Dense::load(vb.pp(n.attention_out), h, h)?,
            attention_norm: layer_norm(vb.pp(n.attention_norm), h, eps)?,
            intermediate: Dense::load(vb.pp(n.intermediate), h, c.intermediate_size)?,
            output: Dense::load(vb.pp(n.output), c.intermediate_size, h)?,
            output_norm: layer_norm(vb.pp(n.output_norm), h, eps)?,
        })
    }

    /// `x` is `[pairs * width, hidden]`; `mask` is `[pairs, 1, 1, width]`, 0 or the
    /// most negative float, and absent when no pair is padded.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        shape: (usize, usize),
        c: &ModelConfig,
    ) -> candle_core::Result<Tensor> {
        let (pairs, width) = shape;
        let heads = c.num_attention_heads;
        let head_dim = c.hidden_size / heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((pairs, width, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        // Scaling q costs width/head_dim times less than scaling the scores.
        let q = (qkv.get(0)? * (1.0 / (head_dim as f64).sqrt()))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((pairs * width, c.hidden_size))?;
        let attended = self
            .attention_norm
            .forward(&self.attention_out.forward(&context)?.add(x)?)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match c.hidden_act {
            HiddenAct::GeluErf => crate::gelu::gelu_erf(&inner)?,
            HiddenAct::GeluTanh => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
            HiddenAct::Silu => inner.silu()?,
        };
        self.output_norm
            .forward(&self.output.forward(&inner)?.add(&attended)?)
    }

    fn pack(&self, c: &ModelConfig) -> candle_core::Result<PackedLayer> {
        Ok(PackedLayer {
            qkv: self.qkv.pack()?,
            attention_out: self.attention_out.pack()?,
            attention_norm: pack_norm(&self.attention_norm, c)?,
            intermediate: self.intermediate.pack()?,
            output: self.output.pack()?,
            output_norm: pack_norm(&self.output_norm, c)?,
        })
    }
}

/// Additive mask over keys: 0 for real tokens, the most negative float for padding,
/// as transformers builds it; `None` when no pair is padded.
pub(crate) fn attention_mask(
    lengths: &[usize],
    width: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Option<Tensor>> {
    if lengths.iter().all(|&len| len == width) {
        return Ok(None);
    }
    let mut mask = Vec::with_capacity(lengths.len() * width);
    for &len in lengths {
        mask.extend(std::iter::repeat_n(0f32, len));
        mask.extend(std::iter::repeat_n(f32::MIN, width - len));
    }
    Tensor::from_vec(mask, (lengths.len(), 1, 1, width), device).map(Some)
}

/// Any BERT-style checkpoint's weights, as the packed CPU pass reads them: the layout
/// says where the encoder and the head live. Layer by layer, so that at most one
/// layer's candle tensors sit beside the packed copy.
pub(crate) fn pack_encoder(vb: VarBuilder, c: &ModelConfig) -> candle_core::Result<PackedEncoder> {
    let layout = &c.layout;
    let encoder = vb.pp(layout.encoder);
    let embeddings = Embeddings::load(encoder.clone(), c)?;
    let layers = (0..c.num_hidden_layers)
        .map(|i| EncoderLayer::load(encoder.clone(), i, c)?.pack(c))
        .collect::<candle_core::Result<_>>()?;
    let h = c.hidden_size;
    let token_types = match &embeddings.token_types {
        Some(table) => flat(table.embeddings())?,
        // One row of zeros: the packed pass adds a type row to every token.
        None => vec![0.0; h],
    };
    Ok(PackedEncoder {
        words: flat(embeddings.words.embeddings())?,
        positions: embeddings
            .positions
            .as_ref()
            .map(|table| flat(table.embeddings()))
            .transpose()?,
        token_types,
        embedding_norm: pack_norm(&embeddings.norm, c)?,
        layers,
        head_dense: Dense::load(vb.pp(layout.head_dense), h, h)?.pack()?,
        head_out: Dense::load(vb.pp(layout.head_out), h, c.num_labels())?.pack()?,
        config: c.clone(),
        relative: None,
        scratch: Default::default(),
    })
}

/// The layout's tensor names: only architectures with a BERT-style encoder (names in
/// their layout) use these layers.
fn bert_style(c: &ModelConfig) -> &'static LayerNames {
    c.layout
        .names
        .expect("the shared layers read BERT-style encoders only")
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn pack_norm(norm: &LayerNorm, c: &ModelConfig) -> candle_core::Result<Norm> {
    let beta = match norm.bias() {
        Some(b) => flat(b)?,
        None => vec![0.0; c.hidden_size],
    };
    Ok(Norm {
        gamma: flat(norm.weight())?,
        beta,
        eps: c.layer_norm_eps as f32,
    })
}

/// candle's padded pass over any checkpoint that [`pack_encoder`] reads: the embeddings,
/// the layers, and the head on the first token. Architectures whose candle-transformers
/// model is missing, lacks a classifier, or differs from transformers use it.
pub(crate) struct EncoderClassifier {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    head_dense: Dense,
    head_out: Dense,
    config: ModelConfig,
}

impl EncoderClassifier {
    pub fn load(vb: VarBuilder, c: &ModelConfig) -> candle_core::Result<Self> {
        let encoder = vb.pp(c.layout.encoder);
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(encoder.clone(), i, c))
            .collect::<candle_core::Result<_>>()?;
        let h = c.hidden_size;
        Ok(Self {
            embeddings: Embeddings::load(encoder, c)?,
            layers,
            head_dense: Dense::load(vb.pp(c.layout.head_dense), h, h)?,
            head_out: Dense::load(vb.pp(c.layout.head_out), h, c.num_labels())?,
            config: c.clone(),
        })
    }
}

impl PaddedModel for EncoderClassifier {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, type_ids) = batch.tensors(device)?;
        let (pairs, width) = ids.dims2()?;
        let mut x = self.embeddings.forward(&ids, &type_ids)?;
        let mask = attention_mask(batch.lengths(), width, ids.device())?;
        let mask = mask.map(|m| m.to_dtype(x.dtype())).transpose()?;
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref(), (pairs, width), &self.config)?;
        }
        let first = x
            .reshape((pairs, width, self.config.hidden_size))?
            .narrow(1, 0, 1)?
            .squeeze(1)?;
        let pooled = self.head_dense.forward(&first)?;
        let pooled = match self.config.layout.head_activation {
            HeadActivation::Tanh => pooled.tanh()?,
            HeadActivation::Relu => pooled.relu()?,
            HeadActivation::Gelu => crate::gelu::gelu_erf(&pooled)?,
        };
        self.head_out.forward(&pooled)
    }
}
