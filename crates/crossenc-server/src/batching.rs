//! How one request's tokenized pairs are cut into model batches.
//!
//! Pairs are sorted by length so that each batch pads little, then cut greedily under
//! both budgets: padded tokens (pairs x longest pair) and pairs.

/// The limits a batch must respect.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
}

/// Splits pair indices into batches; each index appears in exactly one batch. A pair
/// longer than the token budget on its own still gets a batch of one.
pub fn plan_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the pair being added is the longest of the batch.
        let padded_if_added = (current.len() + 1) * lengths[i];
        let fits =
            current.len() < limits.max_batch_size && padded_if_added <= limits.max_batch_tokens;
        if !fits && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_pair_once_and_no_budget_exceeded(
            lengths in prop::collection::vec(1usize..600, 1..300),
            max_batch_tokens in 512usize..20_000,
            max_batch_size in 1usize..100,
        ) {
            let limits = BatchLimits { max_batch_tokens, max_batch_size };
            let batches = plan_batches(&lengths, limits);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for batch in &batches {
                let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
                prop_assert!(batch.len() <= max_batch_size);
                prop_assert!(batch.len() == 1 || batch.len() * longest <= max_batch_tokens);
            }
        }
    }

    #[test]
    fn similar_lengths_ride_together() {
        let lengths = [100, 5, 100, 5];
        let limits = BatchLimits {
            max_batch_tokens: 200,
            max_batch_size: 8,
        };
        assert_eq!(plan_batches(&lengths, limits), vec![vec![1, 3], vec![0, 2]]);
    }
}
