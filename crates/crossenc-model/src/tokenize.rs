use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::{ModelError, ModelFolder};

/// Encodes (query, document) pairs as `transformers` does: `[CLS] query [SEP] document
/// [SEP]`, token type ids 0 then 1, `longest_first` truncation to `max_length`, no padding.
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

/// One encoded pair.
pub struct EncodedPair(Encoding);

impl EncodedPair {
    pub fn ids(&self) -> &[u32] {
        self.0.get_ids()
    }

    pub fn type_ids(&self) -> &[u32] {
        self.0.get_type_ids()
    }
}

impl PairTokenizer {
    /// Loads `tokenizer.json`. Its own truncation and padding settings are replaced:
    /// `max_length` rules, and padding is the scheduler's business.
    pub fn load(folder: &ModelFolder, max_length: usize) -> Result<Self, ModelError> {
        let path = folder.tokenizer_path();
        let tokenizer_error = |message: String| ModelError::Tokenizer {
            path: path.clone(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| tokenizer_error(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tokenizer_error(e.to_string()))?;
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn encode(&self, query: &str, document: &str) -> Result<EncodedPair, ModelError> {
        self.tokenizer
            .encode((query, document), true)
            .map(EncodedPair)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }
}
