//! `BertForSequenceClassification`: `[CLS] A [SEP] B [SEP]` with token types 0 then 1,
//! absolute positions from 0, and the head on `[CLS]`: the pooler (dense + tanh)
//! under `bert.pooler`, then `classifier`. candle-transformers' BERT has no pooler or
//! classifier, so the padded pass is built here from the shared layers.

use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;

use super::{Architecture, Layout, PaddedModel, PairTemplate};
use crate::layers::{attention_mask, encoder_layers, Dense, Embeddings, EncoderLayer};
use crate::{ModelConfig, PaddedBatch};

pub(crate) struct Bert;

impl Architecture for Bert {
    fn name(&self) -> &'static str {
        "bert"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["BertForSequenceClassification"]
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["bert"]
    }

    fn default_pad_token_id(&self) -> u32 {
        0
    }

    fn layout(&self, _pad_token_id: u32) -> Layout {
        Layout {
            encoder: "bert",
            head_dense: "bert.pooler.dense",
            head_out: "classifier",
            first_position: 0,
            token_types: true,
            pair_template: PairTemplate {
                before: 1,
                between: 1,
                after: 1,
            },
        }
    }

    fn padded(
        &self,
        vb: VarBuilder,
        config: &ModelConfig,
    ) -> candle_core::Result<Box<dyn PaddedModel>> {
        let c = config;
        let bert = vb.pp("bert");
        Ok(Box::new(BertClassifier {
            embeddings: Embeddings::load(bert.pp("embeddings"), c)?,
            layers: encoder_layers(bert.pp("encoder"), c)?,
            pooler: Dense::load(bert.pp("pooler.dense"), c.hidden_size, c.hidden_size)?,
            classifier: Dense::load(vb.pp("classifier"), c.hidden_size, c.num_labels())?,
            config: c.clone(),
        }))
    }
}

struct BertClassifier {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    pooler: Dense,
    classifier: Dense,
    config: ModelConfig,
}

impl PaddedModel for BertClassifier {
    fn logits(&self, batch: &PaddedBatch, device: &Device) -> candle_core::Result<Tensor> {
        let (ids, type_ids) = batch.tensors(device)?;
        let (pairs, width) = ids.dims2()?;
        let mask = attention_mask(batch.lengths(), width, ids.device())?;
        let mut x = self.embeddings.forward(&ids, &type_ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref(), (pairs, width), &self.config)?;
        }
        let cls = x
            .reshape((pairs, width, self.config.hidden_size))?
            .narrow(1, 0, 1)?
            .squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let logits = self.classifier.forward(&pooled)?;
        debug_assert_eq!(logits.dim(D::Minus1)?, self.config.num_labels());
        Ok(logits)
    }
}
