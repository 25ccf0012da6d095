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

/// A JSON request's reading options, its words case-insensitive (text-embeddings-inference
/// spells directions "Right" and "Left").
pub fn json_read_options(
    long_documents: Option<&str>,
    max_chunks_per_doc: Option<u32>,
    truncate: Option<bool>,
    truncation_direction: Option<&str>,
) -> Result<ReadOptions, InvalidRequest> {
    use LongDocuments::{Chunk, Truncate};
    use TruncationDirection::{Left, Right};
    let modes = [("truncate", Truncate), ("chunk", Chunk)];
    Ok(ReadOptions {
        long_documents: one_of("long_documents", long_documents, &modes)?,
        max_chunks_per_doc,
        truncate,
        truncation_direction: one_of(
            "truncation_direction",
            truncation_direction,
            &[("right", Right), ("left", Left)],
        )?,
    })
}

/// The value `word` names among `choices` (any case; absent or empty: `None`), or an
/// error naming `field` and the words it takes.
fn one_of<T: Copy>(
    field: &str,
    word: Option<&str>,
    choices: &[(&str, T)],
) -> Result<Option<T>, InvalidRequest> {
    let Some(word) = word.filter(|w| !w.is_empty()) else {
        return Ok(None);
    };
    if let Some((_, value)) = choices.iter().find(|(w, _)| w.eq_ignore_ascii_case(word)) {
        return Ok(Some(*value));
    }
    let given: String = word.chars().take(32).collect();
    let allowed: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
    Err(InvalidRequest::Field(format!(
        "{field} {given:?} is not one of {}",
        allowed.join(" or ")
    )))
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
