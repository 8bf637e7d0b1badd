//! Weights and forward pass of the decoder stack, in the order of the math:
//!
//! h₀ = E[tokens];  for each layer ℓ:  h ← h + Attn(RMSNorm(h));  h ← h + MoE(RMSNorm(h));
//! logits = RMSNorm(h) · W_lmᵀ   (W_lm = E when embeddings are tied)

use crate::attention::{Attention, MlaForm};
use crate::checkpoint::WeightSource;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::StepBatch;
use crate::moe::MoeBlock;
use crate::ops;
use crate::tensor::Tensor;

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_norm: Tensor,
    attention: Attention,
    post_attention_norm: Tensor,
    ffn: MoeBlock,
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// None when tied to the embedding.
    lm_head: Option<Tensor>,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// [batch.logit_rows.len(), vocab].
    pub logits: Tensor,
    /// Per layer, tokens routed to each logical expert (empty for dense layers).
    pub expert_counts: Vec<Vec<u64>>,
    /// Per layer, (token, expert) pairs each EP rank computed (empty for dense layers).
    pub rank_tokens: Vec<Vec<u64>>,
    /// Bytes the communicators moved between ranks during the step.
    pub comm_bytes: u64,
}

impl DecoderLayer {
    fn load(cfg: &ModelConfig, src: &dyn WeightSource, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let norm = |n: &str| src.load(&format!("{p}.{n}.weight"), &[cfg.hidden_size]);
        let attention = Attention::load(cfg, src, &format!("{p}.self_attn"))?;
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attention,
            post_attention_norm: norm("post_attention_layernorm")?,
            ffn: MoeBlock::load(cfg, src, layer)?,
        })
    }
}

impl Model {
    /// Loads every weight the config implies from `src`.
    pub fn load(config: &ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = src.load("model.embed_tokens.weight", &[v, h])?;
        let layers = (0..config.num_layers)
            .map(|i| DecoderLayer::load(config, src, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = src.load("model.norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(src.load("lm_head.weight", &[v, h])?) };
        Ok(Self { config: config.clone(), embed, layers, norm, lm_head })
    }

    /// Chooses the algebraic form of multi-head latent attention (no effect on GQA models).
    pub fn set_mla_form(&mut self, form: MlaForm) {
        for layer in &mut self.layers {
            if let Attention::Mla(a) = &mut layer.attention {
                a.set_form(form);
            }
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A paged cache for every layer of this model.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        let widths: Vec<(usize, usize)> = self.layers.iter().map(|l| l.attention.cache_widths()).collect();
        KvCache::new(num_blocks, block_size, &widths)
    }

    /// Bytes of all weights in their stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.embed.stored_bytes() + self.lm_head.as_ref().map_or(0, Tensor::stored_bytes) + self.layers.iter().map(|l| l.ffn.stored_bytes()).sum::<usize>()
    }

    /// Runs the batch's new tokens through the model, writing their keys and values into
    /// `cache`, and returns the logits of `batch.logit_rows`.
    pub fn forward(&self, batch: &StepBatch, cache: &mut KvCache) -> Result<StepOutput> {
        let eps = self.config.rms_norm_eps;
        let block_size = cache.block_size();
        let mut residual = ops::embedding(&self.embed, &batch.tokens)?;
        let mut delta: Option<Tensor> = None;
        let mut expert_counts = Vec::with_capacity(self.layers.len());
        let mut rank_tokens = Vec::with_capacity(self.layers.len());
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let x = match &delta {
                Some(d) => ops::add_rms_norm(&mut residual, d, &layer.input_norm, eps)?,
                None => ops::rms_norm(&residual, &layer.input_norm, eps)?,
            };
            let attn = layer.attention.forward(&x, batch, layer_cache, block_size)?;
            let x = ops::add_rms_norm(&mut residual, &attn, &layer.post_attention_norm, eps)?;
            let moe = layer.ffn.forward(&x)?;
            rank_tokens.push(if moe.expert_counts.is_empty() { Vec::new() } else { vec![moe.expert_counts.iter().sum()] });
            expert_counts.push(moe.expert_counts);
            delta = Some(moe.hidden);
        }
        if let Some(d) = &delta {
            ops::add_in_place(&mut residual, d);
        }
        let h = self.config.hidden_size;
        let rows: Vec<f32> = batch.logit_rows.iter().flat_map(|&r| residual.row(r).to_vec()).collect();
        let rows = ops::rms_norm(&Tensor::from_f32([batch.logit_rows.len(), h], rows)?, &self.norm, eps)?;
        let logits = ops::linear(&rows, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        Ok(StepOutput { logits, expert_counts, rank_tokens, comm_bytes: 0 })
    }
}
