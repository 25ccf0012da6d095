use std::sync::Arc;

use crossenc_types::{LongDocuments, PairRefusal, Reading};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

use crate::template::{FilledBody, PieceRole};
use crate::windows::Windows;
use crate::{ModelError, ModelFolder, PairTemplate, PromptTemplate};

/// What reading one pair gives: its windows (one unless it was chunked), or why it is
/// refused.
pub type Read = Result<Vec<EncodedPair>, PairRefusal>;

/// Encodes (query, document) pairs as the reference does. For an encoder as
/// `transformers` does: the tokenizer's own pair template (`[CLS] query [SEP] document
/// [SEP]` for BERT, `<s> query </s></s> document </s>` for RoBERTa), `longest_first`
/// truncation to `max_length`, no padding. For a decoder reranker, its prompt template:
/// the prefix, the body and the suffix each tokenized without special tokens, and only
/// the body cut: from its end where it is tokenized whole, the query and the document
/// pieces alone where it is tokenized piece by piece.
pub struct PairTokenizer {
    /// `tokenizer.json` without its own truncation and padding.
    tokenizer: Tokenizer,
    max_length: usize,
    /// Tokens of a pair's texts that truncation keeps: max_length less the template's
    /// special tokens, or less the prompt's prefix and suffix.
    pair_budget: usize,
    prompt: Option<Prompt>,
}

/// A decoder reranker's prompt, its fixed parts tokenized once.
struct Prompt {
    template: Arc<PromptTemplate>,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl Prompt {
    /// The prefix, the body's pieces and the suffix, end to end; the first
    /// `prefix + before` tokens shared with the request's other pairs.
    fn encoded(&self, body: &[&[u32]], before: usize) -> EncodedPair {
        let len =
            self.prefix.len() + body.iter().map(|p| p.len()).sum::<usize>() + self.suffix.len();
        let mut ids = Vec::with_capacity(len);
        ids.extend_from_slice(&self.prefix);
        for piece in body {
            ids.extend_from_slice(piece);
        }
        ids.extend_from_slice(&self.suffix);
        EncodedPair(Encoded::Prompt {
            type_ids: vec![0; len],
            shared: (self.prefix.len() + before).min(len.saturating_sub(1)),
            ids,
        })
    }
}

/// One encoded pair.
pub struct EncodedPair(Encoded);

// One pair lives at a time, on the stack: boxing the larger variant would cost an
// allocation per encoder pair for nothing.
#[allow(clippy::large_enum_variant)]
enum Encoded {
    /// An encoder's pair, as the tokenizer's template built it.
    Pair(Encoding),
    /// A prompt's ids; its type ids are all 0. Its first `shared` tokens are the
    /// prompt before the document, which every pair of its request has too.
    Prompt {
        ids: Vec<u32>,
        type_ids: Vec<u32>,
        shared: usize,
    },
}

impl EncodedPair {
    pub fn ids(&self) -> &[u32] {
        match &self.0 {
            Encoded::Pair(e) => e.get_ids(),
            Encoded::Prompt { ids, .. } => ids,
        }
    }

    pub fn type_ids(&self) -> &[u32] {
        match &self.0 {
            Encoded::Pair(e) => e.get_type_ids(),
            Encoded::Prompt { type_ids, .. } => type_ids,
        }
    }

    /// The leading tokens that are the prompt before the document (the prefix, the
    /// instruction, the query): a decoder computes their keys and values once for all
    /// the pairs that share them. Always short of the whole pair; 0 for an encoder's
    /// pair, whose every token attends to the document.
    pub fn shared(&self) -> usize {
        match &self.0 {
            Encoded::Pair(_) => 0,
            Encoded::Prompt { shared, .. } => *shared,
        }
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

    pub fn ids(&self) -> &[u32] {
        self.0.get_ids()
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
        if let Some(template) = &folder.config.template {
            return Self::with_prompt(tokenizer, folder, max_length, Arc::clone(template));
        }
        check_pair_template(&tokenizer, folder)?;
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        Ok(Self {
            tokenizer,
            max_length,
            pair_budget: max_length.saturating_sub(special),
            prompt: None,
        })
    }

    fn with_prompt(
        tokenizer: Tokenizer,
        folder: &ModelFolder,
        max_length: usize,
        template: Arc<PromptTemplate>,
    ) -> Result<Self, ModelError> {
        let encode = |text: &str| -> Result<Vec<u32>, ModelError> {
            let encoded = tokenizer
                .encode(text, false)
                .map_err(|e| ModelError::Prompt {
                    path: folder.tokenizer_path(),
                    message: format!("cannot tokenize template {}: {e}", template.name),
                })?;
            Ok(encoded.get_ids().to_vec())
        };
        let (prefix, suffix) = (encode(&template.prefix)?, encode(&template.suffix)?);
        let fixed = prefix.len() + suffix.len();
        // A body of a few tokens at least: the query and the document must be read.
        if max_length < fixed + 8 {
            return Err(ModelError::Prompt {
                path: folder.tokenizer_path(),
                message: format!(
                    "max_length {max_length} leaves no room for a pair: template {}'s prefix                      and suffix take {fixed} tokens; max_length must be at least {}",
                    template.name,
                    fixed + 8
                ),
            });
        }
        Ok(Self {
            tokenizer,
            max_length,
            pair_budget: max_length - fixed,
            prompt: Some(Prompt {
                template,
                prefix,
                suffix,
            }),
        })
    }

    /// Whether requests may give this model an instruction (its template reads one).
    pub fn takes_instruction(&self) -> bool {
        self.prompt
            .as_ref()
            .is_some_and(|p| p.template.takes_instruction())
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
    ///
    /// In a prompt the text follows other text, so its first words may join what comes
    /// before them (`: ` and a word make one piece): those count as cut too.
    pub fn tokens_before_the_cut(&self, prefix: &EncodedText) -> usize {
        let words = prefix.0.get_word_ids();
        let last = words.last().copied().flatten();
        let joins_before = |w: &Option<u32>| self.prompt.is_some() && w.is_some_and(|w| w < 2);
        words
            .iter()
            .filter(|&&w| (w.is_none() || w != last) && !joins_before(&w))
            .count()
    }

    /// Whether a cut text with `tokens_before_the_cut` (at least `max_length`) keeps
    /// every token a pair of the whole text would.
    pub fn prefix_keeps_every_token(&self, tokens_before_the_cut: usize) -> bool {
        match self.prompt {
            // Only the body is cut, and these tokens alone fill its budget.
            Some(_) => tokens_before_the_cut >= self.pair_budget,
            None => tokens_before_the_cut >= self.max_length,
        }
    }

    /// Whether a pair of a cut text (with `tokens_before_the_cut`, every token kept) and
    /// a text of `other` tokens (`None`: cut too) is truncated as the pair of the whole
    /// texts would be. Longest-first truncation gives the odd token of an odd budget to
    /// the longer text, and the whole cut text is longer than what was kept of it by an
    /// amount unknown here: the split is decided only when the budget is even, when the
    /// other text fits in half of it (then it keeps all of its tokens), or when it is
    /// shorter than what surely was the cut text's.
    ///
    /// A prompt is cut from its end alone, with no split to decide.
    pub fn cut_splits_as_whole(&self, tokens_before_the_cut: usize, other: Option<usize>) -> bool {
        if self.prompt.is_some() {
            return true;
        }
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
        self.encode_instructed(query, document, None)
    }

    /// [`PairTokenizer::encode`] with a request's instruction, for a template that
    /// reads one (`None`: the template's default).
    pub fn encode_instructed(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
    ) -> Result<EncodedPair, ModelError> {
        let read = self.read(query, document, instruction, &Reading::default())?;
        let mut windows = read.map_err(|refusal| ModelError::Encode(refusal.to_string()))?;
        Ok(windows.remove(0))
    }

    /// The pair as a request's `reading` asks: truncated (from the end, or from the
    /// start), refused where it would be cut, or, for a document too long for the
    /// window, cut into windows that each read the query (see [`Windows`]).
    pub fn read(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        match &self.prompt {
            None if instruction.is_some() => Err(ModelError::Encode(
                "this model reads no instruction: it has no prompt template".into(),
            )),
            None => self.read_pair(query, document, reading),
            Some(prompt) => self.read_prompt(prompt, query, document, instruction, reading),
        }
    }

    fn read_prompt(
        &self,
        prompt: &Prompt,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        if instruction.is_some() && !prompt.template.takes_instruction() {
            return Err(ModelError::Encode(format!(
                "template {} reads no instruction",
                prompt.template.name
            )));
        }
        match prompt.template.fill(instruction, query, document) {
            FilledBody::Whole { text, document_at } => {
                self.read_whole(prompt, &text, document_at, reading)
            }
            FilledBody::Pieces(pieces) => self.read_pieces(prompt, &pieces, reading),
        }
    }

    /// A body tokenized as one text, cut from its end.
    fn read_whole(
        &self,
        prompt: &Prompt,
        text: &str,
        document_at: usize,
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        let mut body = self.encode_piece(text)?;
        if body.len() > self.pair_budget {
            if let Some(refusal) = self.refuse_prompt_cut(prompt, body.len(), reading) {
                return Ok(Err(refusal));
            }
        }
        body.truncate(self.pair_budget, 0, TruncationDirection::Right);
        // Tokens that end before the document's first byte: the word before it may
        // join the document's first (": " and a word), so stop short of it.
        let before = body
            .get_offsets()
            .iter()
            .take_while(|(_, end)| *end < document_at)
            .count();
        Ok(Ok(vec![prompt.encoded(&[body.get_ids()], before)]))
    }

    /// A body tokenized piece by piece, as mixedbread's and FlagEmbedding's packages
    /// do. The span from the query to the document has what the prefix, the suffix
    /// and the other pieces leave: the query keeps at most three quarters of it, the
    /// document the rest.
    fn read_pieces(
        &self,
        prompt: &Prompt,
        pieces: &[(PieceRole, String)],
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        let mut encoded = pieces
            .iter()
            .map(|(_, text)| self.encode_piece(text))
            .collect::<Result<Vec<_>, _>>()?;
        let at = |wanted| pieces.iter().position(|(role, _)| *role == wanted);
        let (query, document) = (at(PieceRole::Query), at(PieceRole::Document));
        let (Some(query), Some(document)) = (query, document) else {
            unreachable!("a template's pieces hold the query and the document");
        };
        let span = query.min(document)..=query.max(document);
        let outside: usize = (encoded.iter().enumerate())
            .filter(|(i, _)| !span.contains(i))
            .map(|(_, e)| e.len())
            .sum();
        let inside_fixed: usize = (encoded.iter().enumerate())
            .filter(|(i, _)| span.contains(i) && *i != query && *i != document)
            .map(|(_, e)| e.len())
            .sum();
        let budget = self.pair_budget.saturating_sub(outside);
        if budget < inside_fixed + 2 {
            let fixed = prompt.prefix.len() + outside + inside_fixed + prompt.suffix.len();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            return Ok(Err(PairRefusal::PromptLeavesNoRoom {
                fixed: count(fixed),
                limit: count(self.max_length),
            }));
        }
        let keep_query = encoded[query].len().min(budget * 3 / 4);
        let keep_document = encoded[document]
            .len()
            .min(budget - inside_fixed - keep_query);
        let whole = encoded[query].len() + encoded[document].len();
        if keep_query + keep_document < whole {
            let body = whole + inside_fixed + outside;
            if let Some(refusal) = self.refuse_prompt_cut(prompt, body, reading) {
                return Ok(Err(refusal));
            }
        }
        encoded[query].truncate(keep_query, 0, TruncationDirection::Right);
        encoded[document].truncate(keep_document, 0, TruncationDirection::Right);
        let before: usize = encoded[..document].iter().map(Encoding::len).sum();
        let ids: Vec<&[u32]> = encoded.iter().map(Encoding::get_ids).collect();
        Ok(Ok(vec![prompt.encoded(&ids, before)]))
    }

    /// Why a prompt whose body must be cut is refused, if it is: the request asked
    /// for no cut, or for a cut a prompt cannot make (windows, or from the left).
    fn refuse_prompt_cut(
        &self,
        prompt: &Prompt,
        body: usize,
        reading: &Reading,
    ) -> Option<PairRefusal> {
        if reading.refuse_cut {
            return Some(self.would_cut(prompt.prefix.len() + body + prompt.suffix.len()));
        }
        let as_asked = reading.long_documents == LongDocuments::Truncate
            && reading.direction == crossenc_types::TruncationDirection::Right;
        (!as_asked).then_some(PairRefusal::PromptReadsOneWindow)
    }

    /// One piece of a prompt, tokenized alone without special tokens.
    fn encode_piece(&self, text: &str) -> Result<Encoding, ModelError> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Encode(e.to_string()))
    }

    fn read_pair(
        &self,
        query: &str,
        document: &str,
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        let encode = |text: &str| {
            self.tokenizer
                .encode(text, false)
                .map_err(|e| ModelError::Encode(e.to_string()))
        };
        let (mut first, mut second) = (encode(query)?, encode(document)?);
        let budget = self.pair_budget;
        if first.len() + second.len() <= budget {
            return Ok(Ok(vec![self.template(first, second)?]));
        }
        // Windows cut nothing of a document: only a query too long for them is cut.
        if reading.long_documents == LongDocuments::Chunk {
            return self.windows(first, second, reading);
        }
        if reading.refuse_cut {
            return Ok(Err(
                self.would_cut(first.len() + second.len() + self.special())
            ));
        }
        let direction = match reading.direction {
            crossenc_types::TruncationDirection::Right => TruncationDirection::Right,
            crossenc_types::TruncationDirection::Left => TruncationDirection::Left,
        };
        let (keep_first, keep_second) = longest_first(first.len(), second.len(), budget);
        for (encoding, keep) in [(&mut first, keep_first), (&mut second, keep_second)] {
            encoding.truncate(keep, 0, direction);
            // What truncation cut off: nobody reads it, and the template would copy it.
            encoding.take_overflowing();
        }
        Ok(Ok(vec![self.template(first, second)?]))
    }

    /// A document too long for the window beside its query, in windows: the query
    /// keeps what longest-first truncation would leave it against a long document (at
    /// most half the budget), each window the rest.
    fn windows(
        &self,
        mut query: Encoding,
        mut document: Encoding,
        reading: &Reading,
    ) -> Result<Read, ModelError> {
        let budget = self.pair_budget;
        let keep_query = query.len().min(budget / 2);
        if reading.refuse_cut && keep_query < query.len() {
            let tokens = query.len() + document.len() + self.special();
            return Ok(Err(self.would_cut(tokens)));
        }
        query.truncate(keep_query, 0, TruncationDirection::Right);
        query.take_overflowing();
        let windows = Windows::of(
            document.len(),
            budget - keep_query,
            reading.overlap as usize,
        );
        if windows.count > reading.windows_allowed() {
            return Ok(Err(PairRefusal::TooManyWindows {
                windows: u32::try_from(windows.count).unwrap_or(u32::MAX),
                limit: reading.max_windows,
            }));
        }
        let overlap = windows.size - windows.step;
        document.truncate(windows.size, overlap, TruncationDirection::Right);
        let rest = document.take_overflowing();
        let mut read = Vec::with_capacity(windows.count);
        for window in std::iter::once(document).chain(rest) {
            read.push(self.template(query.clone(), window)?);
        }
        Ok(Ok(read))
    }

    /// Both texts, already fitted, in the tokenizer's pair template.
    fn template(&self, query: Encoding, document: Encoding) -> Result<EncodedPair, ModelError> {
        self.tokenizer
            .post_process(query, Some(document), true)
            .map(|e| EncodedPair(Encoded::Pair(e)))
            .map_err(|e| ModelError::Encode(e.to_string()))
    }

    /// Special tokens the pair template adds.
    fn special(&self) -> usize {
        self.max_length - self.pair_budget
    }

    fn would_cut(&self, tokens: usize) -> PairRefusal {
        PairRefusal::WouldCut {
            tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
            limit: u32::try_from(self.max_length).unwrap_or(u32::MAX),
        }
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
    let Some(expected) = folder.config.pair_template() else {
        return Err(ModelError::Prompt {
            path: folder.tokenizer_path(),
            message: format!(
                "{} reads a prompt, not a pair template: it needs a template",
                folder.config.architecture
            ),
        });
    };
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
