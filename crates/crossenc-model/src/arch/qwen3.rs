//! Qwen3, a decoder, as a reranker: `Qwen3ForCausalLM` (Qwen/Qwen3-Reranker-*) scored
//! by the logits of the template's answer tokens ("no", "yes") at the last position,
//! or `Qwen3ForSequenceClassification` (the converted checkpoints) by its one-label
//! score there. Pre-norm layers with RMS norms, grouped-query attention with each
//! query and key head RMS-normed and rotated, causal; SwiGLU; no biases.
//!
//! The head is two rows of the output projection (or of the tied embeddings), never the
//! whole vocabulary's product. The padded pass is built here on candle's ops, gathering
//! each pair's last real row: candle-transformers' Qwen3 keeps a KV cache behind
//! `&mut self` and reads position `len - 1` of the padded width.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Module, VarBuilder};
use serde_json::Value;

use super::{Architecture, HeadActivation, Identity, Layout, PaddedModel, Refusal};
use crate::packed::{
    AttentionShape, DecoderLayer, DecoderPass, DecoderShape, Linear, PackedPass, RmsNorm, Rotary,
};
use crate::{ModelConfig, PaddedBatch};

pub(crate) struct Qwen3;

static IDENTITY: Identity = Identity {
    name: "qwen3",
    classes: &["Qwen3ForCausalLM", "Qwen3ForSequenceClassification"],
    model_types: &["qwen3"],
    // `<|endoftext|>`, Qwen's padding.
    default_pad_token_id: 151643,
};

/// What Qwen3 reads from `config.json` beyond the common fields.
struct Extra {
    rope_theta: f64,
    tied: bool,
}

impl Architecture for Qwen3 {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
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
        extra(config).map(|_| ())
    }

    fn scores_by_answers(&self, config: &ModelConfig) -> bool {
        causal(config)
    }

    fn packed(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PackedPass>> {
        let extra = extra(config)?;
        let c = config;
        let shape = attention_shape(c);
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let eps = c.layer_norm_eps as f32;
        let model = vb.pp("model");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let vb = model.pp("layers").pp(n);
            let attention = vb.pp("self_attn");
            let mlp = vb.pp("mlp");
            let projection = |vb: VarBuilder, outputs| vb.get((outputs, h), "weight");
            let (q, kv) = (shape.heads * d, shape.kv_heads * d);
            let qkv = Tensor::cat(
                &[
                    projection(attention.pp("q_proj"), q)?,
                    projection(attention.pp("k_proj"), kv)?,
                    projection(attention.pp("v_proj"), kv)?,
                ],
                0,
            )?;
            let gate_up = Tensor::cat(
                &[
                    projection(mlp.pp("gate_proj"), i)?,
                    projection(mlp.pp("up_proj"), i)?,
                ],
                0,
            )?;
            layers.push(DecoderLayer {
                input_norm: rms_norm(vb.pp("input_layernorm"), h, eps)?,
                qkv: bias_free(&qkv)?,
                query_norm: Some(rms_norm(attention.pp("q_norm"), d, eps)?),
                key_norm: Some(rms_norm(attention.pp("k_norm"), d, eps)?),
                attention_out: bias_free(&attention.pp("o_proj").get((h, q), "weight")?)?,
                mlp_norm: rms_norm(vb.pp("post_attention_layernorm"), h, eps)?,
                gate_up: bias_free(&gate_up)?,
                down: bias_free(&mlp.pp("down_proj").get((h, i), "weight")?)?,
            });
        }
        let words = model.pp("embed_tokens").get((c.vocab_size, h), "weight")?;
        Ok(Box::new(DecoderPass {
            words: words.flatten_all()?.to_vec1()?,
            layers,
            final_norm: rms_norm(model.pp("norm"), h, eps)?,
            head: bias_free(&head_rows(&vb, c, &extra, &words)?)?,
            rotary: Rotary::new(extra.rope_theta, d, c.max_position_embeddings),
            shape: DecoderShape {
                hidden: h,
                attention: shape,
                intermediate: i,
                activation: c.hidden_act,
            },
            scratch: Default::default(),
        }))
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        let extra = extra(config)?;
        Ok(Box::new(Padded::load(vb, config, &extra)?))
    }
}

/// Whether the checkpoint is the causal LM (scored by answer tokens) rather than the
/// sequence classifier.
fn causal(config: &ModelConfig) -> bool {
    let classes = config.json.get("architectures").and_then(Value::as_array);
    classes.is_some_and(|c| c.iter().any(|c| c.as_str() == Some("Qwen3ForCausalLM")))
}

fn attention_shape(c: &ModelConfig) -> AttentionShape {
    AttentionShape {
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
    }
}

/// Qwen3's own settings, in transformers 4's form (top-level `rope_theta`,
/// `rope_scaling`) or 5's (`rope_parameters`); what crossenc does not run is refused
/// by name.
fn extra(config: &ModelConfig) -> Result<Extra, Refusal> {
    let json = &config.json;
    let flag = |field: &str| json.get(field).and_then(Value::as_bool).unwrap_or(false);
    if flag("attention_bias") {
        return Err(Refusal::new(
            "attention_bias",
            "true",
            "Qwen3's attention has no biases",
        ));
    }
    if flag("use_sliding_window") {
        return Err(Refusal::new(
            "use_sliding_window",
            "true",
            "crossenc runs Qwen3 with full attention in every layer",
        ));
    }
    if let Some(types) = json.get("layer_types").and_then(Value::as_array) {
        if let Some(other) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
            return Err(Refusal::new(
                "layer_types",
                &other.to_string(),
                "crossenc runs Qwen3 with full_attention in every layer",
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
    if config.hidden_act != crate::HiddenAct::Silu {
        return Err(Refusal::new(
            "hidden_act",
            &format!("{:?}", config.hidden_act),
            "Qwen3's gate is silu",
        ));
    }
    if !causal(config) && config.num_labels() != 1 {
        return Err(Refusal::new(
            "num_labels",
            &config.num_labels().to_string(),
            "a Qwen3 sequence classifier reranks with one label",
        ));
    }
    Ok(Extra {
        rope_theta,
        tied: flag("tie_word_embeddings"),
    })
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
    let Some(ids) = c.answer_ids else {
        return vb.pp("score").get((c.num_labels(), h), "weight");
    };
    let ids = Tensor::new(&ids, words.device())?;
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
    let (outputs, inputs) = weight.dims2()?;
    let transposed = weight.t()?.contiguous()?.flatten_all()?.to_vec1()?;
    Ok(Linear::new(transposed, vec![0.0; outputs], inputs, outputs))
}

fn rms_norm(vb: VarBuilder, size: usize, eps: f32) -> candle_core::Result<RmsNorm> {
    Ok(RmsNorm {
        gamma: vb.get(size, "weight")?.to_vec1()?,
        eps,
    })
}

/// candle's padded pass: the GPU path, and the reference the packed pass is checked
/// against.
struct Padded {
    words: Embedding,
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
    query_norm: Tensor,
    key_norm: Tensor,
    out: candle_nn::Linear,
    mlp_norm: Tensor,
    gate: candle_nn::Linear,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
}

impl Padded {
    fn load(vb: VarBuilder, c: &ModelConfig, extra: &Extra) -> candle_core::Result<Self> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let shape = attention_shape(c);
        let model = vb.pp("model");
        let linear = |inputs, outputs, vb| candle_nn::linear_no_bias(inputs, outputs, vb);
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let vb = model.pp("layers").pp(n);
                let (a, m) = (vb.pp("self_attn"), vb.pp("mlp"));
                Ok(PaddedLayer {
                    input_norm: vb.pp("input_layernorm").get(h, "weight")?,
                    q: linear(h, shape.heads * d, a.pp("q_proj"))?,
                    k: linear(h, shape.kv_heads * d, a.pp("k_proj"))?,
                    v: linear(h, shape.kv_heads * d, a.pp("v_proj"))?,
                    query_norm: a.pp("q_norm").get(d, "weight")?,
                    key_norm: a.pp("k_norm").get(d, "weight")?,
                    out: linear(shape.heads * d, h, a.pp("o_proj"))?,
                    mlp_norm: vb.pp("post_attention_layernorm").get(h, "weight")?,
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
            layers,
            final_norm: model.pp("norm").get(h, "weight")?,
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
        let heads = |projection: &candle_nn::Linear, count: usize, norm: Option<&Tensor>| {
            let t = projection
                .forward(&normed)?
                .reshape((pairs, width, count, d))?;
            let t = match norm {
                Some(norm) => candle_nn::ops::rms_norm(&t, norm, model.eps)?,
                None => t,
            };
            let t = t.transpose(1, 2)?.contiguous()?;
            match norm {
                Some(_) => candle_nn::rotary_emb::rope(&t, cos, sin),
                None => Ok(t),
            }
        };
        let q = heads(&self.q, shape.heads, Some(&self.query_norm))?;
        let k = heads(&self.k, shape.kv_heads, Some(&self.key_norm))?;
        let v = heads(&self.v, shape.kv_heads, None)?;
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
        let gated = (self.gate.forward(&normed)?.silu()? * self.up.forward(&normed)?)?;
        x + self.down.forward(&gated)?
    }
}
