//! Decoders as rerankers, one family each: Qwen3 (Qwen/Qwen3-Reranker-*), Qwen2
//! (mixedbread's mxbai-rerank-*-v2) and Gemma (BAAI/bge-reranker-v2-gemma). A
//! `*ForCausalLM` checkpoint is scored by the logits of the template's answer tokens at
//! the last position; a `*ForSequenceClassification` (a converted checkpoint) by its
//! one-label score there. Every family has pre-norm layers with RMS norms, grouped-query
//! attention with rotated queries and keys, causal, and a gated feed-forward; they
//! differ in the few things [`Family`] names: Qwen3 norms each query and key head, Qwen2
//! has biases on Q, K and V, Gemma scales its norms by 1 + weight and its embeddings by
//! √hidden and gates with the tanh GELU.
//!
//! The head is the answer tokens' rows of the output projection (or of the tied
//! embeddings), never the whole vocabulary's product. The padded pass is built here on
//! candle's ops, gathering each pair's last real row: candle-transformers' decoders keep
//! a KV cache behind `&mut self` and read position `len - 1` of the padded width.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Module, VarBuilder};
use serde_json::Value;

use super::{Architecture, HeadActivation, Identity, Layout, PaddedModel, Refusal};
use crate::packed::{
    AttentionShape, DecoderLayer, DecoderPass, DecoderShape, Linear, PackedPass, RmsNorm, Rotary,
};
use crate::{HiddenAct, ModelConfig, PaddedBatch};

/// A decoder family: its checkpoints and how its layers differ from the others'.
pub(crate) struct Family {
    identity: &'static Identity,
    /// The causal LM's class, scored by answer tokens.
    causal_class: &'static str,
    /// Each query and key head RMS-normed before its rotation (Qwen3).
    head_norms: bool,
    /// Biases on the Q, K and V projections (Qwen2).
    qkv_bias: bool,
    /// RMS norms scale by 1 + weight, the embeddings by √hidden, and `gelu` means the
    /// tanh GELU (Gemma).
    gemma: bool,
}

pub(crate) static QWEN3: Family = Family {
    identity: &Identity {
        name: "qwen3",
        classes: &["Qwen3ForCausalLM", "Qwen3ForSequenceClassification"],
        model_types: &["qwen3"],
        // `<|endoftext|>`, Qwen's padding.
        default_pad_token_id: 151643,
    },
    causal_class: "Qwen3ForCausalLM",
    head_norms: true,
    qkv_bias: false,
    gemma: false,
};

pub(crate) static QWEN2: Family = Family {
    identity: &Identity {
        name: "qwen2",
        classes: &["Qwen2ForCausalLM", "Qwen2ForSequenceClassification"],
        model_types: &["qwen2"],
        default_pad_token_id: 151643,
    },
    causal_class: "Qwen2ForCausalLM",
    head_norms: false,
    qkv_bias: true,
    gemma: false,
};

pub(crate) static GEMMA: Family = Family {
    identity: &Identity {
        name: "gemma",
        classes: &["GemmaForCausalLM", "GemmaForSequenceClassification"],
        model_types: &["gemma"],
        // `<pad>`.
        default_pad_token_id: 0,
    },
    causal_class: "GemmaForCausalLM",
    head_norms: false,
    qkv_bias: false,
    gemma: true,
};

/// What a decoder reads from `config.json` beyond the common fields.
struct Extra {
    rope_theta: f64,
    tied: bool,
    /// The gate's activation, as the family reads `hidden_act`.
    activation: HiddenAct,
}

impl Architecture for Family {
    fn identity(&self) -> &'static Identity {
        self.identity
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "model",
            names: None,
            head_dense: "",
            head_activation: HeadActivation::Tanh,
            head_out: "score",
            position_table: false,
            first_position: 0,
            token_types: false,
            pair_template: None,
        }
    }

    fn check(&self, config: &ModelConfig) -> Result<(), Refusal> {
        self.extra(config).map(|_| ())
    }

    fn scores_by_answers(&self, config: &ModelConfig) -> bool {
        self.causal(config)
    }

    fn packed(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PackedPass>> {
        let extra = self.extra(config)?;
        let c = config;
        let shape = attention_shape(c);
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let model = vb.pp("model");
        let norm = |vb: VarBuilder, size| self.rms_norm(vb, size, c);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let vb = model.pp("layers").pp(n);
            let attention = vb.pp("self_attn");
            let mlp = vb.pp("mlp");
            let projection = |vb: VarBuilder, outputs| vb.get((outputs, h), "weight");
            let (q, kv) = (shape.heads * d, shape.kv_heads * d);
            let parts = [("q_proj", q), ("k_proj", kv), ("v_proj", kv)];
            let weights = parts
                .iter()
                .map(|&(name, outputs)| projection(attention.pp(name), outputs))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let qkv = match self.qkv_bias {
                true => {
                    let biases = parts
                        .iter()
                        .map(|&(name, outputs)| attention.pp(name).get(outputs, "bias"))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    dense(
                        &Tensor::cat(&weights, 0)?,
                        Tensor::cat(&biases, 0)?.to_vec1()?,
                    )?
                }
                false => bias_free(&Tensor::cat(&weights, 0)?)?,
            };
            let gate_up = Tensor::cat(
                &[
                    projection(mlp.pp("gate_proj"), i)?,
                    projection(mlp.pp("up_proj"), i)?,
                ],
                0,
            )?;
            let head_norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
                self.head_norms
                    .then(|| norm(attention.pp(name), d))
                    .transpose()
            };
            layers.push(DecoderLayer {
                input_norm: norm(vb.pp("input_layernorm"), h)?,
                qkv,
                query_norm: head_norm("q_norm")?,
                key_norm: head_norm("k_norm")?,
                attention_out: bias_free(&attention.pp("o_proj").get((h, q), "weight")?)?,
                mlp_norm: norm(vb.pp("post_attention_layernorm"), h)?,
                gate_up: bias_free(&gate_up)?,
                down: bias_free(&mlp.pp("down_proj").get((h, i), "weight")?)?,
            });
        }
        let words = model.pp("embed_tokens").get((c.vocab_size, h), "weight")?;
        Ok(Box::new(DecoderPass {
            words: words.flatten_all()?.to_vec1()?,
            embedding_scale: self.embedding_scale(h),
            layers,
            final_norm: norm(model.pp("norm"), h)?,
            head: bias_free(&head_rows(&vb, c, &extra, &words)?)?,
            rotary: Rotary::new(extra.rope_theta, d, c.max_position_embeddings),
            shape: DecoderShape {
                hidden: h,
                attention: shape,
                intermediate: i,
                activation: extra.activation,
            },
            scratch: Default::default(),
            prefixes: Default::default(),
        }))
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        let extra = self.extra(config)?;
        Ok(Box::new(Padded::load(vb, config, &extra, self)?))
    }
}

impl Family {
    /// Whether the checkpoint is the causal LM (scored by answer tokens) rather than
    /// the sequence classifier.
    fn causal(&self, config: &ModelConfig) -> bool {
        let classes = config.json.get("architectures").and_then(Value::as_array);
        classes.is_some_and(|c| c.iter().any(|c| c.as_str() == Some(self.causal_class)))
    }

    /// What multiplies the embeddings: Gemma's √hidden, rounded to f32 as transformers
    /// rounds it to the activations' dtype.
    fn embedding_scale(&self, hidden: usize) -> f32 {
        match self.gemma {
            true => (hidden as f64).sqrt() as f32,
            false => 1.0,
        }
    }

    /// An RMS norm's gains: Gemma's stored as offsets from 1.
    fn gains(&self, weight: Tensor) -> candle_core::Result<Tensor> {
        match self.gemma {
            true => weight.affine(1.0, 1.0),
            false => Ok(weight),
        }
    }

    fn rms_norm(
        &self,
        vb: VarBuilder,
        size: usize,
        c: &ModelConfig,
    ) -> candle_core::Result<RmsNorm> {
        let gamma = self.gains(vb.get(size, "weight")?)?;
        Ok(RmsNorm {
            gamma: gamma.to_dtype(DType::F32)?.to_vec1()?,
            eps: c.layer_norm_eps as f32,
        })
    }

    /// The family's own settings, in transformers 4's form (top-level `rope_theta`,
    /// `rope_scaling`) or 5's (`rope_parameters`); what crossenc does not run is
    /// refused by name.
    fn extra(&self, config: &ModelConfig) -> Result<Extra, Refusal> {
        let json = &config.json;
        let name = self.identity.name;
        let flag = |field: &str| json.get(field).and_then(Value::as_bool);
        if flag("attention_bias") == Some(true) {
            return Err(Refusal::new(
                "attention_bias",
                "true",
                &format!("{name}'s attention has no biases but its family's"),
            ));
        }
        if flag("use_sliding_window") == Some(true) {
            return Err(Refusal::new(
                "use_sliding_window",
                "true",
                &format!("crossenc runs {name} with full attention in every layer"),
            ));
        }
        if let Some(types) = json.get("layer_types").and_then(Value::as_array) {
            if let Some(other) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                return Err(Refusal::new(
                    "layer_types",
                    &other.to_string(),
                    &format!("crossenc runs {name} with full_attention in every layer"),
                ));
            }
        }
        if let Some(scaling) = json.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(Refusal::new(
                "rope_scaling",
                &scaling.to_string(),
                "crossenc runs unscaled rotary positions (rope_scaling absent or null)",
            ));
        }
        let parameters = json.get("rope_parameters").filter(|p| !p.is_null());
        if let Some(kind) = parameters.and_then(|p| p.get("rope_type")) {
            if kind.as_str() != Some("default") {
                return Err(Refusal::new(
                    "rope_parameters.rope_type",
                    &kind.to_string(),
                    "crossenc runs the default (unscaled) rotary positions",
                ));
            }
        }
        let rope_theta = parameters
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| json.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let activation = match (self.gemma, config.hidden_act) {
            (false, HiddenAct::Silu) => HiddenAct::Silu,
            // transformers reads Gemma's legacy `gelu` as the tanh form it was trained with.
            (true, HiddenAct::GeluErf | HiddenAct::GeluTanh) => HiddenAct::GeluTanh,
            (_, other) => {
                return Err(Refusal::new(
                    "hidden_act",
                    &format!("{other:?}"),
                    match self.gemma {
                        true => "Gemma's gate is the tanh GELU (gelu_pytorch_tanh)",
                        false => "Qwen's gate is silu",
                    },
                ))
            }
        };
        if !self.causal(config) && config.num_labels() != 1 {
            return Err(Refusal::new(
                "num_labels",
                &config.num_labels().to_string(),
                &format!("a {name} sequence classifier reranks with one label"),
            ));
        }
        Ok(Extra {
            rope_theta,
            // transformers' default is to tie; Qwen's configs say false where absent.
            tied: flag("tie_word_embeddings").unwrap_or(self.gemma),
            activation,
        })
    }
}

fn attention_shape(c: &ModelConfig) -> AttentionShape {
    AttentionShape {
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
    }
}

/// The head's weights, `[labels, hidden]`: the answer tokens' rows (no, yes) of the
/// output projection or, tied, of the embeddings; a classifier's `score`.
fn head_rows(
    vb: &VarBuilder,
    c: &ModelConfig,
    extra: &Extra,
    words: &Tensor,
) -> candle_core::Result<Tensor> {
    let h = c.hidden_size;
    let Some(ids) = &c.answer_ids else {
        return vb.pp("score").get((c.num_labels(), h), "weight");
    };
    let ids = Tensor::new(ids.as_slice(), words.device())?;
    match extra.tied {
        true => words.index_select(&ids, 0),
        false => vb
            .pp("lm_head")
            .get((c.vocab_size, h), "weight")?
            .index_select(&ids, 0),
    }
}

/// A bias-free dense layer from `[outputs, inputs]` weights, as the packed pass reads it.
fn bias_free(weight: &Tensor) -> candle_core::Result<Linear> {
    dense(weight, vec![0.0; weight.dims2()?.0])
}

/// A dense layer from `[outputs, inputs]` weights and its biases.
fn dense(weight: &Tensor, bias: Vec<f32>) -> candle_core::Result<Linear> {
    let (outputs, inputs) = weight.dims2()?;
    let transposed = weight.t()?.contiguous()?.flatten_all()?.to_vec1()?;
    Ok(Linear::new(transposed, bias, inputs, outputs))
}

/// candle's padded pass: the GPU path, and the reference the packed pass is checked
/// against.
struct Padded {
    words: Embedding,
    embedding_scale: f64,
    activation: HiddenAct,
    layers: Vec<PaddedLayer>,
    final_norm: Tensor,
    /// `[labels, hidden]`.
    head: Tensor,
    cos: Tensor,
    sin: Tensor,
    shape: AttentionShape,
    eps: f32,
}

struct PaddedLayer {
    input_norm: Tensor,
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    query_norm: Option<Tensor>,
    key_norm: Option<Tensor>,
    out: candle_nn::Linear,
    mlp_norm: Tensor,
    gate: candle_nn::Linear,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
}

impl Padded {
    fn load(
        vb: VarBuilder,
        c: &ModelConfig,
        extra: &Extra,
        family: &Family,
    ) -> candle_core::Result<Self> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let shape = attention_shape(c);
        let model = vb.pp("model");
        let linear = |inputs, outputs, vb| candle_nn::linear_no_bias(inputs, outputs, vb);
        let projection = |inputs, outputs, vb| match family.qkv_bias {
            true => candle_nn::linear(inputs, outputs, vb),
            false => candle_nn::linear_no_bias(inputs, outputs, vb),
        };
        let gains = |vb: VarBuilder, size| family.gains(vb.get(size, "weight")?);
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let vb = model.pp("layers").pp(n);
                let (a, m) = (vb.pp("self_attn"), vb.pp("mlp"));
                let head_norm = |name: &str| -> candle_core::Result<Option<Tensor>> {
                    family.head_norms.then(|| gains(a.pp(name), d)).transpose()
                };
                Ok(PaddedLayer {
                    input_norm: gains(vb.pp("input_layernorm"), h)?,
                    q: projection(h, shape.heads * d, a.pp("q_proj"))?,
                    k: projection(h, shape.kv_heads * d, a.pp("k_proj"))?,
                    v: projection(h, shape.kv_heads * d, a.pp("v_proj"))?,
                    query_norm: head_norm("q_norm")?,
                    key_norm: head_norm("k_norm")?,
                    out: linear(shape.heads * d, h, a.pp("o_proj"))?,
                    mlp_norm: gains(vb.pp("post_attention_layernorm"), h)?,
                    gate: linear(h, i, m.pp("gate_proj"))?,
                    up: linear(h, i, m.pp("up_proj"))?,
                    down: linear(i, h, m.pp("down_proj"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        let words = model.pp("embed_tokens").get((c.vocab_size, h), "weight")?;
        let head = head_rows(&vb, c, extra, &words)?;
        let rotary = |f: fn(f32) -> f32| -> candle_core::Result<Tensor> {
            // The same angles as the packed pass's table, for the positions asked.
            let half = d / 2;
            let inverse: Vec<f32> = (0..half)
                .map(|k| (1.0 / extra.rope_theta.powf((2 * k) as f64 / d as f64)) as f32)
                .collect();
            let values: Vec<f32> = (0..c.max_position_embeddings)
                .flat_map(|p| inverse.iter().map(move |w| f(p as f32 * w)))
                .collect();
            Tensor::from_vec(values, (c.max_position_embeddings, half), vb.device())?
                .to_dtype(vb.dtype())
        };
        Ok(Self {
            words: Embedding::new(words, h),
            embedding_scale: family.embedding_scale(h) as f64,
            activation: extra.activation,
            layers,
            final_norm: gains(model.pp("norm"), h)?,
            head,
            cos: rotary(f32::cos)?,
            sin: rotary(f32::sin)?,
            shape,
            eps: c.layer_norm_eps as f32,
        })
    }

    /// `[pairs, 1, width, width]`: 0 where a query may read a key (not after it, not
    /// padding), the most negative float elsewhere.
    fn mask(
        &self,
        batch: &PaddedBatch,
        width: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut mask = Vec::with_capacity(batch.len() * width * width);
        for &len in batch.lengths() {
            for i in 0..width {
                mask.extend((0..width).map(|j| if j <= i && j < len { 0.0 } else { f32::MIN }));
            }
        }
        Tensor::from_vec(mask, (batch.len(), 1, width, width), device)
    }
}

impl PaddedModel for Padded {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, _) = batch.tensors(device)?;
        let (pairs, width) = ids.dims2()?;
        let mut x = self.words.forward(&ids)?;
        if self.embedding_scale != 1.0 {
            x = (x * self.embedding_scale)?;
        }
        let mask = self.mask(batch, width, device)?.to_dtype(x.dtype())?;
        let (cos, sin) = (self.cos.narrow(0, 0, width)?, self.sin.narrow(0, 0, width)?);
        for layer in &self.layers {
            x = layer.forward(&x, &mask, (&cos, &sin), self)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.final_norm, self.eps)?;
        let last: Vec<u32> = batch
            .lengths()
            .iter()
            .enumerate()
            .map(|(pair, len)| (pair * width + len - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), device)?;
        let hidden = x.dim(D::Minus1)?;
        let rows = x.reshape((pairs * width, hidden))?.index_select(&last, 0)?;
        rows.matmul(&self.head.t()?)?.to_dtype(DType::F32)
    }
}

impl PaddedLayer {
    /// `x` is `[pairs, width, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        model: &Padded,
    ) -> candle_core::Result<Tensor> {
        let (pairs, width, _) = x.dims3()?;
        let shape = model.shape;
        let d = shape.head_dim;
        let normed = candle_nn::ops::rms_norm(x, &self.input_norm, model.eps)?;
        let heads =
            |projection: &candle_nn::Linear, count: usize, norm: Option<&Tensor>, rotate: bool| {
                let t = projection
                    .forward(&normed)?
                    .reshape((pairs, width, count, d))?;
                let t = match norm {
                    Some(norm) => candle_nn::ops::rms_norm(&t, norm, model.eps)?,
                    None => t,
                };
                let t = t.transpose(1, 2)?.contiguous()?;
                match rotate {
                    true => candle_nn::rotary_emb::rope(&t, cos, sin),
                    false => Ok(t),
                }
            };
        let q = heads(&self.q, shape.heads, self.query_norm.as_ref(), true)?;
        let k = heads(&self.k, shape.kv_heads, self.key_norm.as_ref(), true)?;
        let v = heads(&self.v, shape.kv_heads, None, false)?;
        let group = shape.heads / shape.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, group)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, group)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((pairs, width, shape.heads * d))?;
        let x = (x + self.out.forward(&context)?)?;
        let normed = candle_nn::ops::rms_norm(&x, &self.mlp_norm, model.eps)?;
        let gate = self.gate.forward(&normed)?;
        let gate = match model.activation {
            HiddenAct::GeluTanh => gate.gelu()?,
            _ => gate.silu()?,
        };
        let gated = (gate * self.up.forward(&normed)?)?;
        x + self.down.forward(&gated)?
    }
}
