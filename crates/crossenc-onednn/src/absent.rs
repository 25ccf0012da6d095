//! Stands in for `ffi.rs` in a build without oneDNN: weights cannot be prepared, so no
//! product is ever made and callers fall back to f32.

use crate::{bf16, OnednnError};

pub(crate) fn amx() -> bool {
    false
}

pub(crate) enum Weights {}

pub(crate) enum Product {}

impl Weights {
    pub fn new(_weights: &[bf16], _inputs: usize, _outputs: usize) -> Result<Self, OnednnError> {
        Err(OnednnError::Unavailable(
            "crossenc was built without oneDNN (install libdnnl-dev and rebuild)".into(),
        ))
    }
}

impl Product {
    pub fn new(weights: &Weights, _rows: usize) -> Result<Self, OnednnError> {
        match *weights {}
    }

    pub fn run(
        &self,
        _weights: &Weights,
        _src: &[bf16],
        _dst: &mut [f32],
        _threads: usize,
    ) -> Result<(), OnednnError> {
        match *self {}
    }

    pub fn implementation(&self) -> String {
        match *self {}
    }
}
