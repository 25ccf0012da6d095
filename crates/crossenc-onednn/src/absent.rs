//! Stands in for `ffi.rs` in a build without oneDNN: weights cannot be prepared, so no
//! product is ever made and callers keep their own f32 kernels.

use crate::{Element, Epilogue, OnednnError};

pub(crate) fn amx() -> bool {
    false
}

pub(crate) enum Weights {}

pub(crate) enum Product {}

impl Weights {
    pub fn new<T: Element>(
        _weights: &[T],
        _inputs: usize,
        _outputs: usize,
    ) -> Result<Self, OnednnError> {
        Err(OnednnError::Unavailable(
            "crossenc was built without oneDNN (install libdnnl-dev and rebuild)".into(),
        ))
    }
}

impl Product {
    pub fn new(weights: &Weights, _rows: usize, _epilogue: Epilogue) -> Result<Self, OnednnError> {
        match *weights {}
    }

    pub fn run<T: Element>(
        &self,
        _weights: &Weights,
        _src: &[T],
        _bias: Option<&[f32]>,
        _dst: &mut [std::mem::MaybeUninit<f32>],
        _threads: usize,
    ) -> Result<(), OnednnError> {
        match *self {}
    }

    pub fn implementation(&self) -> String {
        match *self {}
    }
}
