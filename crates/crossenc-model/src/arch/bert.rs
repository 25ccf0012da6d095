//! `BertForSequenceClassification`: `[CLS] A [SEP] B [SEP]` with token types 0 then 1,
//! absolute positions from 0, and the head on `[CLS]`: the pooler (dense + tanh)
//! under `bert.pooler`, then `classifier`. candle-transformers' BERT has no pooler or
//! classifier, so the padded pass is the shared layers' [`EncoderClassifier`].

use candle_nn::VarBuilder;

use super::{
    Architecture, HeadActivation, Identity, LayerNames, Layout, PaddedModel, PairTemplate,
};
use crate::layers::EncoderClassifier;
use crate::ModelConfig;

pub(crate) struct Bert;

static IDENTITY: Identity = Identity {
    name: "bert",
    classes: &["BertForSequenceClassification"],
    model_types: &["bert"],
    default_pad_token_id: 0,
};

impl Architecture for Bert {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "bert",
            names: Some(&BERT_LAYERS),
            head_dense: "bert.pooler.dense",
            head_activation: HeadActivation::Tanh,
            head_out: "classifier",
            position_table: true,
            first_position: 0,
            token_types: true,
            pair_template: Some(PairTemplate::ONE_SEPARATOR),
        }
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        Ok(Box::new(EncoderClassifier::load(vb, config)?))
    }
}

/// BERT's tensors under `bert.`; RoBERTa's, under `roberta.`, have the same names.
pub(super) static BERT_LAYERS: LayerNames = LayerNames {
    embeddings: "embeddings",
    token_type_embeddings: Some("token_type_embeddings"),
    embedding_norm: "LayerNorm",
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};
