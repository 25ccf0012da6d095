//! Gated feed-forwards (ModernBERT's GeGLU, Qwen's SwiGLU): one product gives each row
//! an activated half and a gate half, and their product goes on to the output layer.

use rayon::prelude::*;

use crate::HiddenAct;

/// `activation(row[..width]) * row[width..]` for each `2 * width`-wide row of `inner`,
/// into `gated` (`width` wide).
pub(crate) fn gate(inner: &[f32], width: usize, activation: HiddenAct, gated: &mut Vec<f32>) {
    gated.clear();
    gated.resize(inner.len() / 2, 0.0);
    gated
        .par_chunks_mut(width)
        .zip(inner.par_chunks(2 * width))
        .for_each(|(out, row)| {
            out.copy_from_slice(&row[..width]);
            // This row's thread: the rows are already spread over the threads.
            super::activate_slice(out, &activation);
            for (o, gate) in out.iter_mut().zip(&row[width..]) {
                *o *= gate;
            }
        });
}
