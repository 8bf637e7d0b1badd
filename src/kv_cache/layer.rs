use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// One layer's cache: `keys` and `values` as [num_blocks · block_size, width] rows (flat tensors
/// on the model's device: bf16 on a GPU, as vLLM keeps a bf16 model's cache, f32 on the CPU). GQA
/// stores K and V per KV head; MLA stores its compressed latent and rope key as `keys` and no
/// values.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Key rows.
    pub keys: Tensor,
    /// Value rows (empty when `v_width` is 0).
    pub values: Tensor,
    /// Values per key row.
    pub k_width: usize,
    /// Values per value row.
    pub v_width: usize,
}

impl LayerCache {
    /// Writes the rows of one token at `slot` (a CPU cache).
    pub fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        self.keys.as_mut_slice()[slot * self.k_width..][..self.k_width].copy_from_slice(k);
        if self.v_width > 0 {
            self.values.as_mut_slice()[slot * self.v_width..][..self.v_width].copy_from_slice(v);
        }
    }
}

/// The cache storage of every layer one rank holds. Which blocks belong to which sequence is
/// decided by the driver's [`super::BlockAllocator`]; every rank indexes its storage by the same
/// block ids.
#[derive(Debug)]
pub struct KvCache {
    /// Per-layer storage.
    pub layers: Vec<LayerCache>,
    num_blocks: usize,
    block_size: usize,
}

impl KvCache {
    /// A cache of `num_blocks` blocks with per-layer row widths `(k_width, v_width)`.
    pub fn new(num_blocks: usize, block_size: usize, widths: &[(usize, usize)]) -> Self {
        Self::new_on(num_blocks, block_size, widths, &Device::Cpu)
            .expect("a CPU cache always allocates")
    }

    /// [`Self::new`] with the storage on `device`.
    pub fn new_on(
        num_blocks: usize,
        block_size: usize,
        widths: &[(usize, usize)],
        device: &Device,
    ) -> Result<Self> {
        let slots = num_blocks * block_size;
        let layers = widths
            .iter()
            .map(|&(k_width, v_width)| {
                Ok(LayerCache {
                    keys: Tensor::zeros_bf16_on([slots * k_width], device)?,
                    values: Tensor::zeros_bf16_on([slots * v_width], device)?,
                    k_width,
                    v_width,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            num_blocks,
            block_size,
        })
    }

    /// Blocks of storage.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes one token takes across layers (2 a value on a GPU, 4 on the CPU).
    pub fn bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k_width + l.v_width) * if l.keys.is_cuda() { 2 } else { 4 })
            .sum()
    }
}
