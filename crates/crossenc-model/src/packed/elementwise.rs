//! The packed pass's passes over values, outside the products: layer norm, RMS norm,
//! the FFN's activation and softmax, each compiled for AVX-512 and AVX2 with FMA and picked at
//! run time, with a vectorised exp for the softmax.

use rayon::prelude::*;

use super::{Norm, RmsNorm};
use crate::HiddenAct;

/// Defines `fn $name(x: &mut [f32], p: &P)` compiled three times, for AVX-512 + FMA,
/// for AVX2 + FMA and plain, and picks one at run time: with FMA `mul_add` is one
/// instruction (without it, a call into libm), and the wider lanes let the loops
/// vectorise.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($x:ident: &mut [f32], $p:ident: &$param:ty) $body:block) => {
        $(#[$doc])*
        $vis fn $name($x: &mut [f32], $p: &$param) {
            #[inline(always)]
            fn body($x: &mut [f32], $p: &$param) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v4($x: &mut [f32], $p: &$param) {
                    body($x, $p)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($x: &mut [f32], $p: &$param) {
                    body($x, $p)
                }
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512vl") && has!("fma") {
                    // SAFETY: the CPU has every feature `v4` is compiled for.
                    return unsafe { v4($x, $p) };
                }
                if has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has every feature `v3` is compiled for.
                    return unsafe { v3($x, $p) };
                }
            }
            body($x, $p)
        }
    };
}

/// Lanes of the partial sums: wide enough for AVX-512, and a fixed summation order.
const LANES: usize = 16;

/// `f` of each value, summed in `LANES` partial sums so that it vectorises.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The largest value, in `LANES` partial maxima so that it vectorises.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.iter().copied().fold(rest, f32::max)
}

simd_kernel! {
    /// Layer norm of each row of `x` (rows as long as `norm.gamma`), in place.
    fn norm_rows(x: &mut [f32], norm: &Norm) {
        let width = norm.gamma.len();
        for row in x.chunks_exact_mut(width) {
            let mean = lane_sum(row, |v| v) / width as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
            let inv = 1.0 / (var + norm.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

simd_kernel! {
    /// RMS norm of each row of `x` (rows as long as `norm.gamma`), in place, in f32 as
    /// transformers' Qwen3RMSNorm computes it: `x / sqrt(mean(x²) + eps) * gamma`.
    fn rms_rows(x: &mut [f32], norm: &RmsNorm) {
        let width = norm.gamma.len();
        for row in x.chunks_exact_mut(width) {
            let mean_square = lane_sum(row, |v| v * v) / width as f32;
            let inv = 1.0 / (mean_square + norm.eps).sqrt();
            for (v, g) in row.iter_mut().zip(&norm.gamma) {
                *v = *v * inv * g;
            }
        }
    }
}

simd_kernel! {
    /// The FFN's activation, in place.
    pub(crate) fn activate_slice(x: &mut [f32], activation: &HiddenAct) {
        match activation {
            HiddenAct::GeluErf => {
                for v in x {
                    *v = 0.5 * *v * (1.0 + crate::gelu::erf(*v * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
            HiddenAct::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                for v in x {
                    let t = *v;
                    *v = 0.5 * t * (1.0 + (C * (t + 0.044_715 * t * t * t)).tanh());
                }
            }
            HiddenAct::Relu => {
                for v in x {
                    *v = v.max(0.0);
                }
            }
            HiddenAct::Silu => {
                for v in x {
                    *v /= 1.0 + exp(-*v);
                }
            }
        }
    }
}

/// e^x for f32, to about 1 ULP, in a form that vectorises (libm's `expf` is a call per
/// element): x = n ln 2 + r with |r| <= ln 2 / 2, e^r by Cephes' polynomial, 2^n by
/// building the float's exponent. Inputs below -87 give ~1e-38 instead of 0 (softmax
/// only feeds it x - max <= 0, where that difference vanishes in the sum).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits, a
    // form that vectorises where a float-to-int cast does not.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e_r = p.mul_add(r * r, r) + 1.0;
    // n + 127 in the exponent field is 2^n.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e_r * scale
}

simd_kernel! {
    /// Softmax of each `row_len`-long row, in place.
    pub(crate) fn softmax_rows(x: &mut [f32], row_len: &usize) {
        for row in x.chunks_exact_mut(*row_len) {
            let max = lane_max(row);
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / lane_sum(row, |v| v);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

impl Norm {
    /// Layer norm of each `width`-long row, in place, across the worker's threads.
    pub(crate) fn apply(&self, x: &mut [f32], width: usize) {
        x.par_chunks_mut(width * 64)
            .for_each(|rows| norm_rows(rows, self));
    }
}

impl RmsNorm {
    /// RMS norm of each `width`-long row (the whole row, or one head of it), in place,
    /// across the worker's threads.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        let width = self.gamma.len();
        x.par_chunks_mut(width * 64)
            .for_each(|rows| rms_rows(rows, self));
    }

    /// RMS norm of each row of `x`, on this thread: for one head at a time, where the
    /// caller already spreads the rows over the threads.
    pub(crate) fn apply_here(&self, x: &mut [f32]) {
        rms_rows(x, self);
    }
}

pub(crate) fn activate(x: &mut [f32], activation: HiddenAct) {
    x.par_chunks_mut(16 * 1024)
        .for_each(|chunk| activate_slice(chunk, &activation));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max((ours - std).abs() / std);
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut rows = vec![0.0, 1.0, 2.0, -50.0, 3.0, 3.0, 3.0, 3.0];
        softmax_rows(&mut rows, &4);
        for row in rows.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        }
        assert!(rows[3] < rows[0] && rows[0] < rows[1] && rows[1] < rows[2]);
        assert!(rows[4..].iter().all(|&p| (p - 0.25).abs() < 1e-7));
    }

    #[test]
    fn rms_norm_rows_have_unit_mean_square_times_the_gain() {
        let width = 24;
        let norm = RmsNorm {
            gamma: (0..width).map(|i| 0.5 + i as f32 / 10.0).collect(),
            eps: 1e-6,
        };
        let mut x: Vec<f32> = (0..width * 3).map(|i| (i * 29 % 13) as f32 - 6.0).collect();
        let before = x.clone();
        norm.apply(&mut x);
        for (row, was) in x.chunks(width).zip(before.chunks(width)) {
            let rms = (was.iter().map(|v| v * v).sum::<f32>() / width as f32 + 1e-6).sqrt();
            for ((v, w), g) in row.iter().zip(was).zip(&norm.gamma) {
                assert!(
                    (v - w / rms * g).abs() < 1e-5,
                    "{v} against {}",
                    w / rms * g
                );
            }
        }
    }

    #[test]
    fn silu_is_x_times_its_sigmoid() {
        let mut x: Vec<f32> = (-400..400).map(|i| i as f32 / 20.0).collect();
        let expected: Vec<f32> = x.iter().map(|v| v / (1.0 + (-v).exp())).collect();
        activate_slice(&mut x, &HiddenAct::Silu);
        for (got, want) in x.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} {want}"
            );
        }
    }

    #[test]
    fn layer_norm_rows_have_zero_mean_and_unit_variance() {
        let width = 40;
        let norm = Norm {
            gamma: vec![1.0; width],
            beta: vec![0.0; width],
            eps: 1e-12,
        };
        let mut x: Vec<f32> = (0..width * 3).map(|i| (i * 37 % 11) as f32 - 4.0).collect();
        norm_rows(&mut x, &norm);
        for row in x.chunks(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let var = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
        }
    }
}
