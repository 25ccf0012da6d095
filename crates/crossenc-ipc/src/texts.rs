//! The texts of a tokenizer job.
//!
//! Pairs name their query by index, so that a Rerank's query travels once per job
//! instead of once per document, and both sides can share it (`Arc<str>`) rather than
//! copy it. A text longer than the server's `max_text_bytes` arrives cut at a char
//! boundary, with its original size, so that the tokenizer can say whether the cut
//! changed what the model reads.

use std::sync::Arc;

use crossenc_types::Reading;
use serde::{Deserialize, Serialize};

/// One text, possibly cut to a prefix before it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    #[serde(with = "shared_str")]
    pub text: Arc<str>,
    /// The text's size in bytes as the client sent it: larger than `text` when cut.
    pub original_bytes: u64,
}

impl Text {
    /// `text`, cut at a char boundary to at most `max_bytes` bytes.
    pub fn cut(text: &str, max_bytes: usize) -> Self {
        let mut end = text.len().min(max_bytes);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            text: Arc::from(&text[..end]),
            original_bytes: text.len() as u64,
        }
    }

    /// Whether this is a prefix of what the client sent.
    pub fn is_cut(&self) -> bool {
        (self.text.len() as u64) < self.original_bytes
    }
}

/// Which text of a job a verdict is about, by its index within the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextRef {
    Query(u32),
    Document(u32),
}

/// (query, document) pairs to tokenize; each pair holds its query's index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPairs {
    pub queries: Vec<Text>,
    pub pairs: Vec<(u32, Text)>,
    /// The request's instruction for a decoder reranker's prompt; `None`: the
    /// template's default.
    #[serde(with = "optional_shared_str")]
    pub instruction: Option<Arc<str>>,
    /// How the request's pairs are read where they do not fit the model's window.
    pub reading: Reading,
}

impl TextPairs {
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs as (query, document), or the first pair whose query index is out of
    /// range (a malformed job).
    pub fn resolve(&self) -> Result<Vec<(&Text, &Text)>, usize> {
        self.pairs
            .iter()
            .enumerate()
            .map(|(i, (query, document))| {
                self.queries
                    .get(*query as usize)
                    .map(|q| (q, document))
                    .ok_or(i)
            })
            .collect()
    }
}

/// `Arc<str>` on the wire as a plain string (serde's own support needs its `rc`
/// feature, which would rebuild every crate that uses serde).
pub(crate) mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

/// `Option<Arc<str>>` on the wire as an optional plain string.
mod optional_shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        text: &Option<Arc<str>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match text {
            Some(text) => serializer.serialize_some(&**text),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Arc<str>>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(Arc::from))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn cuts_fall_on_char_boundaries() {
        let cut = Text::cut("héllo", 2);
        assert_eq!(&*cut.text, "h");
        assert!(cut.is_cut());
        assert_eq!(cut.original_bytes, 6);
        let whole = Text::cut("héllo", 6);
        assert_eq!(&*whole.text, "héllo");
        assert!(!whole.is_cut());
    }

    #[test]
    fn a_pair_naming_a_missing_query_is_found() {
        let text = |s: &str| Text::cut(s, 100);
        let pairs = TextPairs {
            queries: vec![text("q")],
            pairs: vec![(0, text("a")), (1, text("b"))],
            ..Default::default()
        };
        assert_eq!(pairs.resolve().unwrap_err(), 1);
    }

    proptest! {
        #[test]
        fn a_cut_is_the_longest_prefix_that_fits(s in ".{0,40}", max in 0usize..50) {
            let cut = Text::cut(&s, max);
            prop_assert!(s.starts_with(&*cut.text));
            prop_assert!(cut.text.len() <= max);
            prop_assert!(cut.text.len() + 4 > max.min(s.len()));
        }
    }
}
