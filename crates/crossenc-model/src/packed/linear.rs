//! A dense layer and the matrix products under it: `gemm` over strided views (the
//! products attention runs too), or oneDNN's f32 or bf16 kernels on weights prepared
//! at load, with bias and activation in the product's epilogue where oneDNN runs.

use crossenc_onednn::{bf16, Bf16Weights, F32Weights, OnednnError};
use rayon::prelude::*;

use super::{activate, Kernels};
use crate::{HiddenAct, ModelError};

/// A dense layer, weights `[inputs, outputs]` row-major.
pub(crate) struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// The same weights laid out for oneDNN, where its kernels run the products.
    pub onednn: Option<OnednnWeights>,
}

/// A dense layer's weights prepared for oneDNN's products, in the format they run in.
pub(crate) enum OnednnWeights {
    F32(F32Weights),
    Bf16(Bf16Weights),
}

/// A matrix in memory: `rows x cols`, element (r, c) at `r * row_stride + c * col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl<'a> View<'a> {
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `width` columns from column `from` of `rows` rows `stride` apart: one head's
    /// share of a fused product, or a block of a weight matrix.
    pub(crate) fn columns(
        data: &'a [f32],
        rows: usize,
        (from, width): (usize, usize),
        stride: usize,
    ) -> Self {
        Self {
            data: &data[from..],
            rows,
            cols: width,
            row_stride: stride,
            col_stride: 1,
        }
    }

    /// The same elements read as the transposed matrix.
    pub(crate) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            data: self.data,
        }
    }

    /// Whether every element it names lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `out (+)= scale * a * b`, `out` row-major with `out_stride` between rows. With
/// `accumulate`, the product is added to what `out` holds (bias, residual).
pub(crate) fn product(
    out: &mut [f32],
    out_stride: usize,
    accumulate: bool,
    (a, b): (View<'_>, View<'_>),
    scale: f32,
    threads: usize,
) {
    let len = out.len();
    // SAFETY: `out` is borrowed mutably for the call: valid and unaliased for `len`.
    unsafe {
        product_into(
            out.as_mut_ptr(),
            len,
            out_stride,
            accumulate,
            (a, b),
            scale,
            threads,
        )
    }
}

/// [`product`] into raw memory.
///
/// # Safety
/// `out` must be valid for writes of `out_len` elements that nothing else reads or
/// writes during the call.
pub(crate) unsafe fn product_into(
    out: *mut f32,
    out_len: usize,
    out_stride: usize,
    accumulate: bool,
    (a, b): (View<'_>, View<'_>),
    scale: f32,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert!(a.fits() && b.fits(), "an operand view overruns its data");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * out_stride + n <= out_len,
        "the output overruns its data"
    );
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts keep every element read inside `a` and `b` and every element
    // written inside the caller's `out_len`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// What every product of one forward pass shares: its threads and the bf16 copy of
/// its input.
pub(crate) struct ProductScratch {
    pub(crate) threads: usize,
    bf16: Vec<bf16>,
}

impl Default for ProductScratch {
    /// On one thread, until a pass sets its own.
    fn default() -> Self {
        Self::new(1)
    }
}

impl ProductScratch {
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            threads,
            bf16: Vec::new(),
        }
    }

    /// `x` rounded to bf16, converted in parallel: it runs before every bf16 product.
    /// The buffer only grows, so it is not cleared before each conversion overwrites it.
    fn rounded(&mut self, x: &[f32]) -> &[bf16] {
        const CHUNK: usize = 32 * 1024;
        if self.bf16.len() < x.len() {
            self.bf16.resize(x.len(), bf16::ZERO);
        }
        let rounded = &mut self.bf16[..x.len()];
        x.par_chunks(CHUNK)
            .zip(rounded.par_chunks_mut(CHUNK))
            .for_each(|(from, to)| crossenc_onednn::to_bf16_into(from, to));
        rounded
    }
}

impl Linear {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        Self {
            weight,
            bias,
            inputs,
            outputs,
            onednn: None,
        }
    }

    /// Prepares the weights for `kernels`, which later forward passes use; where
    /// oneDNN runs them the f32 copy is dropped (nothing reads it any more).
    pub fn prepare(&mut self, kernels: Kernels) -> Result<(), OnednnError> {
        let (inputs, outputs) = (self.inputs, self.outputs);
        self.onednn = match kernels {
            Kernels::Gemm => return Ok(()),
            Kernels::OnednnF32 => Some(OnednnWeights::F32(F32Weights::new(
                &self.weight,
                inputs,
                outputs,
            )?)),
            Kernels::OnednnBf16 => Some(OnednnWeights::Bf16(Bf16Weights::new(
                &self.weight,
                inputs,
                outputs,
            )?)),
        };
        self.weight = Vec::new();
        Ok(())
    }

    /// A copy prepared for `kernels`, to time them without touching the model.
    pub(crate) fn prepared_copy(&self, kernels: Kernels) -> Result<Linear, OnednnError> {
        let mut copy = Linear::new(
            self.weight.clone(),
            self.bias.clone(),
            self.inputs,
            self.outputs,
        );
        copy.prepare(kernels)?;
        Ok(copy)
    }

    /// The name of the kernels a product of `rows` rows runs on.
    pub(crate) fn implementation(&self, rows: usize) -> String {
        let rows = rows.min(crossenc_onednn::BLOCK_ROWS);
        let named = match &self.onednn {
            None => return "gemm".into(),
            Some(OnednnWeights::F32(w)) => w.implementation(rows),
            Some(OnednnWeights::Bf16(w)) => w.implementation(rows),
        };
        named.unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// `out = activation(x * W + b)` for `rows` rows of `x`: on oneDNN the bias and
    /// activation are the product's epilogue, and `out` is written once.
    pub(crate) fn forward_activated(
        &self,
        x: &[f32],
        rows: usize,
        activation: HiddenAct,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<(), ModelError> {
        // oneDNN's shim has no SiLU epilogue: it runs after the product.
        let fused = match activation {
            HiddenAct::GeluErf => Some(crossenc_onednn::Activation::GeluErf),
            HiddenAct::GeluTanh => Some(crossenc_onednn::Activation::GeluTanh),
            HiddenAct::Relu => Some(crossenc_onednn::Activation::Relu),
            HiddenAct::Silu => None,
        };
        let applied = match fused {
            Some(fused) => self.apply(x, rows, fused, out, scratch)?,
            None => false,
        };
        if !applied {
            self.forward(x, rows, None, out, scratch)?;
            activate(out, activation);
        }
        Ok(())
    }

    /// `out = activation(x * W + b)` on oneDNN, bias and activation in the product's
    /// epilogue; `false` (nothing done) where oneDNN does not run these weights.
    fn apply(
        &self,
        x: &[f32],
        rows: usize,
        activation: crossenc_onednn::Activation,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<bool, ModelError> {
        let Some(weights) = &self.onednn else {
            return Ok(false);
        };
        let x = &x[..rows * self.inputs];
        let (len, threads) = (rows * self.outputs, scratch.threads);
        out.clear();
        out.reserve(len);
        let epilogue = (&self.bias[..], activation);
        let spare = &mut out.spare_capacity_mut()[..len];
        match weights {
            OnednnWeights::Bf16(w) => {
                w.apply(scratch.rounded(x), rows, epilogue, spare, threads)?
            }
            OnednnWeights::F32(w) => w.apply(x, rows, epilogue, spare, threads)?,
        }
        // SAFETY: `apply` succeeded, so it wrote all `len` elements.
        unsafe { out.set_len(len) };
        Ok(true)
    }

    /// `out = x * W + b (+ residual)` for `rows` rows of `x`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut Vec<f32>,
        scratch: &mut ProductScratch,
    ) -> Result<(), ModelError> {
        if residual.is_none()
            && self.apply(x, rows, crossenc_onednn::Activation::None, out, scratch)?
        {
            return Ok(());
        }
        out.clear();
        out.reserve(rows * self.outputs);
        for r in 0..rows {
            match residual {
                Some(res) => out.extend(
                    res[r * self.outputs..(r + 1) * self.outputs]
                        .iter()
                        .zip(&self.bias)
                        .map(|(x, b)| x + b),
                ),
                None => out.extend_from_slice(&self.bias),
            }
        }
        let x = &x[..rows * self.inputs];
        let threads = scratch.threads;
        match &self.onednn {
            Some(OnednnWeights::Bf16(w)) => w.accumulate(scratch.rounded(x), rows, out, threads)?,
            Some(OnednnWeights::F32(w)) => w.accumulate(x, rows, out, threads)?,
            None => {
                let a = View::rows(x, rows, self.inputs);
                let w = View::rows(&self.weight, self.inputs, self.outputs);
                product(out, self.outputs, true, (a, w), 1.0, threads);
            }
        }
        Ok(())
    }
}
