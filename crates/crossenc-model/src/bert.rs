//! `BertForSequenceClassification` on candle: embeddings, encoder layers, pooler
//! (dense + tanh on [CLS]) and the classifier head.
//!
//! Dense layers run on `[pairs * width, hidden]` matrices with weights transposed once
//! at load; Q, K and V are one fused matmul.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::packed::{Linear, Norm, PackedEncoder, PackedLayer, PackedTokens};
use crate::{Activation, ModelConfig, ModelError, ModelFolder};

/// A loaded cross-encoder, ready to score batches.
pub struct CrossEncoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    pooler: Dense,
    classifier: Dense,
    config: ModelConfig,
    device: Device,
    /// The padding-free CPU forward pass; `None` on other devices.
    packed: Option<PackedEncoder>,
    products: Products,
}

/// The number format an operator asks for the encoder's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation, on oneDNN's AMX kernels; f32 where the CPU has no
    /// AMX. AVX512-BF16 alone runs bf16 products at about half the rate of f32 ones on
    /// Intel CPUs (measured: oneDNN 162-171 GFLOP/s bf16 vs 258-334 f32, 2 threads), so
    /// `without_amx` uses it only when asked: to test the path, or on CPUs where it pays.
    Bf16 { without_amx: bool },
}

/// What a loaded model's products actually run in: what was asked, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16 {
        implementation: String,
        amx: bool,
    },
    /// bf16 was asked for; f32 runs, for this reason.
    F32Instead {
        reason: String,
    },
}

impl Products {
    /// The number format in one word, as `model.dtype` spells it.
    pub fn dtype(&self) -> &'static str {
        match self {
            Products::Bf16 { .. } => "bf16",
            Products::F32 | Products::F32Instead { .. } => "f32",
        }
    }
}

impl std::fmt::Display for Products {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Products::F32 => f.write_str("f32"),
            Products::Bf16 {
                implementation,
                amx: true,
            } => write!(f, "bf16 on AMX tiles (oneDNN {implementation})"),
            Products::Bf16 { implementation, .. } => write!(
                f,
                "bf16 on AVX512-BF16 without AMX (oneDNN {implementation}), as \
                 CROSSENC_BF16_WITHOUT_AMX asks"
            ),
            Products::F32Instead { reason } => {
                write!(f, "f32, although bf16 was asked for: {reason}")
            }
        }
    }
}

/// Pairs padded to one width, as the forward pass takes them.
#[derive(Debug, Default)]
pub struct PaddedBatch {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    lengths: Vec<usize>,
    width: usize,
    pad_id: u32,
}

impl PaddedBatch {
    /// An empty batch whose rows will be `width` tokens long.
    pub fn new(width: usize, pairs: usize, pad_id: u32) -> Self {
        Self {
            ids: Vec::with_capacity(width * pairs),
            type_ids: Vec::with_capacity(width * pairs),
            lengths: Vec::with_capacity(pairs),
            width,
            pad_id,
        }
    }

    /// Adds one pair; it must not be longer than the width.
    pub fn push(&mut self, ids: impl ExactSizeIterator<Item = u32>, type_ids: &[u8]) {
        let len = ids.len();
        assert!(len <= self.width && len == type_ids.len() && len > 0);
        self.ids.extend(ids);
        self.ids
            .extend(std::iter::repeat_n(self.pad_id, self.width - len));
        self.type_ids.extend(type_ids.iter().map(|&t| u32::from(t)));
        self.type_ids
            .extend(std::iter::repeat_n(0, self.width - len));
        self.lengths.push(len);
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Real tokens, without padding.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Tokens computed, padding included.
    pub fn padded_tokens(&self) -> usize {
        self.width * self.lengths.len()
    }
}

/// Pairs end to end, without padding, as the packed forward pass reads them.
#[derive(Debug, Default)]
pub struct PackedPairs {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    /// Where each pair starts, and the total at the end.
    offsets: Vec<usize>,
}

impl PackedPairs {
    pub fn with_capacity(pairs: usize, tokens: usize) -> Self {
        let mut offsets = Vec::with_capacity(pairs + 1);
        offsets.push(0);
        Self {
            ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            offsets,
        }
    }

    /// Adds one pair (at least one token, as many type ids as ids).
    pub fn push(&mut self, ids: impl ExactSizeIterator<Item = u32>, type_ids: &[u8]) {
        assert!(ids.len() == type_ids.len() && ids.len() > 0);
        self.ids.extend(ids);
        self.type_ids.extend(type_ids.iter().map(|&t| u32::from(t)));
        self.offsets.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Tokens in the longest pair.
    fn longest(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tokens(&self) -> PackedTokens<'_> {
        PackedTokens {
            ids: &self.ids,
            type_ids: &self.type_ids,
            offsets: &self.offsets,
        }
    }

    /// The same pairs padded to the longest, for candle's forward pass.
    fn padded(&self, pad_id: u32) -> PaddedBatch {
        let mut batch = PaddedBatch::new(self.longest(), self.len(), pad_id);
        for w in self.offsets.windows(2) {
            let types: Vec<u8> = self.type_ids[w[0]..w[1]].iter().map(|&t| t as u8).collect();
            batch.push(self.ids[w[0]..w[1]].iter().copied(), &types);
        }
        batch
    }
}

struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
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
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

struct EncoderLayer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb.pp("LayerNorm"))
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &ModelConfig) -> candle_core::Result<Self> {
        Ok(Self {
            words: candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            positions: candle_nn::embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: candle_nn::embedding(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(vb, c.hidden_size, c.layer_norm_eps)?,
        })
    }

    /// `[pairs, width]` ids in, `[pairs * width, hidden]` out.
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (pairs, width) = ids.dims2()?;
        let positions = Tensor::arange(0u32, width as u32, ids.device())?;
        let x = self
            .words
            .forward(ids)?
            .add(&self.token_types.forward(type_ids)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let hidden = x.dim(D::Minus1)?;
        self.norm.forward(&x.reshape((pairs * width, hidden))?)
    }
}

impl EncoderLayer {
    fn load(vb: VarBuilder, c: &ModelConfig) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let attention = vb.pp("attention");
        let projection = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
            let vb = attention.pp("self").pp(name);
            Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
        };
        let (q, qb) = projection("query")?;
        let (k, kb) = projection("key")?;
        let (v, vbias) = projection("value")?;
        let qkv = Dense::from_parts(
            &Tensor::cat(&[&q, &k, &v], 0)?,
            Tensor::cat(&[&qb, &kb, &vbias], 0)?,
        )?;
        Ok(Self {
            qkv,
            attention_out: Dense::load(attention.pp("output").pp("dense"), h, h)?,
            attention_norm: layer_norm(attention.pp("output"), h, c.layer_norm_eps)?,
            intermediate: Dense::load(vb.pp("intermediate").pp("dense"), h, c.intermediate_size)?,
            output: Dense::load(vb.pp("output").pp("dense"), c.intermediate_size, h)?,
            output_norm: layer_norm(vb.pp("output"), h, c.layer_norm_eps)?,
        })
    }

    /// `x` is `[pairs * width, hidden]`; `mask` is `[pairs, 1, 1, width]`, 0 or the
    /// most negative float, and absent when no pair is padded.
    fn forward(
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
        let inner = match c.activation {
            Activation::GeluErf => crate::gelu::gelu_erf(&inner)?,
            Activation::GeluTanh => inner.gelu()?,
            Activation::Relu => inner.relu()?,
        };
        self.output_norm
            .forward(&self.output.forward(&inner)?.add(&attended)?)
    }
}

impl CrossEncoder {
    /// Memory-maps `model.safetensors` and prepares the weights for `device` and
    /// `precision`; [`CrossEncoder::products`] says what runs.
    pub fn load(
        folder: &ModelFolder,
        device: Device,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let path = folder.weights_path();
        let weights_error = |e: candle_core::Error| ModelError::Weights {
            path: path.clone(),
            message: e.to_string(),
        };
        // SAFETY: the file is opened read-only and kept mapped while the model lives; as
        // with every mmap, it must not be truncated underneath us.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &device) }
            .map_err(weights_error)?;
        let c = folder.config.clone();
        let bert = vb.pp("bert");
        let load = || -> candle_core::Result<Self> {
            let layers = (0..c.num_hidden_layers)
                .map(|i| EncoderLayer::load(bert.pp("encoder.layer").pp(i), &c))
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                embeddings: Embeddings::load(bert.pp("embeddings"), &c)?,
                layers,
                pooler: Dense::load(bert.pp("pooler.dense"), c.hidden_size, c.hidden_size)?,
                classifier: Dense::load(vb.pp("classifier"), c.hidden_size, c.num_labels)?,
                config: c.clone(),
                device: device.clone(),
                packed: None,
                products: Products::F32,
            })
        };
        let mut model = load().map_err(weights_error)?;
        if device.is_cpu() {
            model.packed = Some(model.pack().map_err(weights_error)?);
        }
        if let Precision::Bf16 { without_amx } = precision {
            model.products = model.prepare_bf16(without_amx)?;
        }
        Ok(model)
    }

    /// Moves the CPU pass's products to bf16 where this machine and build can run them.
    fn prepare_bf16(&mut self, without_amx: bool) -> Result<Products, ModelError> {
        let Some(packed) = &mut self.packed else {
            return Ok(Products::F32Instead {
                reason: format!(
                    "bf16 is implemented for the CPU forward pass; {:?} runs f32",
                    self.device
                ),
            });
        };
        match crossenc_onednn::support() {
            crossenc_onednn::Support::Missing(reason) => Ok(Products::F32Instead {
                reason: reason.clone(),
            }),
            crossenc_onednn::Support::Native {
                amx: false,
                implementation,
            } if !without_amx => Ok(Products::F32Instead {
                reason: format!(
                    "this CPU has no AMX, and bf16 on AVX512-BF16 ({implementation}) is slower \
                     than f32 on it (CROSSENC_BF16_WITHOUT_AMX=1 runs it anyway)"
                ),
            }),
            crossenc_onednn::Support::Native {
                amx,
                implementation,
            } => {
                packed.prepare_bf16()?;
                Ok(Products::Bf16 {
                    implementation: implementation.clone(),
                    amx: *amx,
                })
            }
        }
    }

    /// What the products run in, after any fallback.
    pub fn products(&self) -> &Products {
        &self.products
    }

    /// The weights as the packed CPU forward pass reads them.
    fn pack(&self) -> candle_core::Result<PackedEncoder> {
        let e = &self.embeddings;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(PackedLayer {
                    qkv: l.qkv.pack()?,
                    attention_out: l.attention_out.pack()?,
                    attention_norm: pack_norm(&l.attention_norm, &self.config)?,
                    intermediate: l.intermediate.pack()?,
                    output: l.output.pack()?,
                    output_norm: pack_norm(&l.output_norm, &self.config)?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(PackedEncoder {
            words: flat(e.words.embeddings())?,
            positions: flat(e.positions.embeddings())?,
            token_types: flat(e.token_types.embeddings())?,
            embedding_norm: pack_norm(&e.norm, &self.config)?,
            layers,
            pooler: self.pooler.pack()?,
            classifier: self.classifier.pack()?,
            config: self.config.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw logits, one per pair, in order: on the CPU by the packed forward pass,
    /// elsewhere by candle over the pairs padded to the longest.
    pub fn score_pairs(&self, pairs: &PackedPairs) -> Result<Vec<f32>, ModelError> {
        self.check_tokens(pairs)?;
        match &self.packed {
            Some(packed) if !pairs.is_empty() => {
                packed.score(&pairs.tokens(), rayon::current_num_threads())
            }
            _ => self.score_padded(&pairs.padded(self.config.pad_token_id)),
        }
    }

    /// Token and type ids index the embedding tables: one past them is an error here,
    /// not a read out of bounds in the forward pass.
    fn check_tokens(&self, pairs: &PackedPairs) -> Result<(), ModelError> {
        let c = &self.config;
        let beyond = |ids: &[u32], limit: usize| ids.iter().copied().find(|&i| i as usize >= limit);
        if let Some(value) = beyond(&pairs.ids, c.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                what: "token id",
                value,
                limit: c.vocab_size,
            });
        }
        if let Some(value) = beyond(&pairs.type_ids, c.type_vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                what: "token type id",
                value,
                limit: c.type_vocab_size,
            });
        }
        let longest = pairs.longest();
        if longest > c.max_position_embeddings {
            return Err(ModelError::TokenOutOfRange {
                what: "pair length",
                value: longest as u32,
                limit: c.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Raw logits by candle's ops over the padded batch, mask and all: the reference
    /// the packed pass is tested against, and the path on GPUs.
    pub fn score_padded(&self, batch: &PaddedBatch) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let shape = (batch.len(), batch.width);
        let ids = Tensor::from_slice(&batch.ids, shape, &self.device)?;
        let type_ids = Tensor::from_slice(&batch.type_ids, shape, &self.device)?;
        let mask = self.attention_mask(batch)?;
        let mut x = self.embeddings.forward(&ids, &type_ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref(), shape, &self.config)?;
        }
        let cls = x
            .reshape((batch.len(), batch.width, self.config.hidden_size))?
            .narrow(1, 0, 1)?
            .squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let logits = self.classifier.forward(&pooled)?;
        Ok(logits.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Additive mask over keys: 0 for real tokens, the most negative float for padding,
    /// as transformers builds it.
    fn attention_mask(&self, batch: &PaddedBatch) -> candle_core::Result<Option<Tensor>> {
        if batch.real_tokens() == batch.padded_tokens() {
            return Ok(None);
        }
        let mut mask = Vec::with_capacity(batch.padded_tokens());
        for &len in &batch.lengths {
            mask.extend(std::iter::repeat_n(0f32, len));
            mask.extend(std::iter::repeat_n(f32::MIN, batch.width - len));
        }
        Tensor::from_vec(mask, (batch.len(), 1, 1, batch.width), &self.device).map(Some)
    }
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

impl Dense {
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
