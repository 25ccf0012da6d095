//! `DebertaV2ForSequenceClassification` in DeBERTa-v3's shape (mxbai-rerank's):
//! `[CLS] A [SEP] B [SEP]`, no absolute positions and no token types, BERT's post-norm
//! layers under `deberta.encoder.layer` with disentangled attention (content-to-position
//! and position-to-content scores over log-bucketed relative distances, the relative
//! embeddings normed once and projected by each layer's own query and key), and the
//! context pooler (dense + GELU on `[CLS]`) before `classifier`.
//!
//! The packed pass is the BERT pass with [`RelativeAttention`]; the padded pass is
//! candle-transformers' `DebertaV2SeqClassificationModel`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::debertav2;
use serde_json::Value;

use super::{
    Architecture, HeadActivation, Identity, LayerNames, Layout, PaddedModel, PairTemplate, Refusal,
};
use crate::layers::pack_encoder;
use crate::packed::{Norm, PackedPass, ProductScratch, RelativeAttention};
use crate::{ModelConfig, PaddedBatch};

pub(crate) struct DebertaV2;

static DEBERTA_LAYERS: LayerNames = LayerNames {
    embeddings: "embeddings",
    token_type_embeddings: None,
    embedding_norm: "LayerNorm",
    layers: "encoder.layer",
    query: "attention.self.query_proj",
    key: "attention.self.key_proj",
    value: "attention.self.value_proj",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

static IDENTITY: Identity = Identity {
    name: "deberta-v2",
    classes: &["DebertaV2ForSequenceClassification"],
    model_types: &["deberta-v2"],
    default_pad_token_id: 0,
};

impl Architecture for DebertaV2 {
    fn no_candle_bf16(&self) -> Option<&'static str> {
        Some("candle's DeBERTa-v2 mixes f32 into its relative attention, so it runs f32 only")
    }

    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "deberta",
            names: Some(&DEBERTA_LAYERS),
            head_dense: "pooler.dense",
            head_activation: HeadActivation::Gelu,
            head_out: "classifier",
            position_table: false,
            first_position: 0,
            token_types: false,
            pair_template: Some(PairTemplate::ONE_SEPARATOR),
        }
    }

    fn check(&self, config: &ModelConfig) -> Result<(), Refusal> {
        span(config).map(|_| ())
    }

    fn packed(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PackedPass>> {
        let (span, buckets, max_position) = span(config)?;
        let h = config.hidden_size;
        let mut encoder = pack_encoder(vb.clone(), config)?;
        let vb = vb.pp("deberta.encoder");
        let mut embeddings: Vec<f32> = vb
            .get((2 * span, h), "rel_embeddings.weight")?
            .flatten_all()?
            .to_vec1()?;
        let norm = Norm {
            gamma: vb.get(h, "LayerNorm.weight")?.to_vec1()?,
            beta: vb.get(h, "LayerNorm.bias")?.to_vec1()?,
            eps: config.layer_norm_eps as f32,
        };
        norm.apply(&mut embeddings, h);
        let mut scratch = ProductScratch::new(1);
        let projected = encoder
            .layers
            .iter()
            .map(|layer| {
                let mut out = Vec::new();
                layer
                    .qkv
                    .forward(&embeddings, 2 * span, None, &mut out, &mut scratch)
                    .map(|()| out)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        encoder.relative = Some(RelativeAttention {
            projected,
            span,
            buckets,
            max_position,
        });
        Ok(Box::new(encoder))
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        let theirs: debertav2::Config = serde_json::from_value((*config.json).clone())
            .map_err(|e| candle_core::Error::Msg(format!("config.json for candle: {e}")))?;
        let model =
            debertav2::DebertaV2SeqClassificationModel::load(vb.pp("deberta"), &theirs, None)?;
        Ok(Box::new(Padded(model)))
    }
}

struct Padded(debertav2::DebertaV2SeqClassificationModel);

impl PaddedModel for Padded {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, _) = batch.tensors(device)?;
        let mask = batch.real_tokens_mask(device, DType::U32)?;
        self.0.forward(&ids, None, Some(mask))
    }
}

/// The relative span (embeddings on each side), the buckets and the largest distance,
/// after refusing the DeBERTa variants crossenc does not run.
fn span(config: &ModelConfig) -> Result<(usize, usize, usize), Refusal> {
    let json = &config.json;
    let flag = |name: &str| json.get(name).and_then(Value::as_bool);
    let require = |ok: bool, field: &'static str, allowed: &str| {
        let value = json
            .get(field)
            .map_or("absent".to_string(), Value::to_string);
        ok.then_some(())
            .ok_or_else(|| Refusal::new(field, &value, allowed))
    };
    require(
        flag("relative_attention") == Some(true),
        "relative_attention",
        "crossenc runs DeBERTa with relative attention (v2/v3)",
    )?;
    require(
        flag("position_biased_input") == Some(false),
        "position_biased_input",
        "crossenc runs DeBERTa-v3's shape: false",
    )?;
    require(
        flag("share_att_key") == Some(true),
        "share_att_key",
        "crossenc runs DeBERTa-v3's shape: true",
    )?;
    let kinds: Vec<String> = match json.get("pos_att_type") {
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(Value::String(kinds)) => kinds.split('|').map(String::from).collect(),
        _ => Vec::new(),
    };
    let both =
        kinds.len() == 2 && kinds.iter().any(|k| k == "c2p") && kinds.iter().any(|k| k == "p2c");
    require(both, "pos_att_type", "crossenc runs c2p and p2c together")?;
    let norm = json
        .get("norm_rel_ebd")
        .and_then(Value::as_str)
        .unwrap_or("none");
    require(
        norm.contains("layer_norm"),
        "norm_rel_ebd",
        "crossenc runs DeBERTa-v3's shape: layer_norm",
    )?;
    let none_or = |field: &str, value: u64| {
        json.get(field)
            .and_then(Value::as_u64)
            .is_none_or(|v| v == value)
    };
    require(
        none_or("conv_kernel_size", 0),
        "conv_kernel_size",
        "crossenc runs DeBERTa without its convolution layer",
    )?;
    require(
        none_or("type_vocab_size", 0),
        "type_vocab_size",
        "crossenc runs DeBERTa-v3's shape: 0",
    )?;
    let h = config.hidden_size as u64;
    require(
        none_or("embedding_size", h),
        "embedding_size",
        "must equal hidden_size",
    )?;
    require(
        none_or("pooler_hidden_size", h),
        "pooler_hidden_size",
        "must equal hidden_size",
    )?;
    let pooler_act = json
        .get("pooler_hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    require(
        pooler_act == "gelu",
        "pooler_hidden_act",
        "crossenc runs gelu",
    )?;
    let heads = config.num_attention_heads as u64;
    require(
        none_or("attention_head_size", h / heads),
        "attention_head_size",
        "must be hidden_size / num_attention_heads",
    )?;
    let buckets = json
        .get("position_buckets")
        .and_then(Value::as_i64)
        .unwrap_or(-1)
        .max(0) as usize;
    let max_relative = json
        .get("max_relative_positions")
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let max_position = if max_relative < 1 {
        config.max_position_embeddings
    } else {
        max_relative as usize
    };
    let span = if buckets > 0 { buckets } else { max_position };
    Ok((span, buckets, max_position))
}
