//! Matrix products on oneDNN: `dst += src * W`, `src` and `W` in f32 or bf16, `W`
//! prepared once in the layout oneDNN's kernels read, accumulation and `dst` in f32.
//! oneDNN picks its kernels at run time: for bf16, AMX tiles where the CPU and kernel
//! offer them and AVX512-BF16 otherwise ([`support`] says which, so a caller can keep
//! f32 where neither is there); for f32, its AVX-512 or AVX2 kernels. A build without
//! oneDNN's headers still compiles: every [`Weights::new`] then fails, and callers keep
//! their own kernels.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
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
    #[error("oneDNN products are unavailable: {0}")]
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

/// A number format the products read their inputs and weights in; they accumulate
/// and write f32 either way.
pub trait Element: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The format's name, for errors and logs.
    const NAME: &'static str;
    #[doc(hidden)]
    const BF16: bool;
    /// `values` in this format (bf16: rounded to nearest even).
    fn from_f32s(values: &[f32]) -> Vec<Self>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const BF16: bool = false;
    fn from_f32s(values: &[f32]) -> Vec<Self> {
        values.to_vec()
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    const BF16: bool = true;
    fn from_f32s(values: &[f32]) -> Vec<Self> {
        let mut rounded = Vec::new();
        to_bf16(values, &mut rounded);
        rounded
    }
}

/// An activation a product can end with, in the kernel, before its output is stored:
/// one pass over the output saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Activation {
    None = 0,
    GeluErf = 1,
    GeluTanh = 2,
    Relu = 3,
}

/// What a product does besides its sum of products: add onto `dst` (which holds bias
/// and residual already), or add the bias itself; then an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Epilogue {
    pub bias: bool,
    pub activation: Activation,
}

/// Products made so far, by format, shape and row count: a oneDNN primitive has fixed
/// shapes, and one serves every layer of its shape (weights of one shape share one
/// layout; the shim checks). Row counts come from [`row_pieces`], so a few dozen per
/// shape cover every batch and a cache hit is the rule; a primitive holds ~50 KB of
/// kernels (measured: 512 of them, +26 MB RSS). Bounded all the same: when full, it is
/// emptied.
static PRODUCTS: LazyLock<Mutex<HashMap<ProductShape, backend::Product>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// `(bf16, inputs, outputs, rows, epilogue)`.
type ProductShape = (bool, usize, usize, usize, Epilogue);
const PRODUCTS_KEPT: usize = 256;

/// Rows of the longest product run at once: longer inputs run in blocks of it, large
/// enough that a block's fixed cost (memory handles, a parallel region) is noise.
pub const BLOCK_ROWS: usize = 512;
/// What is left after the blocks runs as a multiple of this, then fewer than it.
pub const ROW_TILE: usize = 16;

/// The `(first row, rows)` pieces a product of `rows` rows runs in: whole blocks of
/// [`BLOCK_ROWS`], then the rest rounded down to [`ROW_TILE`], then the last few. With
/// products made for these row counts alone, every batch size reuses them: exact row
/// counts would make new primitives (kernels generated at run time) for nearly every
/// batch.
pub fn row_pieces(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let in_blocks = rows / BLOCK_ROWS * BLOCK_ROWS;
    let in_tiles = (rows - in_blocks) / ROW_TILE * ROW_TILE;
    let blocks = (0..in_blocks)
        .step_by(BLOCK_ROWS)
        .map(|first| (first, BLOCK_ROWS));
    let tail = [
        (in_blocks, in_tiles),
        (in_blocks + in_tiles, rows - in_blocks - in_tiles),
    ];
    blocks.chain(tail.into_iter().filter(|&(_, len)| len > 0))
}

/// A dense layer's weights, `[inputs, outputs]`, prepared for products on oneDNN with
/// inputs in `T`.
pub struct Weights<T: Element> {
    inputs: usize,
    outputs: usize,
    prepared: backend::Weights,
    format: PhantomData<T>,
}

/// Weights for bf16 products: AMX or AVX512-BF16 kernels.
pub type Bf16Weights = Weights<bf16>;
/// Weights for f32 products: oneDNN's AVX-512 or AVX2 kernels.
pub type F32Weights = Weights<f32>;

impl<T: Element> std::fmt::Debug for Weights<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("format", &T::NAME)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl<T: Element> Weights<T> {
    /// Converts row-major f32 `weights` (`inputs x outputs`) to `T` and lays them out
    /// for oneDNN's kernels.
    pub fn new(weights: &[f32], inputs: usize, outputs: usize) -> Result<Self, OnednnError> {
        check_len("weights", inputs * outputs, weights.len())?;
        Ok(Self {
            inputs,
            outputs,
            prepared: backend::Weights::new(&T::from_f32s(weights), inputs, outputs)?,
            format: PhantomData,
        })
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `dst += src * W` for `rows` rows: `src` is `rows x inputs`, `dst` `rows x outputs`,
    /// both row-major; the product runs on `threads` threads, in [`row_pieces`].
    pub fn accumulate(
        &self,
        src: &[T],
        rows: usize,
        dst: &mut [f32],
        threads: usize,
    ) -> Result<(), OnednnError> {
        let epilogue = Epilogue {
            bias: false,
            activation: Activation::None,
        };
        // SAFETY: `[f32]` and `[MaybeUninit<f32>]` share their layout, and a product
        // without a bias writes only initialised floats into the initialised `dst`.
        let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.run(src, rows, None, dst, epilogue, threads)
    }

    /// `dst = activation(src * W + bias)` for `rows` rows, `dst` written whole (it may be
    /// uninitialised): the bias is added and the activation applied in the kernel, so
    /// the output is written once and never read back.
    pub fn apply(
        &self,
        src: &[T],
        rows: usize,
        (bias, activation): (&[f32], Activation),
        dst: &mut [MaybeUninit<f32>],
        threads: usize,
    ) -> Result<(), OnednnError> {
        check_len("bias", self.outputs, bias.len())?;
        let epilogue = Epilogue {
            bias: true,
            activation,
        };
        self.run(src, rows, Some(bias), dst, epilogue, threads)
    }

    fn run(
        &self,
        src: &[T],
        rows: usize,
        bias: Option<&[f32]>,
        dst: &mut [MaybeUninit<f32>],
        epilogue: Epilogue,
        threads: usize,
    ) -> Result<(), OnednnError> {
        check_len("source rows", rows * self.inputs, src.len())?;
        check_len("destination rows", rows * self.outputs, dst.len())?;
        for (first, len) in row_pieces(rows) {
            let src = &src[first * self.inputs..][..len * self.inputs];
            let dst = &mut dst[first * self.outputs..][..len * self.outputs];
            self.with_product(len, epilogue, |product| {
                product.run(&self.prepared, src, bias, dst, threads)
            })?;
        }
        Ok(())
    }

    /// oneDNN's name for the kernels a product of `rows` rows runs on.
    pub fn implementation(&self, rows: usize) -> Result<String, OnednnError> {
        let epilogue = Epilogue {
            bias: false,
            activation: Activation::None,
        };
        self.with_product(rows, epilogue, |product| Ok(product.implementation()))
    }

    fn with_product<R>(
        &self,
        rows: usize,
        epilogue: Epilogue,
        f: impl FnOnce(&backend::Product) -> Result<R, OnednnError>,
    ) -> Result<R, OnednnError> {
        // A panic elsewhere while holding it leaves the cache consistent: keep using it.
        let mut products = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
        let key = (T::BF16, self.inputs, self.outputs, rows, epilogue);
        if !products.contains_key(&key) {
            // Full: one product goes, not all, so that a few sets beyond the bound
            // cost a rebuild per miss rather than every set's kernels again.
            if products.len() >= PRODUCTS_KEPT {
                if let Some(old) = products.keys().next().copied() {
                    products.remove(&old);
                }
            }
            products.insert(key, backend::Product::new(&self.prepared, rows, epilogue)?);
        }
        f(&products[&key])
    }
}

/// Products in the cache now for weights of this shape, for tests that check reuse
/// (by shape, so that other tests running in the same process do not count).
#[doc(hidden)]
pub fn products_made(inputs: usize, outputs: usize) -> usize {
    let products = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
    products
        .keys()
        .filter(|k| (k.1, k.2) == (inputs, outputs))
        .count()
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
