//! bf16 matrix products on oneDNN: `dst += src * W`, `src` in bf16, `W` prepared once in
//! the layout oneDNN's kernels read, accumulation and `dst` in f32. oneDNN picks its
//! kernels at run time: AMX tiles where the CPU and kernel offer them, AVX512-BF16
//! otherwise. [`support`] says which, so a caller can fall back to f32 where neither is
//! there (or where this crate was built without oneDNN's headers).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};

pub use half::bf16;
use half::slice::HalfFloatSliceExt;

// The oneDNN calls where the build found oneDNN; elsewhere a stand-in whose weights
// cannot be made, so every caller takes its fallback.
#[cfg_attr(onednn, path = "ffi.rs")]
#[cfg_attr(not(onednn), path = "absent.rs")]
mod backend;

/// What oneDNN does with bf16 products on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Native bf16 kernels; `implementation` is oneDNN's name for them.
    Native { amx: bool, implementation: String },
    /// No native bf16 here: the reason, for the log.
    Missing(String),
}

#[derive(Debug, thiserror::Error)]
pub enum OnednnError {
    #[error("bf16 products are unavailable: {0}")]
    Unavailable(String),
    #[error("oneDNN failed while {action}: {status}")]
    Call {
        action: String,
        status: &'static str,
    },
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

/// Whether this machine runs bf16 products natively; probed once, with a small product.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

/// A product of a typical shape (a BERT-small layer over a batch) says which kernels
/// oneDNN picks; AMX is also taken from oneDNN's instruction set, should it pick other
/// kernels for this one shape.
fn probe() -> Support {
    const ROWS: usize = 256;
    const SIDE: usize = 384;
    let weights = match Bf16Weights::new(&vec![0.5; SIDE * SIDE], SIDE, SIDE) {
        Ok(weights) => weights,
        Err(e) => return Support::Missing(e.to_string()),
    };
    match weights.implementation(ROWS) {
        Ok(name) if name.contains("amx") || backend::amx() => Support::Native {
            amx: true,
            implementation: name,
        },
        Ok(name) if name.contains("bf16") => Support::Native {
            amx: false,
            implementation: name,
        },
        Ok(name) => Support::Missing(format!(
            "the CPU has neither AMX nor AVX512-BF16 (oneDNN would emulate bf16 with {name})"
        )),
        Err(e) => Support::Missing(e.to_string()),
    }
}

/// f32 to bf16, rounding to nearest even (subnormals may flush to zero); `dst` is
/// overwritten. One instruction per 16 values where the CPU has AVX512-BF16: activations
/// are converted before every product, so this is on the hot path.
pub fn to_bf16(src: &[f32], dst: &mut Vec<bf16>) {
    dst.clear();
    dst.resize(src.len(), bf16::ZERO);
    to_bf16_into(src, dst);
}

/// [`to_bf16`] into a slice of the same length.
pub fn to_bf16_into(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "source and destination lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has the features `convert_avx512` is compiled for.
        unsafe { convert_avx512(src, dst) };
        return;
    }
    dst.convert_from_f32_slice(src);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn convert_avx512(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::{
        __m256bh, __m256i, _mm256_storeu_si256, _mm512_cvtneps_pbh, _mm512_loadu_ps,
    };
    let whole = src.len() / 16 * 16;
    for (from, to) in src[..whole]
        .chunks_exact(16)
        .zip(dst[..whole].chunks_exact_mut(16))
    {
        // SAFETY: both chunks hold 16 elements: 64 bytes read, 32 bytes written.
        unsafe {
            let packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(from.as_ptr()));
            _mm256_storeu_si256(
                to.as_mut_ptr().cast::<__m256i>(),
                std::mem::transmute::<__m256bh, __m256i>(packed),
            );
        }
    }
    dst[whole..].convert_from_f32_slice(&src[whole..]);
}

/// Products made so far, by `(inputs, outputs, rows)`: oneDNN's primitives have fixed
/// shapes, and one serves every layer of its shape (weights of one shape share one
/// layout; the shim checks). Bounded, since batch sizes vary without end and a primitive
/// holds ~50 KB of kernels (measured: 512 of them, +26 MB RSS): when full, it is emptied.
static PRODUCTS: LazyLock<Mutex<HashMap<ProductShape, backend::Product>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// `(inputs, outputs, rows)`.
type ProductShape = (usize, usize, usize);
const PRODUCTS_KEPT: usize = 128;

/// A dense layer's weights, `[inputs, outputs]`, prepared for bf16 products.
pub struct Bf16Weights {
    inputs: usize,
    outputs: usize,
    prepared: backend::Weights,
}

impl std::fmt::Debug for Bf16Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bf16Weights")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl Bf16Weights {
    /// Rounds row-major f32 `weights` (`inputs x outputs`) to bf16 and lays them out for
    /// oneDNN's kernels.
    pub fn new(weights: &[f32], inputs: usize, outputs: usize) -> Result<Self, OnednnError> {
        check_len("weights", inputs * outputs, weights.len())?;
        let mut rounded = Vec::new();
        to_bf16(weights, &mut rounded);
        Ok(Self {
            inputs,
            outputs,
            prepared: backend::Weights::new(&rounded, inputs, outputs)?,
        })
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `dst += src * W` for `rows` rows: `src` is `rows x inputs`, `dst` `rows x outputs`,
    /// both row-major; the product runs on `threads` threads.
    pub fn accumulate(
        &self,
        src: &[bf16],
        rows: usize,
        dst: &mut [f32],
        threads: usize,
    ) -> Result<(), OnednnError> {
        check_len("source rows", rows * self.inputs, src.len())?;
        check_len("destination rows", rows * self.outputs, dst.len())?;
        if rows == 0 {
            return Ok(());
        }
        self.with_product(rows, |product| {
            product.run(&self.prepared, src, dst, threads)
        })
    }

    /// oneDNN's name for the kernels a product of `rows` rows runs on.
    pub fn implementation(&self, rows: usize) -> Result<String, OnednnError> {
        self.with_product(rows, |product| Ok(product.implementation()))
    }

    fn with_product<T>(
        &self,
        rows: usize,
        f: impl FnOnce(&backend::Product) -> Result<T, OnednnError>,
    ) -> Result<T, OnednnError> {
        // A panic elsewhere while holding it leaves the cache consistent: keep using it.
        let mut products = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.inputs, self.outputs, rows);
        if !products.contains_key(&key) {
            if products.len() >= PRODUCTS_KEPT {
                products.clear();
            }
            products.insert(key, backend::Product::new(&self.prepared, rows)?);
        }
        f(&products[&key])
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), OnednnError> {
    if expected == got {
        Ok(())
    } else {
        Err(OnednnError::Shape {
            what,
            expected,
            got,
        })
    }
}
