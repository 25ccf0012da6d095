//! `ModernBertForSequenceClassification`: `[CLS] A [SEP] B [SEP]` without token types,
//! no position table (rotary positions), pre-norm layers whose local ones attend within
//! a sliding window, GeGLU, no biases, and the head (dense, activation, norm) on the
//! first token or the mean of the pair's tokens, then `classifier`.
//!
//! The padded pass is candle-transformers' `ModernBert` backbone with the head built
//! here: its own classifier ends in a softmax, which would turn a one-label head's logit
//! into 1.0.

use std::sync::Arc;

use candle_core::{Device, IndexOp, Module, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::modernbert;
use serde_json::Value;

use super::{Architecture, HeadActivation, Identity, Layout, PaddedModel, PairTemplate, Refusal};
use crate::packed::Linear;
use crate::packed::{
    ModernBertEncoder, ModernBertLayer, ModernBertShape, Norm, PackedPass, Pooling, Rotary,
};
use crate::{HiddenAct, ModelConfig, PaddedBatch};

pub(crate) struct ModernBert;

/// What ModernBERT reads from `config.json` beyond the common fields.
#[derive(Debug, Clone)]
struct Extra {
    /// Whether each layer attends globally (else within the window).
    global: Vec<bool>,
    global_theta: f64,
    local_theta: f64,
    /// `local_attention`: the whole window; a token sees half of it on each side.
    local_attention: usize,
    pooling: Pooling,
    head_activation: HiddenAct,
}

static IDENTITY: Identity = Identity {
    name: "modernbert",
    classes: &["ModernBertForSequenceClassification"],
    model_types: &["modernbert"],
    default_pad_token_id: 50283,
};

impl Architecture for ModernBert {
    fn no_candle_bf16(&self) -> Option<&'static str> {
        Some("candle's ModernBERT builds its attention masks in f32, so it runs f32 only")
    }

    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "model",
            names: None,
            head_dense: "head.dense",
            head_activation: HeadActivation::Gelu,
            head_out: "classifier",
            position_table: false,
            first_position: 0,
            token_types: false,
            pair_template: Some(PairTemplate::ONE_SEPARATOR),
        }
    }

    fn check(&self, config: &ModelConfig) -> Result<(), Refusal> {
        extra(config).map(|_| ())
    }

    fn packed(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PackedPass>> {
        let extra = extra(config)?;
        let c = config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps as f32;
        let head_dim = h / c.num_attention_heads;
        // One table per kind of layer, shared by the layers of that kind.
        let rotary = |theta| Arc::new(Rotary::new(theta, head_dim, c.max_position_embeddings));
        let (global, local) = (rotary(extra.global_theta), rotary(extra.local_theta));
        let model = vb.pp("model");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (n, &is_global) in extra.global.iter().enumerate() {
            let vb = model.pp("layers").pp(n);
            let rotary = Arc::clone(if is_global { &global } else { &local });
            layers.push(ModernBertLayer {
                attention_norm: (n > 0)
                    .then(|| norm(vb.pp("attn_norm"), h, eps))
                    .transpose()?,
                qkv: linear(vb.pp("attn.Wqkv"), h, 3 * h)?,
                attention_out: linear(vb.pp("attn.Wo"), h, h)?,
                mlp_norm: norm(vb.pp("mlp_norm"), h, eps)?,
                mlp_in: linear(vb.pp("mlp.Wi"), h, 2 * i)?,
                mlp_out: linear(vb.pp("mlp.Wo"), i, h)?,
                window: (!is_global).then_some(extra.local_attention / 2),
                rotary,
            });
        }
        let words = vb
            .pp("model.embeddings.tok_embeddings")
            .get((c.vocab_size, h), "weight")?;
        let classifier = vb.pp("classifier");
        Ok(Box::new(ModernBertEncoder {
            words: words.flatten_all()?.to_vec1()?,
            embedding_norm: norm(model.pp("embeddings.norm"), h, eps)?,
            layers,
            final_norm: norm(model.pp("final_norm"), h, eps)?,
            head_dense: linear(vb.pp("head.dense"), h, h)?,
            head_norm: norm(vb.pp("head.norm"), h, eps)?,
            classifier: Linear::new(
                transposed(&classifier.get((c.num_labels(), h), "weight")?)?,
                classifier.get(c.num_labels(), "bias")?.to_vec1()?,
                h,
                c.num_labels(),
            ),
            shape: ModernBertShape {
                hidden: h,
                heads: c.num_attention_heads,
                intermediate: i,
                activation: c.hidden_act,
                head_activation: extra.head_activation,
                pooling: extra.pooling,
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
        let c = config;
        // candle-transformers places global layers every n; `check` refused other patterns.
        let every = extra
            .global
            .iter()
            .skip(1)
            .position(|&g| g)
            .map_or(c.num_hidden_layers, |p| p + 1);
        let theirs = modernbert::Config {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            max_position_embeddings: c.max_position_embeddings,
            layer_norm_eps: c.layer_norm_eps,
            pad_token_id: c.pad_token_id,
            global_attn_every_n_layers: every,
            global_rope_theta: extra.global_theta,
            local_attention: extra.local_attention,
            local_rope_theta: extra.local_theta,
            classifier_config: None,
        };
        let h = c.hidden_size;
        let head = vb.pp("head");
        Ok(Box::new(Padded {
            backbone: modernbert::ModernBert::load(vb.clone(), &theirs)?,
            dense: candle_nn::linear_no_bias(h, h, head.pp("dense"))?,
            norm: candle_nn::layer_norm_no_bias(h, c.layer_norm_eps, head.pp("norm"))?,
            classifier: candle_nn::linear(h, c.num_labels(), vb.pp("classifier"))?,
            pooling: extra.pooling,
            head_activation: extra.head_activation,
        }))
    }
}

struct Padded {
    backbone: modernbert::ModernBert,
    dense: candle_nn::Linear,
    norm: candle_nn::LayerNorm,
    classifier: candle_nn::Linear,
    pooling: Pooling,
    head_activation: HiddenAct,
}

impl PaddedModel for Padded {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, _) = batch.tensors(device)?;
        let mask = batch.real_tokens_mask(device, self.dense.weight().dtype())?;
        let hidden = self.backbone.forward(&ids, &mask)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.i((.., 0, ..))?.contiguous()?,
            Pooling::Mean => hidden
                .broadcast_mul(&mask.unsqueeze(D::Minus1)?)?
                .sum(1)?
                .broadcast_div(&mask.sum_keepdim(1)?)?,
            Pooling::Last => candle_core::bail!("ModernBERT pools on the first token or the mean"),
        };
        let x = self.dense.forward(&pooled)?;
        let x = match self.head_activation {
            HiddenAct::GeluErf => x.gelu_erf()?,
            HiddenAct::GeluTanh => x.gelu()?,
            HiddenAct::Relu => x.relu()?,
            HiddenAct::Silu => x.silu()?,
        };
        self.classifier.forward(&self.norm.forward(&x)?)
    }
}

/// ModernBERT's own settings, in transformers 5's form (`layer_types`,
/// `rope_parameters`) or the older one (`global_attn_every_n_layers`,
/// `global_rope_theta`, `local_rope_theta`).
fn extra(config: &ModelConfig) -> Result<Extra, Refusal> {
    let json = &config.json;
    let layers = config.num_hidden_layers;
    for field in ["norm_bias", "attention_bias", "mlp_bias", "classifier_bias"] {
        if json.get(field).and_then(Value::as_bool) == Some(true) {
            return Err(Refusal::new(
                field,
                "true",
                "crossenc runs ModernBERT without biases, as released",
            ));
        }
    }
    let global: Vec<bool> = match json.get("layer_types").and_then(Value::as_array) {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(true),
                Some("sliding_attention") => Ok(false),
                _ => Err(Refusal::new(
                    "layer_types",
                    &t.to_string(),
                    "full_attention or sliding_attention",
                )),
            })
            .collect::<Result<_, _>>()?,
        None => {
            let every = json
                .get("global_attn_every_n_layers")
                .and_then(Value::as_u64)
                .unwrap_or(3)
                .max(1) as usize;
            (0..layers).map(|i| i % every == 0).collect()
        }
    };
    if global.len() != layers {
        return Err(Refusal::new(
            "layer_types",
            &global.len().to_string(),
            "one per layer (num_hidden_layers)",
        ));
    }
    let every = global
        .iter()
        .skip(1)
        .position(|&g| g)
        .map_or(layers, |p| p + 1);
    if global
        .iter()
        .enumerate()
        .any(|(i, &g)| g != (i % every == 0))
    {
        return Err(Refusal::new(
            "layer_types",
            "an irregular pattern",
            "a global layer every n layers, starting with the first",
        ));
    }
    let theta = |kind: &str, older: &str, default: f64| -> Result<f64, Refusal> {
        let parameters = json.get("rope_parameters").and_then(|p| p.get(kind));
        if let Some(rope_type) = parameters
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
        {
            if rope_type != "default" {
                return Err(Refusal::new(
                    "rope_parameters",
                    rope_type,
                    "crossenc runs the default rotary type",
                ));
            }
        }
        Ok(parameters
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| json.get(older))
            .and_then(Value::as_f64)
            .unwrap_or(default))
    };
    let pooling = match json
        .get("classifier_pooling")
        .and_then(Value::as_str)
        .unwrap_or("cls")
    {
        "cls" => Pooling::Cls,
        "mean" => Pooling::Mean,
        other => return Err(Refusal::new("classifier_pooling", other, "cls or mean")),
    };
    let head_activation = match json
        .get("classifier_activation")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => HiddenAct::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
        "relu" => HiddenAct::Relu,
        "silu" => HiddenAct::Silu,
        other => {
            return Err(Refusal::new(
                "classifier_activation",
                other,
                "gelu, gelu_new, gelu_pytorch_tanh or relu",
            ))
        }
    };
    Ok(Extra {
        global,
        global_theta: theta("full_attention", "global_rope_theta", 160_000.0)?,
        local_theta: theta("sliding_attention", "local_rope_theta", 10_000.0)?,
        local_attention: json
            .get("local_attention")
            .and_then(Value::as_u64)
            .unwrap_or(128) as usize,
        pooling,
        head_activation,
    })
}

/// A bias-free dense layer, `[inputs, outputs]` as the packed pass reads it.
fn linear(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Linear> {
    let weight = vb.get((outputs, inputs), "weight")?;
    Ok(Linear::new(
        transposed(&weight)?,
        vec![0.0; outputs],
        inputs,
        outputs,
    ))
}

fn transposed(weight: &Tensor) -> candle_core::Result<Vec<f32>> {
    weight.t()?.contiguous()?.flatten_all()?.to_vec1()
}

/// A bias-free layer norm.
fn norm(vb: VarBuilder, size: usize, eps: f32) -> candle_core::Result<Norm> {
    Ok(Norm {
        gamma: vb.get(size, "weight")?.to_vec1()?,
        beta: vec![0.0; size],
        eps,
    })
}
