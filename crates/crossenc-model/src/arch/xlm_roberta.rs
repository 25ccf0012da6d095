//! `XLMRobertaForSequenceClassification`, and RoBERTa and CamemBERT, which share its
//! layout: `<s> A </s></s> B </s>`, no token types (one row in the table), positions
//! counted from `pad_token_id + 1`, the encoder under `roberta` and the head (dense +
//! tanh on `<s>`, then `out_proj`) under `classifier`. The padded pass is
//! candle-transformers' own model.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::xlm_roberta;

use super::bert::BERT_LAYERS;
use super::{Architecture, HeadActivation, Identity, Layout, PaddedModel, PairTemplate};
use crate::{HiddenAct, ModelConfig, PaddedBatch};

pub(crate) struct XlmRoberta;

static IDENTITY: Identity = Identity {
    name: "xlm-roberta",
    classes: &[
        "XLMRobertaForSequenceClassification",
        "RobertaForSequenceClassification",
        "CamembertForSequenceClassification",
    ],
    model_types: &["xlm-roberta", "roberta", "camembert"],
    default_pad_token_id: 1,
};

impl Architecture for XlmRoberta {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    fn layout(&self, pad_token_id: u32) -> Layout {
        Layout {
            encoder: "roberta",
            names: Some(&BERT_LAYERS),
            head_dense: "classifier.dense",
            head_activation: HeadActivation::Tanh,
            head_out: "classifier.out_proj",
            position_table: true,
            first_position: pad_token_id as usize + 1,
            token_types: false,
            pair_template: Some(PairTemplate::TWO_SEPARATORS),
        }
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        let c = config;
        let hidden_act = match c.hidden_act {
            HiddenAct::GeluErf => candle_nn::Activation::Gelu,
            HiddenAct::GeluTanh => candle_nn::Activation::NewGelu,
            HiddenAct::Relu => candle_nn::Activation::Relu,
            HiddenAct::Silu => candle_nn::Activation::Silu,
        };
        let theirs = xlm_roberta::Config {
            hidden_size: c.hidden_size,
            layer_norm_eps: c.layer_norm_eps,
            attention_probs_dropout_prob: 0.0,
            hidden_dropout_prob: 0.0,
            num_attention_heads: c.num_attention_heads,
            position_embedding_type: "absolute".into(),
            intermediate_size: c.intermediate_size,
            hidden_act,
            num_hidden_layers: c.num_hidden_layers,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: c.type_vocab_size,
            pad_token_id: c.pad_token_id,
        };
        let model =
            xlm_roberta::XLMRobertaForSequenceClassification::new(c.num_labels(), &theirs, vb)?;
        Ok(Box::new(Padded(model)))
    }
}

struct Padded(xlm_roberta::XLMRobertaForSequenceClassification);

impl PaddedModel for Padded {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, _) = batch.tensors(device)?;
        let mask = batch.real_tokens_mask(device, DType::U32)?;
        self.0.forward(&ids, &mask, &ids.zeros_like()?)
    }
}
