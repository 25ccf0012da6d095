//! Where a long document's windows start: each window holds `size` of its tokens and
//! repeats `overlap` of the one before, so that a passage cut at one window's edge is
//! whole in the next.

/// How `tokens` document tokens are cut into windows of `size` overlapping by `overlap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub size: usize,
    /// Tokens from one window's start to the next's.
    pub step: usize,
    pub count: usize,
}

impl Windows {
    /// `size` at least 1; an overlap of `size` or more is taken as `size - 1` (windows
    /// must move on). A document that fits is one window.
    pub fn of(tokens: usize, size: usize, overlap: usize) -> Self {
        let size = size.max(1);
        let step = size - overlap.min(size - 1);
        let count = match tokens.checked_sub(size) {
            None | Some(0) => 1,
            Some(beyond) => 1 + beyond.div_ceil(step),
        };
        Self { size, step, count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_and_no_more_than_needed() {
        for tokens in 0..200 {
            for size in 1..40 {
                for overlap in 0..45 {
                    let w = Windows::of(tokens, size, overlap);
                    let last_start = (w.count - 1) * w.step;
                    assert!(last_start + w.size >= tokens, "{tokens} {w:?}");
                    if w.count > 1 {
                        assert!(last_start < tokens, "an empty last window: {tokens} {w:?}");
                        assert!((w.count - 2) * w.step + w.size < tokens, "one too many");
                    }
                }
            }
        }
        assert_eq!(
            Windows::of(100, 50, 10),
            Windows {
                size: 50,
                step: 40,
                count: 3
            }
        );
        assert_eq!(Windows::of(50, 50, 10).count, 1);
        assert_eq!(Windows::of(51, 50, 50).step, 1);
    }
}
