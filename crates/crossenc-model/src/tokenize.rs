use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{ModelError, ModelFolder};

/// Encodes (query, document) pairs as `transformers` does: `[CLS] query [SEP] document
/// [SEP]`, token type ids 0 then 1, `longest_first` truncation to `max_length`, no padding.
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, to count a text's own tokens.
    untruncated: Tokenizer,
    max_length: usize,
    /// Tokens of a pair's two texts that truncation keeps (max_length less the
    /// template's special tokens).
    pair_budget: usize,
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

/// One text tokenized on its own (no special tokens, no truncation).
pub struct EncodedText(Encoding);

impl EncodedText {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
        let mut untruncated = tokenizer.clone();
        untruncated
            .with_truncation(None)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tokenizer_error(e.to_string()))?;
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        Ok(Self {
            tokenizer,
            untruncated,
            max_length,
            pair_budget: max_length.saturating_sub(special),
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenizes one text alone (no special tokens, no truncation), to check a cut.
    pub fn encode_text(&self, text: &str) -> Result<EncodedText, ModelError> {
        // `encode`, not `encode_fast`: the fast one leaves every word id empty, and the
        // cut check counts words.
        self.untruncated
            .encode(text, false)
            .map(EncodedText)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }

    /// Tokens of `prefix`, a text cut short at an arbitrary char, that the whole text
    /// surely has too: those of every word but the one the cut fell in.
    ///
    /// Tokenizers split a text into words first (whitespace, punctuation) and tokenize
    /// each word alone, so a cut can change only the tokens of the word it falls in.
    /// When the words before that one already hold `max_length` tokens, truncation
    /// keeps no token past them, whatever followed the cut (see
    /// [`PairTokenizer::cut_splits_as_whole`] for the one other thing a cut decides).
    pub fn tokens_before_the_cut(&self, prefix: &EncodedText) -> usize {
        let words = prefix.0.get_word_ids();
        let last = words.last().copied().flatten();
        words.iter().filter(|&&w| w.is_none() || w != last).count()
    }

    /// Whether a cut text with `tokens_before_the_cut` (at least `max_length`) keeps
    /// every token a pair of the whole text would.
    pub fn prefix_keeps_every_token(&self, tokens_before_the_cut: usize) -> bool {
        tokens_before_the_cut >= self.max_length
    }

    /// Whether a pair of a cut text (with `tokens_before_the_cut`, every token kept) and
    /// a text of `other` tokens (`None`: cut too) is truncated as the pair of the whole
    /// texts would be. Longest-first truncation gives the odd token of an odd budget to
    /// the longer text, and the whole cut text is longer than what was kept of it by an
    /// amount unknown here: the split is decided only when the budget is even, when the
    /// other text fits in half of it (then it keeps all of its tokens), or when it is
    /// shorter than what surely was the cut text's.
    pub fn cut_splits_as_whole(&self, tokens_before_the_cut: usize, other: Option<usize>) -> bool {
        let budget = self.pair_budget;
        budget.is_multiple_of(2)
            || other.is_some_and(|other| other <= budget / 2 || other < tokens_before_the_cut)
    }

    pub fn encode(&self, query: &str, document: &str) -> Result<EncodedPair, ModelError> {
        self.tokenizer
            .encode((query, document), true)
            .map(EncodedPair)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }
}
