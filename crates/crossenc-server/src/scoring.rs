//! What every API shares around the pipeline: checking a request's shape, turning logits
//! into the scores a client asked for, and ranking them.

/// Why a request was refused before anything was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// A field is missing, empty or out of range.
    #[error("{0}")]
    Field(String),
    /// More documents or pairs than one request may carry.
    #[error("{field} has {count} entries; the limit (max_client_batch_size) is {limit}")]
    TooMany {
        field: String,
        count: usize,
        limit: usize,
    },
    /// A text so long that cutting it to `max_text_bytes` would change its tokens.
    #[error(
        "{field} is {bytes} bytes; cut to max_text_bytes ({limit}), its tokens could differ from the whole text's (a text of mostly spaces or marks, or one as long as the other text of its pair): send at most {limit} bytes"
    )]
    TextTooLong {
        field: String,
        bytes: u64,
        limit: usize,
    },
}

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

/// The model's logits as the client asked for them: raw, or through a sigmoid as
/// sentence-transformers' CrossEncoder does for single-label models.
pub fn activate(mut scores: Vec<f32>, raw: bool) -> Vec<f32> {
    if !raw {
        for s in &mut scores {
            *s = 1.0 / (1.0 + (-*s).exp());
        }
    }
    scores
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

    #[test]
    fn sigmoid_unless_raw() {
        assert_eq!(activate(vec![0.0, 2.0], true), vec![0.0, 2.0]);
        let s = activate(vec![0.0, 2.0], false);
        assert_eq!(s[0], 0.5);
        assert!((s[1] - 0.880_797).abs() < 1e-6);
    }
}
