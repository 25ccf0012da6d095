//! The C shim (`shim.c`) over oneDNN, owned through RAII handles.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;

use crate::{Element, Epilogue, OnednnError};

#[repr(C)]
struct RawWeights {
    _opaque: [u8; 0],
}

#[repr(C)]
struct RawProduct {
    _opaque: [u8; 0],
}

extern "C" {
    fn crossenc_weights_new(
        inputs: i64,
        outputs: i64,
        bf16: c_int,
        weights: *const c_void,
        out: *mut *mut RawWeights,
    ) -> c_int;
    fn crossenc_weights_free(weights: *mut RawWeights);
    fn crossenc_product_new(
        weights: *const RawWeights,
        rows: i64,
        bias: c_int,
        activation: c_int,
        out: *mut *mut RawProduct,
    ) -> c_int;
    fn crossenc_product_free(product: *mut RawProduct);
    fn crossenc_product_implementation(product: *const RawProduct) -> *const c_char;
    fn crossenc_onednn_isa() -> c_int;
    fn crossenc_product_run(
        product: *const RawProduct,
        weights: *const RawWeights,
        src: *const c_void,
        bias: *const f32,
        dst: *mut f32,
        threads: c_int,
    ) -> c_int;
}

/// oneDNN's `dnnl_status_t`, in words.
fn status_name(status: c_int) -> &'static str {
    match status {
        1 => "out of memory",
        2 => "invalid arguments",
        3 => "unimplemented for these shapes or this CPU",
        5 => "runtime error",
        6 => "not required",
        _ => "unknown status",
    }
}

fn check(status: c_int, action: impl FnOnce() -> String) -> Result<(), OnednnError> {
    match status {
        0 => Ok(()),
        _ => Err(OnednnError::Call {
            action: action(),
            status: status_name(status),
        }),
    }
}

/// `dnnl_cpu_isa_avx512_core_amx`: AVX-512 with bf16 and AMX tiles.
const ISA_AMX: c_int = 0x3e7;

/// Whether oneDNN dispatches to AMX kernels on this machine.
pub(crate) fn amx() -> bool {
    // SAFETY: no arguments; the shim creates oneDNN's engine first.
    let isa = unsafe { crossenc_onednn_isa() };
    (isa & ISA_AMX) == ISA_AMX
}

pub(crate) struct Weights(NonNull<RawWeights>);

// SAFETY: after `new` the prepared weights are only read, which oneDNN allows from any
// thread; they are freed once, on drop.
unsafe impl Send for Weights {}
unsafe impl Sync for Weights {}

impl Weights {
    pub fn new<T: Element>(
        weights: &[T],
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, OnednnError> {
        assert_eq!(weights.len(), inputs * outputs, "checked by the caller");
        let mut raw = std::ptr::null_mut();
        // SAFETY: `weights` holds inputs * outputs values of the format `T::BF16` names,
        // read during the call only; `raw` is written on success.
        let status = unsafe {
            crossenc_weights_new(
                inputs as i64,
                outputs as i64,
                c_int::from(T::BF16),
                weights.as_ptr().cast(),
                &mut raw,
            )
        };
        check(status, || {
            format!("preparing {inputs}x{outputs} {} weights", T::NAME)
        })?;
        NonNull::new(raw)
            .map(Self)
            .ok_or_else(|| OnednnError::Unavailable("oneDNN returned no weights".into()))
    }
}

impl Drop for Weights {
    fn drop(&mut self) {
        // SAFETY: made by crossenc_weights_new, freed once.
        unsafe { crossenc_weights_free(self.0.as_ptr()) }
    }
}

pub(crate) struct Product {
    raw: NonNull<RawProduct>,
    rows: usize,
    epilogue: Epilogue,
}

// SAFETY: a oneDNN primitive may be executed from any thread; the caller serialises
// executions of one product anyway (a mutex around the cache).
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    pub fn new(weights: &Weights, rows: usize, epilogue: Epilogue) -> Result<Self, OnednnError> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `weights` is alive and prepared; `raw` is written on success.
        let status = unsafe {
            crossenc_product_new(
                weights.0.as_ptr(),
                rows as i64,
                c_int::from(epilogue.bias),
                epilogue.activation as c_int,
                &mut raw,
            )
        };
        check(status, || format!("creating a product for {rows} rows"))?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| OnednnError::Unavailable("oneDNN returned no product".into()))?;
        Ok(Self {
            raw,
            rows,
            epilogue,
        })
    }

    /// The product into `dst`: `dst += src * weights`, or with a bias `dst = src *
    /// weights + bias`, then the epilogue's activation. The caller checked `src`'s and
    /// `dst`'s lengths against `rows` and the bias's against the outputs, that `T` is
    /// the weights' format, and that `bias` is there exactly when the epilogue has one;
    /// where the epilogue has a bias, `dst` may be uninitialised (it is only written).
    pub fn run<T: Element>(
        &self,
        weights: &Weights,
        src: &[T],
        bias: Option<&[f32]>,
        dst: &mut [std::mem::MaybeUninit<f32>],
        threads: usize,
    ) -> Result<(), OnednnError> {
        assert_eq!(bias.is_some(), self.epilogue.bias, "checked by the caller");
        let threads = c_int::try_from(threads.max(1)).unwrap_or(c_int::MAX);
        // SAFETY: the product was made for `self.rows` rows of these weights' shape and
        // format, and the caller checked that `src` (in that format), `bias` and `dst`
        // hold exactly that many rows and outputs; `dst` is borrowed mutably for the
        // call, and read only by a product without a bias, whose caller initialised it.
        let status = unsafe {
            crossenc_product_run(
                self.raw.as_ptr(),
                weights.0.as_ptr(),
                src.as_ptr().cast(),
                bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                dst.as_mut_ptr().cast(),
                threads,
            )
        };
        check(status, || {
            format!("running a {} product of {} rows", T::NAME, self.rows)
        })
    }

    pub fn implementation(&self) -> String {
        // SAFETY: the shim returns a NUL-terminated string owned by the product, alive
        // while `self` is; copied out at once.
        unsafe { CStr::from_ptr(crossenc_product_implementation(self.raw.as_ptr())) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        // SAFETY: made by crossenc_product_new, freed once.
        unsafe { crossenc_product_free(self.raw.as_ptr()) }
    }
}
