//! Grouped-query attention (Ainslie et al. 2023): fused QKV projection, optional per-head
//! q/k RMSNorm (Qwen3), RoPE, paged causal attention, output projection.

use super::AttentionStep;
use crate::checkpoint::WeightSource;
use crate::config::{AttentionKind, ModelConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::model::Linear;
use crate::ops::{Heads, PagedCache, Rotary};
use crate::parallel::Shard;
use crate::tensor::Tensor;

/// One layer's attention.
#[derive(Debug, Clone)]
pub struct GqaAttention {
    qkv: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rotary: Rotary,
    window: Option<usize>,
    eps: f32,
}

impl GqaAttention {
    /// Loads this rank's heads of `{prefix}.{q,k,v,o}_proj` (and q_norm/k_norm): q heads split
    /// over the TP group, KV heads split too or replicated when the group is larger than their
    /// count, the output projection's matching columns (row-parallel).
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        prefix: &str,
        shard: &Shard,
    ) -> Result<Self> {
        let AttentionKind::Gqa {
            qkv_bias,
            o_bias,
            qk_norm,
        } = cfg.attention
        else {
            unreachable!("GqaAttention::load called for MLA")
        };
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
        );
        let q_heads = shard.tp_range(nh);
        let kv_heads = if nkv >= shard.tp {
            shard.tp_range(nkv)
        } else {
            let k = shard.tp_rank * nkv / shard.tp;
            k..k + 1
        };
        let rows = |r: &std::ops::Range<usize>| (r.start * hd, r.len() * hd);
        let q = Linear::load(src, &format!("{prefix}.q_proj"), nh * hd, h, qkv_bias)?
            .rows(rows(&q_heads))?;
        let k = Linear::load(src, &format!("{prefix}.k_proj"), nkv * hd, h, qkv_bias)?
            .rows(rows(&kv_heads))?;
        let v = Linear::load(src, &format!("{prefix}.v_proj"), nkv * hd, h, qkv_bias)?
            .rows(rows(&kv_heads))?;
        // Row-parallel output: this rank's input columns; the bias is added once, on TP rank 0.
        let o = Linear::load(src, &format!("{prefix}.o_proj"), h, nh * hd, o_bias)?
            .cols(rows(&q_heads), shard.tp_rank == 0)?;
        let norm = |n: &str| src.load(&format!("{prefix}.{n}.weight"), &[hd]);
        let (nh, nkv) = (q_heads.len(), kv_heads.len());
        Ok(Self {
            qkv: Linear::concat_out(&[q, k, v])?,
            o,
            q_norm: if qk_norm { Some(norm("q_norm")?) } else { None },
            k_norm: if qk_norm { Some(norm("k_norm")?) } else { None },
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            rotary: Rotary::new(&cfg.rope, hd),
            window: cfg.sliding_window,
            eps: cfg.rms_norm_eps,
        })
    }

    /// Moves the weights to `device` (matrices as bf16 on a GPU).
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        self.qkv.to_device(device)?;
        self.o.to_device(device)?;
        for n in [&mut self.q_norm, &mut self.k_norm].into_iter().flatten() {
            *n = n.to_device(device)?;
        }
        Ok(())
    }

    /// Cache row widths (keys, values) of this layer.
    pub fn cache_widths(&self) -> (usize, usize) {
        (
            self.n_kv_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        )
    }

    /// The rotary position embedding of the q/k heads.
    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// Attention of the step's new tokens `x` [T, hidden]; writes their K/V into `cache`.
    /// Under TP the result is this rank's partial sum (the group reduces it).
    pub fn forward(
        &self,
        x: &Tensor,
        step: &AttentionStep,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let block_size = step.block_size();
        let (q_w, kv_w) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let qkv = self.qkv.forward(x)?;
        let norms = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => Some((qn, kn, self.eps)),
            _ => None,
        };
        let q = step.qkv_rope_cache(
            &qkv,
            q_w,
            kv_w,
            norms,
            &self.rotary,
            &mut cache.keys,
            &mut cache.values,
        )?;
        let heads = Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            qk_dim: self.head_dim,
            v_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window: self.window,
        };
        let keys = PagedCache {
            data: &cache.keys,
            width: kv_w,
            block_size,
        };
        let values = PagedCache {
            data: &cache.values,
            width: kv_w,
            block_size,
        };
        let attn = step.paged_attention(&q, keys, values, heads)?;
        self.o.forward(&attn)
    }
}
