//! A request's texts as the pipeline takes them: every text cut to `max_text_bytes`
//! before anything is queued, and a Rerank's query held once, shared by all its pairs,
//! so that what a request costs grows with what it sent, never with a product of its
//! fields.

use std::sync::Arc;

use crossenc_ipc::{Text, TextPairs, TextRef};
use crossenc_types::Reading;

use crate::error::InvalidRequest;

/// How a request names its texts, for the errors that point at one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// One query, and documents under this field name.
    Rerank { documents: &'static str },
    /// Pairs under this field name, each with its own query.
    Pairs { pairs: &'static str },
}

/// Rough bytes per token for an estimate made before tokenizing: English WordPiece runs
/// at about 4 to 5; erring low errs towards admitting.
const BYTES_PER_TOKEN_GUESS: usize = 4;

/// How long a request's texts may be, and how its pairs are read.
#[derive(Debug, Clone, Copy)]
pub struct TextLimits {
    /// Longest query; a document's is this per window it may make.
    pub max_text_bytes: usize,
    pub reading: Reading,
}

impl TextLimits {
    /// Texts of at most `max_text_bytes`, truncated as usual.
    pub fn truncating(max_text_bytes: usize) -> Self {
        Self {
            max_text_bytes,
            reading: Reading::default(),
        }
    }

    /// A document read in windows may be as long as its windows together.
    fn document_bytes(&self) -> usize {
        (self.max_text_bytes).saturating_mul(self.reading.windows_allowed())
    }
}

/// A request's texts, cut, in the order their scores go back.
#[derive(Debug)]
pub struct RequestTexts {
    fields: Fields,
    queries: Vec<Text>,
    /// Each pair's query index and document.
    pairs: Vec<(u32, Text)>,
    /// A decoder reranker's instruction, read with every pair.
    instruction: Option<Arc<str>>,
    limits: TextLimits,
}

/// Pairs for one tokenizer job, and where they sit in their request.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub texts: TextPairs,
    /// The request's index of the chunk's first pair.
    pub offset: usize,
    /// The request's index of each of the chunk's queries.
    query_ids: Vec<u32>,
}

impl RequestTexts {
    /// One query against many documents, as Rerank asks.
    pub fn rerank<'a>(
        query: &str,
        documents: impl IntoIterator<Item = &'a str>,
        documents_field: &'static str,
        limits: TextLimits,
    ) -> Self {
        let document_bytes = limits.document_bytes();
        Self {
            fields: Fields::Rerank {
                documents: documents_field,
            },
            queries: vec![Text::cut(query, limits.max_text_bytes)],
            pairs: documents
                .into_iter()
                .map(|d| (0, Text::cut(d, document_bytes)))
                .collect(),
            instruction: None,
            limits,
        }
    }

    /// Pairs that each bring their own query, as Infer asks.
    pub fn pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        pairs_field: &'static str,
        limits: TextLimits,
    ) -> Self {
        let mut queries = Vec::new();
        let mut cut_pairs = Vec::new();
        for (i, (query, document)) in pairs.into_iter().enumerate() {
            queries.push(Text::cut(query, limits.max_text_bytes));
            cut_pairs.push((i as u32, Text::cut(document, limits.document_bytes())));
        }
        Self {
            fields: Fields::Pairs { pairs: pairs_field },
            queries,
            pairs: cut_pairs,
            instruction: None,
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The request's instruction for a decoder reranker's prompt, `field` naming it in
    /// errors: refused where the model reads none (`accepted` false), or when longer
    /// than a query may be (it is read whole with every pair, never cut).
    pub fn with_instruction(
        mut self,
        instruction: Option<&str>,
        field: &str,
        accepted: bool,
    ) -> Result<Self, InvalidRequest> {
        let Some(instruction) = instruction else {
            return Ok(self);
        };
        if !accepted {
            return Err(InvalidRequest::Field(format!(
                "{field}: this model reads no instruction (only a decoder reranker whose \
                 prompt template has an {{instruction}} does)"
            )));
        }
        if instruction.len() > self.limits.max_text_bytes {
            return Err(InvalidRequest::Field(format!(
                "{field} is {} bytes; the limit (max_text_bytes) is {}",
                instruction.len(),
                self.limits.max_text_bytes
            )));
        }
        self.instruction = Some(Arc::from(instruction));
        Ok(self)
    }

    /// Bytes of text this request holds, each text once.
    pub fn text_bytes(&self) -> usize {
        let texts = self.queries.iter().chain(self.pairs.iter().map(|p| &p.1));
        let instruction = self.instruction.as_ref().map_or(0, |i| i.len());
        instruction + texts.map(|t| t.text.len()).sum::<usize>()
    }

    /// Tokens the pairs will likely cost, from their sizes alone: at most `max_length`
    /// per window a pair may make.
    pub fn estimated_tokens(&self, max_length: usize) -> u64 {
        let instruction = self.instruction.as_ref().map_or(0, |i| i.len());
        let most = max_length.saturating_mul(self.limits.reading.windows_allowed());
        self.pairs
            .iter()
            .map(|(query, document)| {
                let bytes =
                    instruction + self.queries[*query as usize].text.len() + document.text.len();
                // Three special tokens frame a pair.
                (bytes / BYTES_PER_TOKEN_GUESS + 3).min(most) as u64
            })
            .sum()
    }

    /// The pairs in tokenizer jobs of at most `size` pairs; each job holds each of its
    /// queries once (a Rerank's query is shared, not copied).
    pub fn chunks(&self, size: usize) -> Vec<Chunk> {
        self.pairs
            .chunks(size.max(1))
            .enumerate()
            .map(|(n, pairs)| {
                let mut chunk = Chunk {
                    texts: TextPairs {
                        instruction: self.instruction.clone(),
                        reading: self.limits.reading,
                        ..TextPairs::default()
                    },
                    offset: n * size.max(1),
                    query_ids: Vec::new(),
                };
                for (query, document) in pairs {
                    if chunk.query_ids.last() != Some(query) {
                        chunk.query_ids.push(*query);
                        chunk
                            .texts
                            .queries
                            .push(self.queries[*query as usize].clone());
                    }
                    let local = (chunk.query_ids.len() - 1) as u32;
                    chunk.texts.pairs.push((local, document.clone()));
                }
                chunk
            })
            .collect()
    }

    /// The request's name of the document of pair `index`.
    pub fn document_field(&self, index: usize) -> String {
        match self.fields {
            Fields::Rerank { documents } => format!("{documents}[{index}]"),
            Fields::Pairs { pairs } => format!("{pairs}[{index}]"),
        }
    }

    /// The error for a text of `chunk` whose cut lost tokens, naming the request's field.
    pub fn lossy_cut(&self, chunk: &Chunk, text: TextRef) -> InvalidRequest {
        let (field, bytes) = match (text, self.fields) {
            (TextRef::Query(local), fields) => {
                let query = chunk.query_ids.get(local as usize).copied().unwrap_or(0);
                let field = match fields {
                    Fields::Rerank { .. } => "query".to_string(),
                    Fields::Pairs { pairs } => format!("{pairs}[{query}].query"),
                };
                let bytes = self.queries.get(query as usize).map(|t| t.original_bytes);
                (field, bytes)
            }
            (TextRef::Document(local), fields) => {
                let index = chunk.offset + local as usize;
                let field = match fields {
                    Fields::Rerank { documents } => format!("{documents}[{index}]"),
                    Fields::Pairs { pairs } => format!("{pairs}[{index}].document"),
                };
                (field, self.pairs.get(index).map(|p| p.1.original_bytes))
            }
        };
        let limit = match text {
            TextRef::Query(_) => self.limits.max_text_bytes,
            TextRef::Document(_) => self.limits.document_bytes(),
        };
        InvalidRequest::TextTooLong {
            field,
            bytes: bytes.unwrap_or_default(),
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerank_query_is_shared_by_every_chunk_not_copied() {
        let documents: Vec<String> = (0..130).map(|i| format!("d{i}")).collect();
        let texts = RequestTexts::rerank(
            &"q".repeat(100),
            documents.iter().map(String::as_str),
            "documents",
            TextLimits::truncating(50),
        );
        let chunks = texts.chunks(64);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2].offset, 128);
        for chunk in &chunks {
            assert_eq!(chunk.texts.queries.len(), 1);
            assert!(std::sync::Arc::ptr_eq(
                &chunk.texts.queries[0].text,
                &texts.queries[0].text
            ));
        }
        assert_eq!(&*chunks[0].texts.queries[0].text, "q".repeat(50));
        assert_eq!(texts.text_bytes(), 50 + 10 * 2 + 90 * 3 + 30 * 4);
    }

    #[test]
    fn lossy_cuts_name_the_field_its_size_and_the_limit() {
        let texts = RequestTexts::pairs(
            [("a", "b"), ("c", "d"), (&"x".repeat(90)[..], "e")],
            "pairs",
            TextLimits::truncating(64),
        );
        let chunks = texts.chunks(2);
        let error = texts.lossy_cut(&chunks[1], TextRef::Query(0)).to_string();
        assert!(error.starts_with("pairs[2].query is 90 bytes"), "{error}");
        assert!(error.contains("max_text_bytes (64)"), "{error}");
        let rerank =
            RequestTexts::rerank("q", ["a", "b", "c"], "texts", TextLimits::truncating(64));
        let chunks = rerank.chunks(2);
        let error = rerank.lossy_cut(&chunks[1], TextRef::Document(0));
        assert!(
            error.to_string().starts_with("texts[2] is 1 bytes"),
            "{error}"
        );
    }
}
