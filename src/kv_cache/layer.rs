use crate::backend::Device;
use crate::config::AttentionKind;
use crate::error::Result;
use crate::tensor::Tensor;

/// What a GPU cache stores a value as (the CPU reference's cache is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    /// Two bytes a value: a GQA model's keys and values, as vLLM keeps a bf16 model's cache, and
    /// MLA's latent rows at DeepSeek-V2/V3's widths (512 + 64), which the tensor-core MLA kernels
    /// read rounded to bf16 anyway: rounding them once when written gives the same bits at half
    /// the bytes (a rank whose heads are not a multiple of 16 reads them with the per-query
    /// kernel, as bf16 values).
    Bf16,
    /// Four bytes a value: MLA's latent rows at other widths, read by the per-query kernel in
    /// f32. Rounding them to bf16 was seen to flip a routing decision of the DeepSeek-V3 fixture
    /// (one position 35% off the golden; f32 rows: within 5e-3).
    F32,
}

/// MLA's latent and rope widths that the tensor-core MLA kernels take (kernels/mla.cu's
/// MLA_DK = 512 + 64).
const MLA_KERNEL_WIDTHS: (usize, usize) = (512, 64);

impl KvDtype {
    /// The GPU cache's element type for `attention`.
    pub fn for_attention(attention: &AttentionKind) -> Self {
        match attention {
            AttentionKind::Gqa { .. } => KvDtype::Bf16,
            AttentionKind::Mla(m) if (m.kv_lora_rank, m.qk_rope_head_dim) == MLA_KERNEL_WIDTHS => {
                KvDtype::Bf16
            }
            AttentionKind::Mla(_) => KvDtype::F32,
        }
    }

    /// Bytes a value takes on a GPU.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::Bf16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

/// One layer's cache: `keys` and `values` as [num_blocks · block_size, width] rows (flat tensors
/// on the model's device, of the [`KvDtype`] chosen on a GPU, f32 on the CPU). GQA stores K and V
/// per KV head; MLA stores its compressed latent and rope key as `keys` and no values.
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
        Self::new_on(num_blocks, block_size, widths, &Device::Cpu, KvDtype::F32)
            .expect("a CPU cache always allocates")
    }

    /// [`Self::new`] with the storage on `device`, its values stored as `dtype` on a GPU.
    pub fn new_on(
        num_blocks: usize,
        block_size: usize,
        widths: &[(usize, usize)],
        device: &Device,
        dtype: KvDtype,
    ) -> Result<Self> {
        let slots = num_blocks * block_size;
        let zeros = |n: usize| match dtype {
            KvDtype::Bf16 => Tensor::zeros_bf16_on([n], device),
            KvDtype::F32 => Tensor::zeros_on([n], device),
        };
        let layers = widths
            .iter()
            .map(|&(k_width, v_width)| {
                Ok(LayerCache {
                    keys: zeros(slots * k_width)?,
                    values: zeros(slots * v_width)?,
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

    /// Bytes one token takes across layers.
    pub fn bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k_width + l.v_width) * l.keys.element_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MlaConfig;

    fn mla(kv_lora_rank: usize, qk_rope_head_dim: usize) -> AttentionKind {
        AttentionKind::Mla(MlaConfig {
            q_lora_rank: Some(1536),
            kv_lora_rank,
            qk_nope_head_dim: 128,
            qk_rope_head_dim,
            v_head_dim: 128,
        })
    }

    #[test]
    fn latent_rows_are_bf16_only_where_the_tensor_core_kernel_reads_them() {
        let gqa = AttentionKind::Gqa {
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
        };
        assert_eq!(KvDtype::for_attention(&gqa), KvDtype::Bf16);
        assert_eq!(KvDtype::for_attention(&mla(512, 64)), KvDtype::Bf16);
        // The fixtures' narrow latents go to the per-query kernel, which reads f32.
        assert_eq!(KvDtype::for_attention(&mla(32, 16)), KvDtype::F32);
        assert_eq!(KvDtype::for_attention(&mla(512, 32)), KvDtype::F32);
        assert_eq!(KvDtype::for_attention(&mla(512, 64)).bytes(), 2);
    }
}
