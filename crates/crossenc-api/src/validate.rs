//! What both faces check of a request before it reaches the core, and how they rank
//! the scores they get back.

use crossenc_core::pipeline::ReadOptions;
use crossenc_core::InvalidRequest;
use crossenc_types::{LongDocuments, TruncationDirection};

/// `field` holds between 1 and `limit` entries.
pub fn check_count(
    field: &str,
    count: usize,
    limit: usize,
    what: &str,
) -> Result<(), InvalidRequest> {
    if count == 0 {
        return Err(InvalidRequest::Field(format!(
            "{field} is empty: send at least one {what}"
        )));
    }
    if count > limit {
        return Err(InvalidRequest::TooMany {
            field: field.to_string(),
            count,
            limit,
        });
    }
    Ok(())
}

/// A query must say something.
pub fn check_query(field: &str, query: &str) -> Result<(), InvalidRequest> {
    if query.trim().is_empty() {
        return Err(InvalidRequest::Field(format!("{field} is empty")));
    }
    Ok(())
}

/// `top_n`, when given, asks for at least one result.
pub fn check_top_n(top_n: Option<u32>) -> Result<(), InvalidRequest> {
    if top_n == Some(0) {
        return Err(InvalidRequest::Field(
            "top_n is 0: ask for at least 1 result, or leave it unset for all".into(),
        ));
    }
    Ok(())
}

/// A request's reading options as its JSON or protobuf fields spell them.
pub struct ReadFields<'a> {
    pub long_documents: Option<&'a str>,
    pub max_chunks_per_doc: Option<u32>,
    pub truncate: Option<bool>,
    pub truncation_direction: Option<&'a str>,
}

impl ReadFields<'_> {
    /// The options, or the field that names none of its values.
    pub fn options(&self) -> Result<ReadOptions, InvalidRequest> {
        let long_documents = match self.long_documents.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => None,
            Some("truncate") => Some(LongDocuments::Truncate),
            Some("chunk") => Some(LongDocuments::Chunk),
            Some(_) => {
                let given = self.long_documents.unwrap_or_default();
                return Err(unknown(
                    "long_documents",
                    given,
                    "\"truncate\" or \"chunk\"",
                ));
            }
        };
        // text-embeddings-inference spells them "Right" and "Left".
        let direction = match self
            .truncation_direction
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") => None,
            Some("right") => Some(TruncationDirection::Right),
            Some("left") => Some(TruncationDirection::Left),
            Some(_) => {
                let given = self.truncation_direction.unwrap_or_default();
                return Err(unknown(
                    "truncation_direction",
                    given,
                    "\"right\" or \"left\"",
                ));
            }
        };
        Ok(ReadOptions {
            long_documents,
            max_chunks_per_doc: self.max_chunks_per_doc,
            truncate: self.truncate,
            truncation_direction: direction,
        })
    }
}

fn unknown(field: &str, value: &str, allowed: &str) -> InvalidRequest {
    let value: String = value.chars().take(32).collect();
    InvalidRequest::Field(format!("{field} {value:?} is not one of {allowed}"))
}

/// Indices ranked by score, highest first; equal scores by index; at most `top_n`.
pub fn rank(scores: &[f32], top_n: Option<u32>) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(n) = top_n {
        ranked.truncate(n as usize);
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_by_score_then_index() {
        assert_eq!(
            rank(&[0.1, 0.9, 0.5, 0.9], None),
            vec![(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.1)]
        );
        assert_eq!(rank(&[0.1, 0.9, 0.5], Some(2)), vec![(1, 0.9), (2, 0.5)]);
        assert_eq!(rank(&[0.1], Some(5)), vec![(0, 0.1)]);
    }
}
