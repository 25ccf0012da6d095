//! A loaded cross-encoder of any supported architecture: on the CPU the packed,
//! padding-free forward pass; elsewhere (and as its reference) the architecture's
//! padded pass on candle.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::arch::PaddedModel;
use crate::packed::{fastest, measure, timed_rows, PackedPass, PackedTokens, PrefixStats};
use crate::{Dtype, KernelChoice, KernelRate, Kernels, ModelConfig, ModelError, ModelFolder};

/// A loaded cross-encoder, ready to score batches.
pub struct CrossEncoder {
    config: ModelConfig,
    device: Device,
    folder: ModelFolder,
    /// The padding-free CPU forward pass; `None` on other devices.
    packed: Option<Box<dyn PackedPass>>,
    /// candle's padded pass: built at load off the CPU; on it, only when asked (tests,
    /// an empty batch), so that a CPU worker holds one copy of the weights.
    padded: OnceLock<Box<dyn PaddedModel>>,
    products: Products,
    /// The packed pass's kernels and what they were chosen over; `None` off the CPU.
    kernels: Option<KernelChoice>,
}

/// What a loaded model's products actually run in: what was asked, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16 {
        implementation: String,
        amx: bool,
    },
    /// bf16 weights and activations in candle's padded pass (the GPU path), f32 at
    /// the logits.
    Bf16Candle,
    /// bf16 was asked for; f32 runs, for this reason.
    F32Instead {
        reason: String,
    },
}

impl Products {
    /// The number format that runs.
    pub fn dtype(&self) -> Dtype {
        match self {
            Products::Bf16 { .. } | Products::Bf16Candle => Dtype::Bf16,
            Products::F32 | Products::F32Instead { .. } => Dtype::F32,
        }
    }
}

impl std::fmt::Display for Products {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Products::F32 => f.write_str("f32"),
            Products::Bf16 {
                implementation,
                amx: true,
            } => write!(f, "bf16 on AMX tiles (oneDNN {implementation})"),
            Products::Bf16 { implementation, .. } => write!(
                f,
                "bf16 on AVX512-BF16 without AMX (oneDNN {implementation})"
            ),
            Products::Bf16Candle => f.write_str("bf16 weights and activations (candle)"),
            Products::F32Instead { reason } => {
                write!(f, "f32, although bf16 was asked for: {reason}")
            }
        }
    }
}

/// Pairs padded to one width, as the forward pass takes them.
#[derive(Debug, Default)]
pub struct PaddedBatch {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    lengths: Vec<usize>,
    width: usize,
    pad_id: u32,
}

impl PaddedBatch {
    /// An empty batch whose rows will be `width` tokens long.
    pub fn new(width: usize, pairs: usize, pad_id: u32) -> Self {
        Self {
            ids: Vec::with_capacity(width * pairs),
            type_ids: Vec::with_capacity(width * pairs),
            lengths: Vec::with_capacity(pairs),
            width,
            pad_id,
        }
    }

    /// Adds one pair; it must not be longer than the width.
    pub fn push(&mut self, ids: impl ExactSizeIterator<Item = u32>, type_ids: &[u8]) {
        let len = ids.len();
        assert!(len <= self.width && len == type_ids.len() && len > 0);
        self.ids.extend(ids);
        self.ids
            .extend(std::iter::repeat_n(self.pad_id, self.width - len));
        self.type_ids.extend(type_ids.iter().map(|&t| u32::from(t)));
        self.type_ids
            .extend(std::iter::repeat_n(0, self.width - len));
        self.lengths.push(len);
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Real tokens, without padding.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Tokens computed, padding included.
    pub fn padded_tokens(&self) -> usize {
        self.width * self.lengths.len()
    }

    /// Each pair's real tokens.
    pub(crate) fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// `[pairs, width]`: 1 for a real token, 0 for padding, as transformers'
    /// `attention_mask`.
    pub(crate) fn real_tokens_mask(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let mut mask = Vec::with_capacity(self.padded_tokens());
        for &len in &self.lengths {
            mask.extend(std::iter::repeat_n(1f32, len));
            mask.extend(std::iter::repeat_n(0f32, self.width - len));
        }
        Tensor::from_vec(mask, (self.len(), self.width), device)?.to_dtype(dtype)
    }

    /// Ids and type ids `[pairs, width]` on `device`.
    pub(crate) fn tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let shape = (self.len(), self.width);
        Ok((
            Tensor::from_slice(&self.ids, shape, device)?,
            Tensor::from_slice(&self.type_ids, shape, device)?,
        ))
    }
}

/// Pairs end to end, without padding, as the packed forward pass reads them.
#[derive(Debug)]
pub struct PackedPairs {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    /// Where each pair starts, and the total at the end.
    offsets: Vec<usize>,
    /// Each pair's leading tokens that are a prompt prefix other pairs may share.
    shared: Vec<usize>,
}

impl Default for PackedPairs {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

impl PackedPairs {
    pub fn with_capacity(pairs: usize, tokens: usize) -> Self {
        let mut offsets = Vec::with_capacity(pairs + 1);
        offsets.push(0);
        Self {
            ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            offsets,
            shared: Vec::with_capacity(pairs),
        }
    }

    /// Adds one pair (at least one token, as many type ids as ids).
    pub fn push(&mut self, ids: impl ExactSizeIterator<Item = u32>, type_ids: &[u8]) {
        self.push_shared(ids, type_ids, 0);
    }

    /// Adds one pair whose first `shared` tokens (fewer than all) are a decoder prompt's
    /// prefix: the pass computes their keys and values once for every pair with the
    /// same ones, and may keep them for later batches. An encoder ignores it.
    pub fn push_shared(
        &mut self,
        ids: impl ExactSizeIterator<Item = u32>,
        type_ids: &[u8],
        shared: usize,
    ) {
        assert!(ids.len() == type_ids.len() && ids.len() > 0 && shared < ids.len());
        self.ids.extend(ids);
        self.type_ids.extend(type_ids.iter().map(|&t| u32::from(t)));
        self.offsets.push(self.ids.len());
        self.shared.push(shared);
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Tokens in the longest pair.
    fn longest(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tokens(&self) -> PackedTokens<'_> {
        PackedTokens {
            ids: &self.ids,
            type_ids: &self.type_ids,
            offsets: &self.offsets,
            shared: &self.shared,
        }
    }

    /// The same pairs padded to the longest, for candle's forward pass.
    fn padded(&self, pad_id: u32) -> PaddedBatch {
        let mut batch = PaddedBatch::new(self.longest(), self.len(), pad_id);
        for w in self.offsets.windows(2) {
            let types: Vec<u8> = self.type_ids[w[0]..w[1]].iter().map(|&t| t as u8).collect();
            batch.push(self.ids[w[0]..w[1]].iter().copied(), &types);
        }
        batch
    }
}

impl CrossEncoder {
    /// Memory-maps `model.safetensors` and prepares the weights for `device` and
    /// `dtype`; [`CrossEncoder::products`] says what runs. On the CPU the packed pass
    /// runs (bf16 through oneDNN); elsewhere candle's padded pass, in bf16 when asked.
    ///
    /// bf16 on the CPU runs on AMX tiles always, and on AVX512-BF16 alone only where it
    /// times faster than f32 on the model's layer at load: which wins there depends on
    /// the CPU (on Intel CPUs without AMX bf16 timed about half as fast as f32, on an
    /// AMD Zen 4 about twice as fast).
    pub fn load(folder: &ModelFolder, device: Device, dtype: Dtype) -> Result<Self, ModelError> {
        Self::load_with(folder, device, dtype, false)
    }

    /// [`CrossEncoder::load`], where `bf16_without_amx` runs bf16 on AVX512-BF16 even
    /// where it timed slower than f32, to test that path.
    pub fn load_with(
        folder: &ModelFolder,
        device: Device,
        dtype: Dtype,
        bf16_without_amx: bool,
    ) -> Result<Self, ModelError> {
        if !device.is_cpu() {
            return Self::load_padded(folder, device, dtype);
        }
        let mut model = Self::empty(folder, device);
        let mut packed = model.packed_pass()?;
        let (products, choice) = choose_kernels(packed.as_ref(), dtype, bf16_without_amx)?;
        packed.prepare_products(choice.chosen.kernels)?;
        model.packed = Some(packed);
        model.products = products;
        model.kernels = Some(choice);
        Ok(model)
    }

    /// The CPU's packed pass on the `kernels` given, untimed: to compare kernels with
    /// each other (tests, `crossenc bench --kernels`).
    pub fn load_on(folder: &ModelFolder, kernels: Kernels) -> Result<Self, ModelError> {
        let mut model = Self::empty(folder, Device::Cpu);
        let mut packed = model.packed_pass()?;
        packed.prepare_products(kernels)?;
        let layer = packed.timed_layer();
        let rows = timed_rows(&layer);
        let implementation = layer
            .first()
            .map_or_else(|| "none".into(), |l| l.implementation(rows));
        if kernels == Kernels::OnednnBf16 {
            let amx = matches!(
                crossenc_onednn::support(),
                crossenc_onednn::Support::Native { amx: true, .. }
            );
            model.products = Products::Bf16 {
                amx,
                implementation: implementation.clone(),
            };
        }
        model.packed = Some(packed);
        let chosen = KernelRate {
            kernels,
            implementation,
            gflops: f64::NAN,
        };
        model.kernels = Some(KernelChoice {
            measured: vec![chosen.clone()],
            chosen,
            rows,
        });
        Ok(model)
    }

    /// candle's padded pass alone, as GPUs run it, on any device: bf16 weights and
    /// activations where `dtype` asks for bf16. On the CPU, the reference the GPU's
    /// numbers are checked against where no GPU is.
    pub fn load_padded(
        folder: &ModelFolder,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self, ModelError> {
        let mut model = Self::empty(folder, device);
        let weights = match (dtype, model.config.arch().no_candle_bf16()) {
            (Dtype::F32, _) => DType::F32,
            (Dtype::Bf16, Some(reason)) => {
                let reason = reason.to_string();
                model.products = Products::F32Instead { reason };
                DType::F32
            }
            (Dtype::Bf16, None) => {
                model.products = Products::Bf16Candle;
                DType::BF16
            }
        };
        let padded = model
            .config
            .arch()
            .padded(model.weights(weights)?, &model.config);
        let _ = model
            .padded
            .set(padded.map_err(|e| model.weights_error(e))?);
        Ok(model)
    }

    fn empty(folder: &ModelFolder, device: Device) -> Self {
        Self {
            config: folder.config.clone(),
            device,
            folder: folder.clone(),
            packed: None,
            padded: OnceLock::new(),
            products: Products::F32,
            kernels: None,
        }
    }

    /// The architecture's packed CPU pass over f32 weights, its products on `gemm`.
    fn packed_pass(&self) -> Result<Box<dyn PackedPass>, ModelError> {
        let packed = self
            .config
            .arch()
            .packed(self.weights(DType::F32)?, &self.config);
        packed.map_err(|e| self.weights_error(e))
    }

    /// The weights' files (one, or every shard), mapped for candle, their tensors
    /// converted to `dtype` as they are read: checkpoints published in bf16 or f16 run
    /// the f32 pass on their values upcast.
    fn weights(&self, dtype: DType) -> Result<VarBuilder<'static>, ModelError> {
        let files = self.folder.weight_files();
        let index = self.folder.weight_index();
        // SAFETY: the files are opened read-only and their tensors are copied out while
        // they are mapped; as with every mmap, they must not be truncated underneath us.
        unsafe { crate::weights::mapped(files, index, dtype, &self.device) }
            .map_err(|e| self.weights_error(e))
    }

    fn weights_error(&self, e: candle_core::Error) -> ModelError {
        ModelError::Weights {
            path: self.folder.weights_path(),
            message: e.to_string(),
        }
    }

    /// candle's padded pass, built on first use on the CPU.
    fn padded(&self) -> Result<&dyn PaddedModel, ModelError> {
        if self.padded.get().is_none() {
            let built = self
                .config
                .arch()
                .padded(self.weights(DType::F32)?, &self.config);
            // Two threads may race here; either model is the same.
            let _ = self.padded.set(built.map_err(|e| self.weights_error(e))?);
        }
        Ok(self.padded.get().expect("set above").as_ref())
    }

    /// What the products run in, after any fallback.
    pub fn products(&self) -> &Products {
        &self.products
    }

    /// The CPU pass's kernels, timed against the others at load; `None` off the CPU.
    pub fn kernels(&self) -> Option<&KernelChoice> {
        self.kernels.as_ref()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw scores, one per pair, in order (see [`ModelConfig::raw_score`]): on the CPU
    /// by the packed forward pass, elsewhere by candle over the pairs padded to the
    /// longest.
    pub fn score_pairs(&self, pairs: &PackedPairs) -> Result<Vec<f32>, ModelError> {
        self.check_tokens(pairs)?;
        match &self.packed {
            Some(packed) if !pairs.is_empty() => {
                let logits = packed.logits(&pairs.tokens(), rayon::current_num_threads())?;
                Ok(self.raw_scores(&logits))
            }
            _ => self.score_padded(&pairs.padded(self.config.pad_token_id)),
        }
    }

    /// Bounds the bytes of a decoder's prompt prefixes kept across batches (0: none
    /// kept; a batch's pairs share theirs whatever the bound). Nothing for an encoder,
    /// or on candle's padded pass.
    pub fn set_prefix_cache_bytes(&self, bytes: usize) {
        if let Some(packed) = &self.packed {
            packed.set_prefix_cache(bytes);
        }
    }

    /// What sharing prompt prefixes did since load: a decoder's on the packed pass.
    pub fn prefix_stats(&self) -> Option<PrefixStats> {
        self.packed.as_ref().and_then(|p| p.prefix_stats())
    }

    /// Token and type ids index the embedding tables: one past them is an error here,
    /// not a read out of bounds in the forward pass.
    fn check_tokens(&self, pairs: &PackedPairs) -> Result<(), ModelError> {
        let c = &self.config;
        let beyond = |ids: &[u32], limit: usize| ids.iter().copied().find(|&i| i as usize >= limit);
        if let Some(value) = beyond(&pairs.ids, c.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                what: "token id",
                value,
                limit: c.vocab_size,
            });
        }
        if c.layout.token_types {
            if let Some(value) = beyond(&pairs.type_ids, c.type_vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    what: "token type id",
                    value,
                    limit: c.type_vocab_size,
                });
            }
        }
        let longest = pairs.longest();
        if longest > c.max_pair_length() {
            return Err(ModelError::TokenOutOfRange {
                what: "pair length",
                value: longest as u32,
                limit: c.max_pair_length(),
            });
        }
        Ok(())
    }

    /// Raw scores by the architecture's padded pass on candle, mask and all: the
    /// reference the packed pass is tested against, and the path on GPUs.
    pub fn score_padded(&self, batch: &PaddedBatch) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.padded()?.logits(batch, &self.device)?;
        let logits = logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(self.raw_scores(&logits))
    }

    /// One raw score per pair from the logits of all labels, pair after pair.
    fn raw_scores(&self, logits: &[f32]) -> Vec<f32> {
        logits
            .chunks_exact(self.config.num_labels())
            .map(|labels| self.config.raw_score(labels))
            .collect()
    }
}

/// Times the kernels `dtype` may run on one of the model's layers and picks: for f32
/// the faster of `gemm` and oneDNN's f32; for bf16, oneDNN's bf16 on AMX, or where it
/// beats the best f32 (or `without_amx` asks), and that f32 otherwise, saying why.
fn choose_kernels(
    packed: &dyn PackedPass,
    dtype: Dtype,
    without_amx: bool,
) -> Result<(Products, KernelChoice), ModelError> {
    let layer = packed.timed_layer();
    let threads = rayon::current_num_threads();
    let mut measured = vec![measure(&layer, Kernels::Gemm, threads)?];
    // Without oneDNN in the build its weights cannot be made, and gemm runs alone.
    if let Ok(rate) = measure(&layer, Kernels::OnednnF32, threads) {
        measured.push(rate);
    }
    let best_f32 = fastest(&measured).expect("gemm was timed").clone();
    let mut chosen = best_f32.clone();
    let products = match (dtype, crossenc_onednn::support()) {
        (Dtype::F32, _) => Products::F32,
        (Dtype::Bf16, crossenc_onednn::Support::Missing(reason)) => Products::F32Instead {
            reason: reason.clone(),
        },
        (
            Dtype::Bf16,
            crossenc_onednn::Support::Native {
                amx,
                implementation,
            },
        ) => {
            let bf16 = measure(&layer, Kernels::OnednnBf16, threads)?;
            measured.push(bf16.clone());
            if *amx || without_amx || bf16.gflops > best_f32.gflops {
                chosen = bf16;
                Products::Bf16 {
                    implementation: implementation.clone(),
                    amx: *amx,
                }
            } else {
                Products::F32Instead {
                    reason: bf16_slower(implementation, &bf16, &best_f32),
                }
            }
        }
    };
    let rows = timed_rows(&layer);
    Ok((
        products,
        KernelChoice {
            chosen,
            measured,
            rows,
        },
    ))
}

fn bf16_slower(implementation: &str, bf16: &KernelRate, f32: &KernelRate) -> String {
    format!(
        "this CPU has no AMX, and bf16 on AVX512-BF16 ({implementation}) timed slower than \
         f32 on this model's layer: {:.0} GFLOP/s against {:.0} for {} \
         (CROSSENC_BF16_WITHOUT_AMX=1 runs it anyway)",
        bf16.gflops,
        f32.gflops,
        f32.kernels.name()
    )
}
