//! f32 and bf16 products against an f64 reference on the same operands (bf16: rounded
//! alike): the only error left is f32 accumulation, so a wrong kernel (a tile edge, a
//! tail, a block seam) shows up.

use crossenc_onednn::{
    bf16, row_pieces, support, to_bf16, Bf16Weights, Element, F32Weights, OnednnError, Support,
    Weights, BLOCK_ROWS, ROW_TILE,
};
use proptest::prelude::*;

/// Deterministic values in [-1, 1): no two rows or columns alike.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `x` as the products see it in `T`, back in f32.
fn rounded<T: Element + Into<f32>>(x: &[f32]) -> Vec<f32> {
    T::from_f32s(x).into_iter().map(Into::into).collect()
}

/// The tests ending in `_on_avx512_bf16` need oneDNN's bf16 kernels: on a CPU without
/// AVX512-BF16, scripts/test.sh filters them out by that suffix, so they show as
/// skipped. Where they run, missing products are a failure.
fn require_native() {
    if let Support::Missing(why) = support() {
        panic!("bf16 products unavailable on a CPU that should have them: {why}");
    }
}

/// Checks `dst = start + src * w` for one shape in `T`, start values included.
fn check_shape<T: Element + Into<f32>>(rows: usize, inputs: usize, outputs: usize) {
    let w = values(inputs * outputs, 1 + rows as u64);
    let x = values(rows * inputs, 2 + inputs as u64);
    let start = values(rows * outputs, 3);
    let weights = Weights::<T>::new(&w, inputs, outputs).unwrap();
    let mut dst = start.clone();
    weights
        .accumulate(&T::from_f32s(&x), rows, &mut dst, 2)
        .unwrap();

    let (w, x) = (rounded::<T>(&w), rounded::<T>(&x));
    let mut worst = 0.0f64;
    // Every 7th row and the last: all the tails, at a tenth of the cost.
    for r in (0..rows).filter(|r| r % 7 == 0 || r + 1 == rows) {
        for c in 0..outputs {
            let exact = start[r * outputs + c] as f64
                + (0..inputs)
                    .map(|k| x[r * inputs + k] as f64 * w[k * outputs + c] as f64)
                    .sum::<f64>();
            let error = (dst[r * outputs + c] as f64 - exact).abs() / (1.0 + exact.abs());
            worst = worst.max(error);
        }
    }
    // f32 accumulation error grows with the sum's length (f32 inputs also round each
    // product; bf16 ones multiply exactly).
    let bound = 1e-5 * (inputs as f64 / 384.0).max(1.0);
    assert!(
        worst < bound,
        "{} {rows}x{inputs} * {inputs}x{outputs}: worst relative error {worst:e}",
        T::NAME
    );
}

/// One row, tile edges and one past them, block seams, and the model's own shapes.
const ODD_SHAPES: [(usize, usize, usize); 9] = [
    (1, 384, 1152),
    (15, 384, 384),
    (16, 384, 384),
    (17, 384, 384),
    (33, 1536, 384),
    (512, 384, 1536),
    (1025, 384, 1152),
    (1563, 96, 40),
    (3, 7, 5),
];

#[test]
fn products_match_the_reference_on_odd_shapes_on_avx512_bf16() {
    require_native();
    for (rows, inputs, outputs) in ODD_SHAPES {
        check_shape::<bf16>(rows, inputs, outputs);
    }
}

#[test]
fn f32_products_match_the_reference_on_odd_shapes() {
    for (rows, inputs, outputs) in ODD_SHAPES {
        check_shape::<f32>(rows, inputs, outputs);
    }
}

/// Batches of every size reuse a bounded set of products: the few dozen row counts
/// [`row_pieces`] cuts them into, not one set of kernels per batch size.
#[test]
fn batches_of_any_size_reuse_a_bounded_set_of_products() {
    let weights = F32Weights::new(&values(32 * 24, 5), 32, 24).unwrap();
    for rows in (1..3 * BLOCK_ROWS).step_by(7) {
        let src = values(rows * 32, rows as u64);
        let mut dst = vec![0.0; rows * 24];
        weights.accumulate(&src, rows, &mut dst, 1).unwrap();
    }
    let most = 1 + BLOCK_ROWS / ROW_TILE + ROW_TILE;
    let made = crossenc_onednn::products_made(32, 24);
    assert!(
        made <= most,
        "{made} products made for {} batch sizes",
        3 * BLOCK_ROWS / 7
    );
}

proptest! {
    /// The pieces cover every row once, in order, each of a length made for reuse.
    #[test]
    fn row_pieces_tile_the_rows(rows in 0usize..5000) {
        let mut next = 0;
        for (first, len) in row_pieces(rows) {
            prop_assert_eq!(first, next);
            prop_assert!(
                len == BLOCK_ROWS || (len < BLOCK_ROWS && len % ROW_TILE == 0) || len < ROW_TILE,
                "{} rows", len
            );
            next += len;
        }
        prop_assert_eq!(next, rows);
    }
}

#[test]
fn the_same_weights_serve_many_row_counts_on_avx512_bf16() {
    require_native();
    let weights = Bf16Weights::new(&values(64 * 32, 9), 64, 32).unwrap();
    for rows in [1, 2, 64, 65, 1, 300] {
        let mut src = Vec::new();
        to_bf16(&values(rows * 64, rows as u64), &mut src);
        let mut dst = vec![0.0; rows * 32];
        weights.accumulate(&src, rows, &mut dst, 1).unwrap();
        assert!(dst.iter().any(|v| *v != 0.0), "{rows} rows wrote nothing");
    }
}

/// Products are shared by every weights object of one shape: each must still use its own.
#[test]
fn weights_of_one_shape_keep_their_own_values_on_avx512_bf16() {
    require_native();
    let rows = 5;
    let mut src = Vec::new();
    to_bf16(&values(rows * 64, 4), &mut src);
    let results: Vec<Vec<f32>> = [1.0f32, -2.0]
        .iter()
        .map(|&w| {
            let weights = Bf16Weights::new(&vec![w; 64 * 48], 64, 48).unwrap();
            let mut dst = vec![0.0; rows * 48];
            weights.accumulate(&src, rows, &mut dst, 1).unwrap();
            dst
        })
        .collect();
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!((b + 2.0 * a).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
    assert!(results[0].iter().any(|v| v.abs() > 1e-3));
}

#[test]
fn wrong_lengths_are_refused_before_any_kernel_runs_on_avx512_bf16() {
    require_native();
    let weights = Bf16Weights::new(&values(8 * 4, 1), 8, 4).unwrap();
    let src = vec![bf16::ONE; 3 * 8];
    let mut short = vec![0.0; 2 * 4];
    let error = weights.accumulate(&src, 3, &mut short, 1).unwrap_err();
    assert!(
        matches!(
            error,
            OnednnError::Shape {
                what: "destination rows",
                expected: 12,
                got: 8
            }
        ),
        "{error}"
    );
    assert!(Bf16Weights::new(&[1.0; 5], 2, 3).is_err());
}

/// Where the CPU has AVX512-BF16 the products must run natively: a build without oneDNN
/// (its headers missing) fails here rather than passing every other test by skipping.
#[test]
fn a_bf16_capable_cpu_gets_native_products() {
    let capable = std::arch::is_x86_feature_detected!("avx512bf16");
    match support() {
        Support::Native {
            amx,
            implementation,
        } => {
            eprintln!("bf16 products on {implementation} (amx: {amx})");
            assert!(
                capable || *amx,
                "native without AVX512-BF16: {implementation}"
            );
        }
        Support::Missing(why) => {
            assert!(!capable, "this CPU has AVX512-BF16 but: {why}");
            assert!(!why.is_empty());
        }
    }
}

proptest! {
    /// The vector conversion rounds exactly as `half` does, tails and odd values included;
    /// subnormal inputs may flush to zero (the AVX512-BF16 instruction does).
    #[test]
    fn conversion_rounds_to_nearest_even(values in prop::collection::vec(any::<f32>(), 0..100)) {
        let mut fast = Vec::new();
        to_bf16(&values, &mut fast);
        for (value, got) in values.iter().zip(&fast) {
            let want = bf16::from_f32(*value);
            let flushed = value.is_subnormal() && got.to_f32() == 0.0;
            prop_assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) || flushed,
                "{value:e}: {got} vs {want}"
            );
        }
    }
}

/// Bias and activation in the product's epilogue: `dst` is written whole from
/// uninitialised memory, and equals the product, plus bias, through the activation.
#[test]
fn bias_and_activation_run_in_the_epilogue() {
    use crossenc_onednn::Activation;
    use std::mem::MaybeUninit;
    let (rows, inputs, outputs) = (37, 48, 40);
    let (w, x, bias) = (
        values(inputs * outputs, 11),
        values(rows * inputs, 12),
        values(outputs, 13),
    );
    let weights = F32Weights::new(&w, inputs, outputs).unwrap();
    let erf_gelu = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
    let cases: [(Activation, &dyn Fn(f64) -> f64); 3] = [
        (Activation::None, &|v| v),
        (Activation::Relu, &|v: f64| v.max(0.0)),
        (Activation::GeluErf, &erf_gelu),
    ];
    for (activation, f) in cases {
        let mut dst = vec![MaybeUninit::new(f32::NAN); rows * outputs];
        weights
            .apply(&x, rows, (&bias, activation), &mut dst, 2)
            .unwrap();
        for r in 0..rows {
            for c in 0..outputs {
                let sum = bias[c] as f64
                    + (0..inputs)
                        .map(|k| x[r * inputs + k] as f64 * w[k * outputs + c] as f64)
                        .sum::<f64>();
                // SAFETY: `apply` succeeded, so every element was written.
                let got = unsafe { dst[r * outputs + c].assume_init() } as f64;
                assert!(
                    (got - f(sum)).abs() < 1e-5 * (1.0 + sum.abs()),
                    "{activation:?} ({r}, {c}): {got} vs {}",
                    f(sum)
                );
            }
        }
    }
    let short_bias = [0.0; 3];
    let mut dst = vec![MaybeUninit::new(0.0); rows * outputs];
    let error = weights
        .apply(&x, rows, (&short_bias, Activation::None), &mut dst, 1)
        .unwrap_err();
    assert!(
        matches!(error, OnednnError::Shape { what: "bias", .. }),
        "{error}"
    );
}
