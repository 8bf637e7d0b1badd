//! Attention layers over the paged cache: grouped-query attention (Llama, Mistral, Mixtral,
//! Qwen) and multi-head latent attention (DeepSeek). Each layer writes its new tokens' cache
//! rows into its own [`LayerCache`].

mod gqa;
mod mla;

pub use gqa::GqaAttention;
pub use mla::{MlaAttention, MlaForm};

use crate::checkpoint::WeightSource;
use crate::config::{AttentionKind, ModelConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::model::StepBatch;
use crate::parallel::Shard;
use crate::tensor::Tensor;

/// The attention of one layer.
#[derive(Debug, Clone)]
pub enum Attention {
    /// Grouped-query attention.
    Gqa(GqaAttention),
    /// Multi-head latent attention.
    Mla(MlaAttention),
}

impl Attention {
    /// Loads this rank's share of the attention the config describes from `prefix`
    /// (`model.layers.{i}.self_attn`).
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        prefix: &str,
        shard: &Shard,
    ) -> Result<Self> {
        Ok(match cfg.attention {
            AttentionKind::Gqa { .. } => {
                Attention::Gqa(GqaAttention::load(cfg, src, prefix, shard)?)
            }
            AttentionKind::Mla(_) => Attention::Mla(MlaAttention::load(cfg, src, prefix, shard)?),
        })
    }

    /// Moves the weights to `device`.
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        match self {
            Attention::Gqa(a) => a.to_device(device),
            Attention::Mla(a) => a.to_device(device),
        }
    }

    /// Cache row widths (keys, values).
    pub fn cache_widths(&self) -> (usize, usize) {
        match self {
            Attention::Gqa(a) => a.cache_widths(),
            Attention::Mla(a) => a.cache_widths(),
        }
    }

    /// Attention of the batch's new tokens `x`, writing their cache rows.
    pub fn forward(
        &self,
        x: &Tensor,
        batch: &StepBatch,
        cache: &mut LayerCache,
        block_size: usize,
    ) -> Result<Tensor> {
        match self {
            Attention::Gqa(a) => a.forward(x, batch, cache, block_size),
            Attention::Mla(a) => a.forward(x, batch, cache, block_size),
        }
    }
}
