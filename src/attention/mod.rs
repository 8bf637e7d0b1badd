//! Attention layers over the paged cache: grouped-query attention (Llama, Mistral, Mixtral,
//! Qwen) and multi-head latent attention (DeepSeek). Each layer writes its new tokens' cache
//! rows into its own [`LayerCache`].

mod gqa;
mod mla;
mod step;

pub use gqa::GqaAttention;
pub use mla::{MlaAttention, MlaForm};
pub use step::AttentionStep;

use crate::checkpoint::WeightSource;
use crate::config::{AttentionKind, ModelConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::ops::Rotary;
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

    /// The rotary position embedding the layer applies (a step builds its tables once for
    /// every layer that shares it).
    pub fn rotary(&self) -> &Rotary {
        match self {
            Attention::Gqa(a) => a.rotary(),
            Attention::Mla(a) => a.rotary(),
        }
    }

    /// Attention of the step's new tokens `x`, writing their cache rows.
    pub fn forward(
        &self,
        x: &Tensor,
        step: &AttentionStep,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        match self {
            Attention::Gqa(a) => a.forward(x, step, cache),
            Attention::Mla(a) => a.forward(x, step, cache),
        }
    }
}
