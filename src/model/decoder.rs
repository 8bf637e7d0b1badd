//! Weights and forward pass of the decoder stack, in the order of the math:
//!
//! h₀ = E[tokens];  for each layer ℓ:  h ← h + Attn(RMSNorm(h));  h ← h + MoE(RMSNorm(h));
//! logits = RMSNorm(h) · W_lmᵀ   (W_lm = E when embeddings are tied)
//!
//! On many ranks (see [`crate::parallel`]) a rank holds one pipeline stage's layers, its TP
//! share of every attention and its EP share of every MoE block. Its attention group computes
//! its own sequences; after attention the TP group reduce-scatters so each rank owns 1/tp of
//! the tokens for the MoE block, then all-gathers them back.

use super::rank_output::RankOutput;
use crate::attention::{Attention, AttentionStep, MlaForm};
use crate::backend::{Device, MoeScratch};
use crate::checkpoint::WeightSource;
use crate::comm::even_counts;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::StepBatch;
use crate::moe::MoeBlock;
use crate::ops;
use crate::parallel::{split, RankContext, Shard};
use crate::tensor::Tensor;

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_norm: Tensor,
    attention: Attention,
    post_attention_norm: Tensor,
    ffn: MoeBlock,
}

/// The part of a model one rank holds (all of it on a single rank).
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    shard: Shard,
    /// On the first stage.
    embed: Option<Tensor>,
    layers: Vec<DecoderLayer>,
    /// Final norm and lm_head, on the last stage.
    head: Option<(Tensor, Tensor)>,
    /// Where the weights (and the caches this model makes) live.
    device: Device,
    /// The buffers this rank's fused GPU MoE blocks share (None on the CPU, or when no block is
    /// fused). Behind a mutex because forward takes `&self`; one rank's layers run in order.
    moe_scratch: Option<std::sync::Arc<std::sync::Mutex<MoeScratch>>>,
}

impl DecoderLayer {
    fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        layer: usize,
        shard: &Shard,
    ) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let norm = |n: &str| src.load(&format!("{p}.{n}.weight"), &[cfg.hidden_size]);
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attention: Attention::load(cfg, src, &format!("{p}.self_attn"), shard)?,
            post_attention_norm: norm("post_attention_layernorm")?,
            ffn: MoeBlock::load(cfg, src, layer, shard)?,
        })
    }

    /// Moves the layer's weights to `device` (matrices bf16, vectors f32 on a GPU).
    fn to_device(&mut self, device: &Device) -> Result<()> {
        self.input_norm = self.input_norm.to_device(device)?;
        self.post_attention_norm = self.post_attention_norm.to_device(device)?;
        self.attention.to_device(device)?;
        self.ffn.to_device(device)
    }
}

impl Model {
    /// Loads the whole model for one rank, on the CPU.
    pub fn load(config: &ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        Self::load_on(config, src, &Device::Cpu)
    }

    /// Loads the whole model for one rank onto `device` (see [`Self::load_shard_on`]).
    pub fn load_on(config: &ModelConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        let placements = crate::layout::Layout::default().placements(config)?;
        let shard = Shard::single(config.num_layers, placements);
        Self::load_shard_on(config, src, shard, device)
    }

    /// Loads what `shard` holds, on the CPU.
    pub fn load_shard(config: &ModelConfig, src: &dyn WeightSource, shard: Shard) -> Result<Self> {
        Self::load_shard_on(config, src, shard, &Device::Cpu)
    }

    /// Loads what `shard` holds onto `device`, each tensor and layer moved there as soon as it
    /// is read: the host holds at most one layer in f32 at a time, not the whole shard (a
    /// checkpoint in f32 is twice its bf16 size: ~187 GB for Mixtral-8x7B).
    pub fn load_shard_on(
        config: &ModelConfig,
        src: &dyn WeightSource,
        shard: Shard,
        device: &Device,
    ) -> Result<Self> {
        let on_device = |t: Tensor, bf16: bool| match (device, bf16) {
            (Device::Cpu, _) => Ok(t),
            (_, true) => t.to_device_bf16(device),
            (_, false) => t.to_device(device),
        };
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_needed =
            shard.is_first_stage() || (shard.is_last_stage() && config.tie_word_embeddings);
        let embed = if embed_needed {
            Some(on_device(
                src.load("model.embed_tokens.weight", &[v, h])?,
                true,
            )?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(shard.layers.len());
        for i in shard.layers.clone() {
            let mut layer = DecoderLayer::load(config, src, i, &shard)?;
            if !matches!(device, Device::Cpu) {
                layer.to_device(device)?;
            }
            layers.push(layer);
        }
        let head = if shard.is_last_stage() {
            let norm = on_device(src.load("model.norm.weight", &[h])?, false)?;
            // Tied: the embedding's own tensor, shared rather than copied.
            let lm_head = match (&embed, config.tie_word_embeddings) {
                (Some(e), true) => e.clone(),
                _ => on_device(src.load("lm_head.weight", &[v, h])?, true)?,
            };
            Some((norm, lm_head))
        } else {
            None
        };
        let embed = if shard.is_first_stage() { embed } else { None };
        let mut model = Self {
            config: config.clone(),
            shard,
            embed,
            layers,
            head,
            device: device.clone(),
            moe_scratch: None,
        };
        model.moe_scratch = model.new_moe_scratch()?;
        Ok(model)
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

    /// What this rank holds.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The feed-forward block of model layer `layer`, if this rank holds that layer.
    pub fn ffn(&self, layer: usize) -> Option<&MoeBlock> {
        let i = layer.checked_sub(self.shard.layers.start)?;
        self.layers
            .get(i)
            .filter(|_| self.shard.layers.contains(&layer))
            .map(|l| &l.ffn)
    }

    /// [`Model::ffn`], mutable: a rebalance switches the block's placement between steps.
    pub fn ffn_mut(&mut self, layer: usize) -> Option<&mut MoeBlock> {
        let i = layer.checked_sub(self.shard.layers.start)?;
        if !self.shard.layers.contains(&layer) {
            return None;
        }
        self.layers.get_mut(i).map(|l| &mut l.ffn)
    }

    /// Moves every weight to `device` (matrices as bf16, vectors as f32 on a GPU); the caches
    /// this model makes from then on live there too, and every op runs there.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        if let Some(e) = &mut self.embed {
            *e = e.to_device_bf16(device)?;
        }
        for l in &mut self.layers {
            l.to_device(device)?;
        }
        if let Some((norm, lm_head)) = &mut self.head {
            *norm = norm.to_device(device)?;
            *lm_head = lm_head.to_device_bf16(device)?;
        }
        self.device = device.clone();
        self.moe_scratch = self.new_moe_scratch()?;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn new_moe_scratch(&self) -> Result<Option<std::sync::Arc<std::sync::Mutex<MoeScratch>>>> {
        match &self.device {
            Device::Cuda(dev) if self.layers.iter().any(|l| l.ffn.is_fused()) => Ok(Some(
                std::sync::Arc::new(std::sync::Mutex::new(MoeScratch::new(dev)?)),
            )),
            _ => Ok(None),
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn new_moe_scratch(&self) -> Result<Option<std::sync::Arc<std::sync::Mutex<MoeScratch>>>> {
        Ok(None)
    }

    /// Where the weights live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A paged cache for this rank's layers.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        self.try_new_cache(num_blocks, block_size)
            .expect("allocating the KV cache")
    }

    /// A paged cache for this rank's layers on the model's device.
    pub fn try_new_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        let widths: Vec<(usize, usize)> = self
            .layers
            .iter()
            .map(|l| l.attention.cache_widths())
            .collect();
        let dtype = crate::kv_cache::KvDtype::for_attention(&self.config.attention);
        KvCache::new_on(num_blocks, block_size, &widths, &self.device, dtype)
    }

    /// This rank's part of one step. Every rank of the world calls it with the same batch; the
    /// rank computes its attention group's sequences, takes hidden states from the previous
    /// stage and passes them on, and (on the last stage, TP rank 0) returns its logits rows.
    pub fn forward_rank(
        &self,
        batch: &StepBatch,
        cache: &mut KvCache,
        ctx: &RankContext,
    ) -> Result<RankOutput> {
        let s = &self.shard;
        let (sub, logit_index) = split::sub_batch(batch, s.dp_rank(), s.dp());
        let h = self.config.hidden_size;
        let mut residual = match &self.embed {
            Some(e) => ops::embedding(e, &sub.tokens)?,
            None => {
                let x = ctx.pp.recv_rows(s.stage - 1, h, &self.device)?;
                if x.dims()[0] != sub.tokens.len() {
                    return Err(crate::Error::Ranks(format!(
                        "stage {} sent {} rows for {} tokens",
                        s.stage - 1,
                        x.dims()[0],
                        sub.tokens.len()
                    )));
                }
                x
            }
        };
        let started = ctx.tick();
        let mut out = RankOutput {
            ep_rank: s.ep_rank,
            ..RankOutput::default()
        };
        // Positions, cache slots, block tables and the attention plan are the same for every
        // layer: built (and on a GPU uploaded) once for the step.
        let mut rotaries: Vec<&ops::Rotary> = Vec::new();
        for r in self.layers.iter().map(|l| l.attention.rotary()) {
            if !rotaries.contains(&r) {
                rotaries.push(r);
            }
        }
        let step = AttentionStep::new(&sub, cache.block_size(), &self.device, &rotaries)?;
        let mut scratch = self
            .moe_scratch
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (layer, layer_cache)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let layer_index = s.layers.start + i;
            residual = self.layer_forward(
                layer,
                layer_index,
                residual,
                &step,
                layer_cache,
                ctx,
                &mut out,
                scratch.as_deref_mut(),
            )?;
        }
        if !s.is_last_stage() {
            out.work_ticks = started.zip(ctx.tick());
            ctx.pp.send_tensor(&residual, s.stage + 1)?;
            if let Some(scratch) = scratch.as_deref_mut() {
                out.set_expert_counts(scratch.take_counts()?);
            }
            return Ok(out);
        }
        if s.tp_rank == 0 {
            let (norm, lm_head) = self.head.as_ref().expect("the last stage holds the head");
            let picked: Vec<u32> = sub.logit_rows.iter().map(|&r| r as u32).collect();
            let rows = ops::rms_norm(
                &ops::gather_rows(&residual, &picked, 1)?,
                norm,
                self.config.rms_norm_eps,
            )?;
            // The logits stay on this rank's device: the sampler copies to the host only what it
            // needs (token ids on a GPU; see scheduler::sampler::StepLogits).
            out.logits = Some((logit_index, ops::linear(&rows, lm_head, None)?));
        }
        // The step's one wait for the GPU before sampling: the fused blocks' expert counts.
        if let Some(scratch) = scratch.as_deref_mut() {
            out.set_expert_counts(scratch.take_counts()?);
        }
        out.work_ticks = started.zip(ctx.tick());
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &DecoderLayer,
        layer_index: usize,
        mut residual: Tensor,
        step: &AttentionStep,
        cache: &mut crate::kv_cache::LayerCache,
        ctx: &RankContext,
        out: &mut RankOutput,
        scratch: Option<&mut MoeScratch>,
    ) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let h = self.config.hidden_size;
        let t = step.batch().tokens.len();
        let x = ops::rms_norm(&residual, &layer.input_norm, eps)?;
        let partial = layer.attention.forward(&x, step, cache)?;
        let tp = ctx.tp.size();
        let (mut res_slice, attn) = if tp == 1 {
            // One TP rank: nothing to reduce or gather (and the tensors may live on a GPU).
            (residual, partial)
        } else {
            // Reduce the row-parallel partial sums; each TP rank keeps 1/tp of the tokens.
            let counts = even_counts(t, tp);
            let attn = ctx.tp.reduce_scatter_rows(&partial, &counts)?;
            let start = counts[..ctx.tp.rank()].iter().sum::<usize>();
            let mine = counts[ctx.tp.rank()];
            (ops::narrow_rows(&residual, start, mine)?, attn)
        };
        let x = ops::add_rms_norm(&mut res_slice, &attn, &layer.post_attention_norm, eps)?;
        let moe = layer.ffn.forward(&x, ctx.ep.as_ref(), scratch)?;
        ops::add_in_place(&mut res_slice, &moe.hidden)?;
        out.a2a_predicted_bytes += moe.dispatch.predicted_bytes;
        out.a2a_measured_bytes += moe.dispatch.measured_bytes;
        out.record_layer(
            layer_index,
            moe.expert_counts,
            moe.rows_computed,
            layer.ffn.is_sparse(),
        );
        if tp == 1 {
            return Ok(res_slice);
        }
        residual = ctx.tp.all_gather_rows(&res_slice)?;
        if residual.dims() != [t, h] {
            return Err(crate::Error::Ranks(format!(
                "the TP group gathered {} for {t} tokens of {h}",
                residual.shape()
            )));
        }
        Ok(residual)
    }
}
