//! Bytes per rank, computed from the config alone (no weights needed): the weights each rank
//! holds under a layout and the KV-cache bytes each cached token costs it.
//!
//! What a rank holds: its TP share of every attention layer of its stage (query heads split;
//! KV heads split, or one replicated head each when tp > kv heads; MLA's compressions
//! replicated, its per-head projections split), norms, the router and shared experts of every
//! MoE layer (computed locally on the rank's tokens), the dense MLPs of an MoE model
//! (replicated), its expert slots (`slots_per_group` experts, each `1/moe_tp` of one expert),
//! the embedding on the first stage, and the final norm and lm_head on the last. A dense model's
//! MLP is its one expert. Biases of MLPs are left out (a rounding error).

use super::validate::GB;
use super::{Layout, LayoutError};
use crate::config::{AttentionKind, ModelConfig};
use crate::kv_cache::KvDtype;
use serde::Serialize;

/// Bytes per element of what a rank stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dtypes {
    /// Bytes per weight (bf16: 2).
    pub weight: u64,
    /// Bytes per KV-cache element (bf16: 2).
    pub kv: u64,
    /// Bytes per activation element moved between ranks (bf16: 2).
    pub activation: u64,
}

impl Default for Dtypes {
    fn default() -> Self {
        Dtypes {
            weight: 2,
            kv: 2,
            activation: 2,
        }
    }
}

/// Weight bytes of one rank, by part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RankWeights {
    /// Token embedding (first stage).
    pub embedding: u64,
    /// Attention projections and q/k norms of the stage's layers (TP share).
    pub attention: u64,
    /// Layer norms (and the final norm on the last stage).
    pub norms: u64,
    /// Routers (and correction biases) of the stage's MoE layers.
    pub router: u64,
    /// Routed-expert slots of the stage's MoE layers (a dense model's MLP too).
    pub experts: u64,
    /// Shared experts of the stage's MoE layers.
    pub shared_experts: u64,
    /// Dense MLP layers of an MoE model.
    pub dense_mlp: u64,
    /// Output projection (last stage).
    pub lm_head: u64,
}

impl RankWeights {
    /// All parts together.
    pub fn total(&self) -> u64 {
        self.embedding
            + self.attention
            + self.norms
            + self.router
            + self.experts
            + self.shared_experts
            + self.dense_mlp
            + self.lm_head
    }
}

/// KV heads one rank of a TP group caches: split when tp ≤ kv heads, one replicated head when
/// tp > kv heads.
pub fn kv_heads_per_rank(kv_heads: usize, tp: usize) -> usize {
    (kv_heads / tp.max(1)).max(1)
}

/// Parameters of one attention layer on one rank of a TP group of `tp`.
pub fn attention_params(model: &ModelConfig, tp: usize) -> u64 {
    let h = model.hidden_size as u64;
    let heads = (model.num_heads / tp.max(1)) as u64;
    match &model.attention {
        AttentionKind::Gqa {
            qkv_bias,
            o_bias,
            qk_norm,
        } => {
            let hd = model.head_dim as u64;
            let kv = kv_heads_per_rank(model.num_kv_heads, tp) as u64;
            let qkv_out = (heads + 2 * kv) * hd;
            h * qkv_out
                + heads * hd * h
                + if *qkv_bias { qkv_out } else { 0 }
                + if *o_bias { h } else { 0 }
                + if *qk_norm { 2 * hd } else { 0 }
        }
        AttentionKind::Mla(m) => {
            let qk = (m.qk_nope_head_dim + m.qk_rope_head_dim) as u64;
            let q = match m.q_lora_rank {
                Some(r) => {
                    let r = r as u64;
                    h * r + r + r * heads * qk
                }
                None => h * heads * qk,
            };
            let kv_lora = m.kv_lora_rank as u64;
            let kv_a = h * (kv_lora + m.qk_rope_head_dim as u64) + kv_lora;
            let kv_b = kv_lora * heads * (m.qk_nope_head_dim + m.v_head_dim) as u64;
            q + kv_a + kv_b + heads * m.v_head_dim as u64 * h
        }
    }
}

/// Parameters of one SwiGLU MLP (gate, up, down).
pub fn mlp_params(hidden: usize, intermediate: usize) -> u64 {
    3 * hidden as u64 * intermediate as u64
}

/// Weight bytes of every rank of pipeline stage `stage` (all ranks of a stage hold the same).
pub fn stage_weights(
    model: &ModelConfig,
    layout: &Layout,
    stage: usize,
    dt: Dtypes,
) -> RankWeights {
    let layers = layout.stage_layers(model.num_layers)[stage].clone();
    let h = model.hidden_size as u64;
    let tp = layout.parallel.tp;
    let moe_tp = layout.moe_tp(model) as u64;
    let slots = layout.slots_per_group(model) as u64;
    let last = stage + 1 == layout.parallel.pp;
    let mut w = RankWeights::default();
    for layer in layers {
        w.attention += attention_params(model, tp);
        w.norms += 2 * h;
        match &model.moe {
            None => {
                w.experts += slots * mlp_params(model.hidden_size, model.intermediate_size) / moe_tp
            }
            Some(moe) if moe.sparse_layers[layer] => {
                let n = moe.n_experts as u64;
                w.router += h * n + if moe.correction_bias { n } else { 0 };
                w.experts += slots * mlp_params(model.hidden_size, moe.intermediate_size) / moe_tp;
                if let Some(s) = &moe.shared {
                    w.shared_experts += mlp_params(model.hidden_size, s.intermediate_size)
                        + if s.gated { h } else { 0 };
                }
            }
            Some(_) => w.dense_mlp += mlp_params(model.hidden_size, model.intermediate_size),
        }
    }
    let vocab = model.vocab_size as u64;
    if stage == 0 {
        w.embedding = vocab * h;
    }
    if last {
        w.norms += h;
        // Tied embeddings on a single stage share the matrix; a separate last stage keeps a copy.
        w.lm_head = if model.tie_word_embeddings && stage == 0 {
            0
        } else {
            vocab * h
        };
    }
    scale(w, dt.weight)
}

fn scale(w: RankWeights, bytes: u64) -> RankWeights {
    RankWeights {
        embedding: w.embedding * bytes,
        attention: w.attention * bytes,
        norms: w.norms * bytes,
        router: w.router * bytes,
        experts: w.experts * bytes,
        shared_experts: w.shared_experts * bytes,
        dense_mlp: w.dense_mlp * bytes,
        lm_head: w.lm_head * bytes,
    }
}

/// KV-cache bytes one cached token costs one layer on one rank: GQA `2 * kv_heads_per_rank *
/// head_dim`, MLA `kv_lora_rank + qk_rope_head_dim` (the latent is shared by all heads, so every
/// TP rank caches all of it).
pub fn kv_bytes_per_token_layer(model: &ModelConfig, tp: usize, dt: Dtypes) -> u64 {
    let elems = match &model.attention {
        AttentionKind::Gqa { .. } => 2 * kv_heads_per_rank(model.num_kv_heads, tp) * model.head_dim,
        AttentionKind::Mla(m) => m.kv_lora_rank + m.qk_rope_head_dim,
    };
    elems as u64 * dt.kv
}

/// KV-cache bytes one cached token costs a rank of stage `stage` (all its layers).
pub fn kv_bytes_per_token(model: &ModelConfig, layout: &Layout, stage: usize, dt: Dtypes) -> u64 {
    let layers = layout.stage_layers(model.num_layers)[stage].len() as u64;
    layers * kv_bytes_per_token_layer(model, layout.parallel.tp, dt)
}

/// What the CUDA backend allocates up front for one rank of `stage` under `layout`: its weights
/// in bf16 and a KV cache of `cache_tokens` tokens (bf16; f32 for MLA's latent at widths other
/// than DeepSeek's: [`KvDtype`]), as
/// (weights, kv) bytes. A floor: norms and biases are kept in f32, and activations and
/// workspaces come on top.
pub fn gpu_rank_bytes(
    model: &ModelConfig,
    layout: &Layout,
    stage: usize,
    cache_tokens: u64,
) -> (u64, u64) {
    let dt = Dtypes {
        kv: KvDtype::for_attention(&model.attention).bytes() as u64,
        ..Dtypes::default()
    };
    let weights = stage_weights(model, layout, stage, dt).total();
    (
        weights,
        kv_bytes_per_token(model, layout, stage, dt).saturating_mul(cache_tokens),
    )
}

/// Refuses to load `ranks` (described, e.g. "ranks [0, 2]") on GPU `gpu` (described) when the
/// (weights, kv) bytes they need together ([`gpu_rank_bytes`]) exceed the `free` bytes its
/// driver reports: the load would otherwise run until an allocation fails part-way, saying
/// neither how much was needed nor what to do. Passing does not promise the load fits.
pub fn check_gpu_room(
    gpu: &str,
    ranks: &str,
    (weights, kv): (u64, u64),
    cache_tokens: u64,
    (free, total): (u64, u64),
) -> Result<(), LayoutError> {
    let needed = weights.saturating_add(kv);
    if needed <= free {
        return Ok(());
    }
    Err(LayoutError::GpuRoom {
        gpu: gpu.to_string(),
        ranks: ranks.to_string(),
        needed_gb: needed as f64 / GB,
        weights_gb: weights as f64 / GB,
        kv_gb: kv as f64 / GB,
        cache_tokens,
        free_gb: free as f64 / GB,
        total_gb: total as f64 / GB,
    })
}

/// Weight bytes of the whole model on one rank.
pub fn model_weights(model: &ModelConfig, dt: Dtypes) -> u64 {
    stage_weights(model, &Layout::default(), 0, dt).total()
}
