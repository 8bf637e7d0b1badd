/// One layer's cache: `keys` and `values` as [num_blocks · block_size, width] rows. GQA stores
/// K and V per KV head; MLA stores its compressed latent and rope key as `keys` and no values.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Key rows.
    pub keys: Vec<f32>,
    /// Value rows (empty when `v_width` is 0).
    pub values: Vec<f32>,
    /// Values per key row.
    pub k_width: usize,
    /// Values per value row.
    pub v_width: usize,
}

impl LayerCache {
    /// Writes the rows of one token at `slot`.
    pub fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        self.keys[slot * self.k_width..][..self.k_width].copy_from_slice(k);
        if self.v_width > 0 {
            self.values[slot * self.v_width..][..self.v_width].copy_from_slice(v);
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
        let slots = num_blocks * block_size;
        let layers = widths
            .iter()
            .map(|&(k_width, v_width)| LayerCache {
                keys: vec![0.0; slots * k_width],
                values: vec![0.0; slots * v_width],
                k_width,
                v_width,
            })
            .collect();
        Self { layers, num_blocks, block_size }
    }

    /// Blocks of storage.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes one token takes across layers (f32 on the CPU).
    pub fn bytes_per_token(&self) -> usize {
        self.layers.iter().map(|l| (l.k_width + l.v_width) * 4).sum()
    }
}
