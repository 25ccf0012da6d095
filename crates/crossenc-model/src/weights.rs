//! The weights' files as candle reads them: one `model.safetensors`, or the shards of a
//! sharded checkpoint, whose index is the authority on which tensors there are. A
//! tensor the model reads that the index does not name is refused, naming both, even
//! where a shard happens to hold it: the checkpoint is not what its index says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// The tensors a sharded checkpoint's index names, and where the index is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WeightIndex {
    pub path: PathBuf,
    pub tensors: Arc<BTreeSet<String>>,
}

struct IndexedFiles {
    files: MmapedSafetensors,
    index: Option<WeightIndex>,
}

impl IndexedFiles {
    fn check(&self, name: &str) -> candle_core::Result<()> {
        match &self.index {
            Some(index) if !index.tensors.contains(name) => Err(candle_core::Error::Msg(format!(
                "tensor {name} is not named by {}: the model needs it",
                index.path.display()
            ))),
            _ => Ok(()),
        }
    }
}

impl SimpleBackend for IndexedFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.check(name)?;
        SimpleBackend::get(&self.files, shape, name, hints, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.check(name)?;
        self.files.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.check(name).is_ok() && self.files.contains_tensor(name)
    }
}

/// `files` mapped for candle, their tensors converted to `dtype` as they are read
/// (checkpoints published in bf16 or f16 run the f32 pass on their values upcast).
///
/// # Safety
/// As with every mmap, the files must not be truncated while they are mapped.
pub(crate) unsafe fn mapped(
    files: &[impl AsRef<Path>],
    index: Option<&WeightIndex>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: the caller's promise, passed on.
    let files = unsafe { MmapedSafetensors::multi(files)? };
    let backend = IndexedFiles {
        files,
        index: index.cloned(),
    };
    Ok(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}
