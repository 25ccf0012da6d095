//! How a pair's rows become the one vector its head reads: the first token (BERT's
//! `[CLS]`), the mean of its tokens (ModernBERT's option) or its last token (decoders,
//! whose last position is the only one that has read the whole pair).

/// How a pair becomes one vector for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// The first token.
    Cls,
    /// The mean of the pair's tokens.
    Mean,
    /// The last token.
    Last,
}

/// One `width`-wide vector per pair of `x`, as `pooling` makes it.
pub(crate) fn pool(offsets: &[usize], x: &[f32], width: usize, pooling: Pooling) -> Vec<f32> {
    let mut pooled = Vec::with_capacity((offsets.len() - 1) * width);
    for w in offsets.windows(2) {
        match pooling {
            Pooling::Cls => pooled.extend_from_slice(&x[w[0] * width..][..width]),
            Pooling::Last => pooled.extend_from_slice(&x[(w[1] - 1) * width..][..width]),
            Pooling::Mean => {
                let mut sum = vec![0f64; width];
                for row in x[w[0] * width..w[1] * width].chunks_exact(width) {
                    sum.iter_mut()
                        .zip(row)
                        .for_each(|(s, &v)| *s += f64::from(v));
                }
                let n = (w[1] - w[0]) as f64;
                pooled.extend(sum.iter().map(|s| (s / n) as f32));
            }
        }
    }
    pooled
}

/// Each pair's first row of `x` (`width` wide), copied into `out`.
pub(crate) fn first_rows<'o>(
    offsets: &[usize],
    x: &[f32],
    width: usize,
    out: &'o mut Vec<f32>,
) -> &'o [f32] {
    gather(offsets[..offsets.len() - 1].iter().copied(), x, width, out)
}

/// Each pair's last row of `x` (`width` wide), copied into `out`.
pub(crate) fn last_rows<'o>(
    offsets: &[usize],
    x: &[f32],
    width: usize,
    out: &'o mut Vec<f32>,
) -> &'o [f32] {
    gather(offsets[1..].iter().map(|end| end - 1), x, width, out)
}

fn gather<'o>(
    rows: impl Iterator<Item = usize>,
    x: &[f32],
    width: usize,
    out: &'o mut Vec<f32>,
) -> &'o [f32] {
    out.clear();
    for row in rows {
        out.extend_from_slice(&x[row * width..][..width]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pooling_reads_its_rows() {
        // Two pairs of 2 and 3 rows, 2 wide: row r holds (r, 10 r).
        let offsets = [0, 2, 5];
        let x: Vec<f32> = (0..5).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
        assert_eq!(pool(&offsets, &x, 2, Pooling::Cls), [0.0, 0.0, 2.0, 20.0]);
        assert_eq!(pool(&offsets, &x, 2, Pooling::Last), [1.0, 10.0, 4.0, 40.0]);
        assert_eq!(pool(&offsets, &x, 2, Pooling::Mean), [0.5, 5.0, 3.0, 30.0]);
        let mut out = Vec::new();
        assert_eq!(last_rows(&offsets, &x, 2, &mut out), [1.0, 10.0, 4.0, 40.0]);
        assert_eq!(first_rows(&offsets, &x, 2, &mut out), [0.0, 0.0, 2.0, 20.0]);
    }
}
