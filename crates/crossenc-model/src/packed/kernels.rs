//! Which kernels run the packed pass's dense products (nearly all its FLOPs), chosen
//! at load by timing the candidates on one of the model's own layers: which is fastest
//! depends on the CPU (AVX2 or AVX-512, AMX or not, Intel or AMD), the thread count and
//! the model's shapes, none of which a rule of thumb gets right everywhere.

use std::time::Instant;

use super::{Linear, ProductScratch};
use crate::ModelError;

/// Kernels for the encoder's dense products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// The `gemm` crate in f32 (candle's CPU matmul): always there, but its AVX-512
    /// kernels need a nightly compiler, so AVX2 is the widest it runs here.
    Gemm,
    /// oneDNN in f32: its AVX-512 kernels where the CPU has them, AVX2 otherwise.
    OnednnF32,
    /// oneDNN with inputs and weights rounded to bf16, accumulating in f32: AMX tiles
    /// or AVX512-BF16.
    OnednnBf16,
}

impl std::str::FromStr for Kernels {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        [Kernels::Gemm, Kernels::OnednnF32, Kernels::OnednnBf16]
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("{name:?}: expected `gemm-f32`, `onednn-f32` or `onednn-bf16`"))
    }
}

impl Kernels {
    /// As logs and `build_info` name them.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Gemm => "gemm-f32",
            Kernels::OnednnF32 => "onednn-f32",
            Kernels::OnednnBf16 => "onednn-bf16",
        }
    }
}

/// One candidate's rate on the model's layer.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRate {
    pub kernels: Kernels,
    /// oneDNN's name for the kernels it picked (`brg:avx512_core`); `gemm` for gemm.
    pub implementation: String,
    /// Best of several runs, conversions to bf16 included.
    pub gflops: f64,
}

/// What was timed, and what runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelChoice {
    pub chosen: KernelRate,
    /// Every candidate timed, the chosen one among them.
    pub measured: Vec<KernelRate>,
    /// Rows (tokens) of the timed products.
    pub rows: usize,
}

impl KernelChoice {
    /// `name:implementation`, the `kernels` label of `build_info`.
    pub fn label(&self) -> String {
        format!(
            "{}:{}",
            self.chosen.kernels.name(),
            self.chosen.implementation
        )
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chosen = &self.chosen;
        write!(f, "{} ({})", chosen.kernels.name(), chosen.implementation)?;
        if chosen.gflops.is_nan() {
            return f.write_str(", as given (not timed)");
        }
        write!(
            f,
            " at {:.0} GFLOP/s; timed on one layer's products over {} tokens:",
            chosen.gflops, self.rows
        )?;
        for rate in &self.measured {
            write!(f, " {} {:.0}", rate.kernels.name(), rate.gflops)?;
        }
        Ok(())
    }
}

/// FLOPs of one timed run: enough to dwarf a timer's noise and a call's fixed cost,
/// little enough that timing every candidate adds well under a second to a start.
const TIMED_FLOPS: usize = 2_000_000_000;
/// Timed runs after one untimed: the best counts, as the least disturbed.
const TIMED_RUNS: usize = 3;

/// Times `kernels` on `layer` (one encoder layer's dense products, in order) with the
/// worker's `threads`, on copies of the weights: the model itself is not changed.
pub(crate) fn measure(
    layer: &[&Linear],
    kernels: Kernels,
    threads: usize,
) -> Result<KernelRate, ModelError> {
    let per_row = flops_per_row(layer);
    let rows = timed_rows(layer);
    let copies = layer
        .iter()
        .map(|l| l.prepared_copy(kernels))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<Vec<f32>> = copies
        .iter()
        .map(|l| {
            (0..rows * l.inputs)
                .map(|i| ((i * 7919 % 1009) as f32 / 1009.0) - 0.5)
                .collect()
        })
        .collect();
    let mut scratch = ProductScratch::new(threads);
    let mut out = Vec::new();
    let mut best = f64::INFINITY;
    for run in 0..=TIMED_RUNS {
        let start = Instant::now();
        for (copy, x) in copies.iter().zip(&inputs) {
            copy.forward(x, rows, None, &mut out, &mut scratch)?;
        }
        if run > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(KernelRate {
        kernels,
        implementation: copies
            .first()
            .map_or_else(|| "none".into(), |l| l.implementation(rows)),
        gflops: (per_row * rows) as f64 / best.max(1e-9) / 1e9,
    })
}

fn flops_per_row(layer: &[&Linear]) -> usize {
    layer.iter().map(|l| 2 * l.inputs * l.outputs).sum()
}

/// Rows (tokens) the products are timed on: [`TIMED_FLOPS`] of them, within 128-1024
/// rows, a multiple of 16.
pub(crate) fn timed_rows(layer: &[&Linear]) -> usize {
    (TIMED_FLOPS / flops_per_row(layer).max(1)).clamp(128, 1024) / 16 * 16
}

/// The fastest of `measured` (the first where rates tie).
pub(crate) fn fastest(measured: &[KernelRate]) -> Option<&KernelRate> {
    measured.iter().reduce(|best, rate| {
        if rate.gflops > best.gflops {
            rate
        } else {
            best
        }
    })
}
