//! `DistilBertForSequenceClassification`: BERT's `[CLS] A [SEP] B [SEP]` without token
//! types (no table, and its tokenizer gives the model none), its own tensor names under
//! `distilbert`, and a head of `pre_classifier` + ReLU on `[CLS]`, then `classifier`.
//! candle-transformers' DistilBERT computes GELU by its tanh approximation, ~1e-3 away
//! from transformers' exact one, and has no classifier: the padded pass is the shared
//! layers' [`EncoderClassifier`].

use candle_nn::VarBuilder;

use super::{
    Architecture, HeadActivation, Identity, LayerNames, Layout, PaddedModel, PairTemplate,
};
use crate::layers::EncoderClassifier;
use crate::ModelConfig;

pub(crate) struct DistilBert;

static DISTILBERT_LAYERS: LayerNames = LayerNames {
    embeddings: "embeddings",
    token_type_embeddings: None,
    embedding_norm: "LayerNorm",
    layers: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

static IDENTITY: Identity = Identity {
    name: "distilbert",
    classes: &["DistilBertForSequenceClassification"],
    model_types: &["distilbert"],
    default_pad_token_id: 0,
};

impl Architecture for DistilBert {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "distilbert",
            names: Some(&DISTILBERT_LAYERS),
            head_dense: "pre_classifier",
            head_activation: HeadActivation::Relu,
            head_out: "classifier",
            position_table: true,
            first_position: 0,
            token_types: false,
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
