use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

use crate::{ModelError, ModelFolder, PairTemplate};

/// Encodes (query, document) pairs as `transformers` does: the tokenizer's own pair
/// template (`[CLS] query [SEP] document [SEP]` for BERT, `<s> query </s></s> document
/// </s>` for RoBERTa), `longest_first` truncation to `max_length`, no padding.
pub struct PairTokenizer {
    /// `tokenizer.json` without its own truncation and padding.
    tokenizer: Tokenizer,
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
        tokenizer
            .with_truncation(None)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        check_vocabulary(&tokenizer, folder)?;
        check_pair_template(&tokenizer, folder)?;
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        Ok(Self {
            tokenizer,
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
        self.tokenizer
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

    /// The pair as transformers' tokenizer builds it: each text tokenized alone,
    /// truncated longest-first to the pair's budget, then the template's special tokens.
    ///
    /// The truncation is ours because the `tokenizers` crate (0.23.2) cuts each text to
    /// `max_length` before splitting the budget: where both texts are longer than
    /// that, it sees a tie and gives an odd budget's extra token to the second text,
    /// while Python's tokenizers (which transformers and sentence-transformers call)
    /// give it to the longer one.
    pub fn encode(&self, query: &str, document: &str) -> Result<EncodedPair, ModelError> {
        let encode = |text: &str| {
            self.tokenizer
                .encode(text, false)
                .map_err(|e| ModelError::Encode(e.to_string()))
        };
        let (mut first, mut second) = (encode(query)?, encode(document)?);
        let (keep_first, keep_second) = longest_first(first.len(), second.len(), self.pair_budget);
        for (encoding, keep) in [(&mut first, keep_first), (&mut second, keep_second)] {
            encoding.truncate(keep, 0, TruncationDirection::Right);
            // What truncation cut off: nobody reads it, and the template would copy it.
            encoding.take_overflowing();
        }
        self.tokenizer
            .post_process(first, Some(second), true)
            .map(EncodedPair)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }
}

/// How many tokens of each text longest-first truncation keeps within `budget`:
/// tokens come off the longer text until both are as long, then off both in turn, so
/// that an odd budget leaves the extra token to the longer text.
fn longest_first(first: usize, second: usize, budget: usize) -> (usize, usize) {
    if first + second <= budget {
        return (first, second);
    }
    let shorter = first.min(second);
    let (shorter, longer) = if shorter <= budget / 2 {
        (shorter, budget - shorter)
    } else {
        (budget / 2, budget - budget / 2)
    };
    match first > second {
        true => (longer, shorter),
        false => (shorter, longer),
    }
}

/// Every id the tokenizer can produce must index the model's embedding table.
fn check_vocabulary(tokenizer: &Tokenizer, folder: &ModelFolder) -> Result<(), ModelError> {
    let table = folder.config.vocab_size;
    let vocabulary = tokenizer.get_vocab(true);
    let Some((token, &id)) = vocabulary.iter().max_by_key(|(_, &id)| id) else {
        return Ok(());
    };
    if id as usize >= table {
        return Err(ModelError::Unsupported {
            path: folder.tokenizer_path(),
            field: "model.vocab",
            value: format!("a vocabulary up to id {id} ({token:?})"),
            allowed: format!(
                "config.json's vocab_size is {table}: the model's embedding table has no row \
                 for ids past {}; the tokenizer does not belong to these weights",
                table.saturating_sub(1)
            ),
        });
    }
    Ok(())
}

/// The tokenizer's post-processor must build pairs as the architecture was trained on
/// them: a pair of two plain words must get its special tokens where the template says.
fn check_pair_template(tokenizer: &Tokenizer, folder: &ModelFolder) -> Result<(), ModelError> {
    let expected = folder.config.pair_template();
    let mismatch = |found: String| ModelError::Unsupported {
        path: folder.tokenizer_path(),
        field: "post_processor",
        value: found,
        allowed: format!(
            "a {} model reads pairs as {expected}: the tokenizer must add these special tokens",
            folder.config.architecture
        ),
    };
    let encoding = tokenizer
        .encode(("query", "document"), true)
        .map_err(|e| mismatch(format!("unable to encode a pair ({e})")))?;
    let found = template_of(
        encoding.get_special_tokens_mask(),
        encoding.get_sequence_ids(),
    );
    match found {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(mismatch(format!("a template of {found}"))),
        None => Err(mismatch(
            "absent, or a template that does not keep the two texts apart".into(),
        )),
    }
}

/// The special tokens before, between and after the two texts of an encoded pair.
fn template_of(special: &[u32], sequences: Vec<Option<usize>>) -> Option<PairTemplate> {
    let first = sequences.iter().position(|s| *s == Some(0))?;
    let first_end = sequences.iter().rposition(|s| *s == Some(0))?;
    let second = sequences.iter().position(|s| *s == Some(1))?;
    let second_end = sequences.iter().rposition(|s| *s == Some(1))?;
    let count = |range: std::ops::Range<usize>| special[range].iter().filter(|&&s| s == 1).count();
    (first_end < second).then(|| PairTemplate {
        before: count(0..first),
        between: count(first_end + 1..second),
        after: count(second_end + 1..special.len()),
    })
}
