//! The exact (erf) GELU as a CPU kernel that the compiler can vectorise.
//!
//! candle's `gelu_erf` calls a scalar `erf` per element (~10 ns each); the FFN's GELU
//! then costs more than its matmuls. This one uses the rational approximation of erf that
//! XLA and Eigen use (error a few ULP of f32), in parallel chunks.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 16 * 1024;

/// `0.5 x (1 + erf(x / sqrt 2))` on f32 tensors; other devices use candle's own op.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "crossenc-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = match layout.contiguous_offsets() {
            Some((start, end)) => &storage.as_slice::<f32>()?[start..end],
            None => candle_core::bail!("gelu_erf needs a contiguous tensor"),
        };
        let mut output = vec![0f32; input.len()];
        output
            .par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(out, inp)| {
                for (o, &x) in out.iter_mut().zip(inp) {
                    *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// erf(x) for f32: odd rational approximation on [-4, 4], where erf reaches ±1 in f32.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_3e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let error = (f64::from(erf(x)) - libm::erf(f64::from(x))).abs();
            worst = worst.max(error);
        }
        assert!(worst < 5e-7, "erf off by {worst:e}");
    }

    #[test]
    fn gelu_matches_candle_on_a_tensor() {
        let x = Tensor::arange(-3000f32, 3000., &candle_core::Device::Cpu)
            .unwrap()
            .affine(1e-3, 0.)
            .unwrap();
        let ours: Vec<f32> = gelu_erf(&x).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = x.gelu_erf().unwrap().to_vec1().unwrap();
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "gelu off by {worst:e}");
    }
}
