//! Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434 §2.1).
//!
//! Per token: c = RMSNorm(x·W_DKV) ∈ R^{kv_lora} and a shared rope key k_r = RoPE(x·W_KR).
//! Head h: k_h = [W_UK,h c ; k_r], v_h = W_UV,h c, q_h = [q_nope,h ; RoPE(q_rope,h)].
//! The cache keeps only (c, k_r) per token. Weight absorption folds W_UK into the query,
//! q̃_h = W_UK,hᵀ q_nope,h, so scores are q̃_h·c + q_rope,h·k_r, and W_UV is applied after the
//! attention: o_h = W_UV,h Σ_j p_j c_j. Both forms are implemented; they agree to rounding.

use super::AttentionStep;
use crate::checkpoint::WeightSource;
use crate::config::{AttentionKind, MlaConfig, ModelConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::model::Linear;
use crate::ops::{self, Heads, PagedCache, Rotary};
use crate::parallel::Shard;
use crate::tensor::Tensor;

/// Which algebraic form computes the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlaForm {
    /// Attend over the compressed latent (decode-friendly: no per-head K/V materialised).
    Absorbed,
    /// Expand per-head K and V from the latent, then ordinary attention (the paper's form).
    Naive,
}

/// The query path: a plain projection, or DeepSeek's low-rank one.
#[derive(Debug, Clone)]
enum QueryProj {
    Full(Linear),
    LowRank {
        down: Linear,
        norm: Tensor,
        up: Linear,
    },
}

/// One layer's MLA.
#[derive(Debug, Clone)]
pub struct MlaAttention {
    q: QueryProj,
    kv_down: Linear,
    kv_norm: Tensor,
    /// W_UKᵀ of every head: [heads, kv_lora, nope].
    w_uk_t: Tensor,
    /// W_UV of every head: [heads, v_dim, kv_lora].
    w_uv: Tensor,
    o: Linear,
    dims: MlaConfig,
    n_heads: usize,
    rotary: Rotary,
    scale: f32,
    eps: f32,
    form: MlaForm,
}

impl MlaAttention {
    /// Loads this rank's heads of the projections of `prefix` (e.g. `model.layers.0.self_attn`):
    /// the latent projections are replicated, the per-head ones split over the TP group.
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        prefix: &str,
        shard: &Shard,
    ) -> Result<Self> {
        let AttentionKind::Mla(d) = &cfg.attention else {
            unreachable!("MlaAttention::load for GQA")
        };
        let (h, all_heads) = (cfg.hidden_size, cfg.num_heads);
        let heads = shard.tp_range(all_heads);
        let nh = heads.len();
        let qk = d.qk_nope_head_dim + d.qk_rope_head_dim;
        let per_head = d.qk_nope_head_dim + d.v_head_dim;
        let lin = |n: &str, out, inp| Linear::load(src, &format!("{prefix}.{n}"), out, inp, false);
        let q = match d.q_lora_rank {
            None => QueryProj::Full(
                lin("q_proj", all_heads * qk, h)?.rows((heads.start * qk, nh * qk))?,
            ),
            Some(r) => QueryProj::LowRank {
                down: lin("q_a_proj", r, h)?,
                norm: src.load(&format!("{prefix}.q_a_layernorm.weight"), &[r])?,
                up: lin("q_b_proj", all_heads * qk, r)?.rows((heads.start * qk, nh * qk))?,
            },
        };
        let kv_b = lin("kv_b_proj", all_heads * per_head, d.kv_lora_rank)?
            .rows((heads.start * per_head, nh * per_head))?;
        // The per-head split and transposes run on the host: a GPU source (random weights built
        // there) gives kv_b_proj on the device, and it is small (heads x 256 x 512).
        let (w_uk_t, w_uv) = split_kv_b(&kv_b.weight.into_cpu()?, nh, d)?;
        let scale = (1.0 / (qk as f64).sqrt() * cfg.rope.softmax_mscale()) as f32;
        Ok(Self {
            q,
            kv_down: lin("kv_a_proj_with_mqa", d.kv_lora_rank + d.qk_rope_head_dim, h)?,
            kv_norm: src.load(
                &format!("{prefix}.kv_a_layernorm.weight"),
                &[d.kv_lora_rank],
            )?,
            w_uk_t,
            w_uv,
            o: lin("o_proj", h, all_heads * d.v_head_dim)?
                .cols((heads.start * d.v_head_dim, nh * d.v_head_dim), true)?,
            dims: d.clone(),
            n_heads: nh,
            rotary: Rotary::new(&cfg.rope, d.qk_rope_head_dim),
            scale,
            eps: cfg.rms_norm_eps,
            form: MlaForm::Absorbed,
        })
    }

    /// Chooses the algebraic form (both give the same numbers up to rounding).
    pub fn set_form(&mut self, form: MlaForm) {
        self.form = form;
    }

    /// Moves the weights to `device` (matrices as bf16 on a GPU).
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        match &mut self.q {
            QueryProj::Full(p) => p.to_device(device)?,
            QueryProj::LowRank { down, norm, up } => {
                down.to_device(device)?;
                *norm = norm.to_device(device)?;
                up.to_device(device)?;
            }
        }
        self.kv_down.to_device(device)?;
        self.kv_norm = self.kv_norm.to_device(device)?;
        self.w_uk_t = self.w_uk_t.to_device_bf16(device)?;
        self.w_uv = self.w_uv.to_device_bf16(device)?;
        self.o.to_device(device)
    }

    /// Cache row widths: the latent and the rope key, no separate values.
    pub fn cache_widths(&self) -> (usize, usize) {
        (self.dims.kv_lora_rank + self.dims.qk_rope_head_dim, 0)
    }

    /// The rotary position embedding of the rope parts of queries and keys.
    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// Attention of the step's new tokens; writes their (c, k_r) rows into `cache`.
    pub fn forward(
        &self,
        x: &Tensor,
        step: &AttentionStep,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let t = step.batch().tokens.len();
        // Queries (per head, the no-position then the rotary dims) and the compressed latent
        // with the rope key.
        let q = match &self.q {
            QueryProj::Full(p) => p.forward(x)?,
            QueryProj::LowRank { down, norm, up } => {
                up.forward(&ops::rms_norm(&down.forward(x)?, norm, self.eps)?)?
            }
        };
        let kv = self.kv_down.forward(x)?;
        let heads_out = match self.form {
            MlaForm::Absorbed => {
                let q = self.absorbed_queries(&q, &kv, step, cache)?;
                self.attend_absorbed(&q, step, cache)?
            }
            MlaForm::Naive => {
                let (q_nope, q_rot) = self.rotate_and_cache(&q, &kv, step, cache)?;
                self.attend_naive(&q_nope, &q_rot, step, cache)?
            }
        };
        debug_assert_eq!(heads_out.dims(), &[t, self.n_heads * self.dims.v_head_dim]);
        self.o.forward(&heads_out)
    }

    /// Splits the queries `q` into their no-position and rotary parts per head and rotates the
    /// latter; normalises the latent of `kv`, rotates its rope key and writes both into the
    /// cache at the new tokens' slots. Returns (q_nope, rotated q_rope).
    fn rotate_and_cache(
        &self,
        q: &Tensor,
        kv: &Tensor,
        step: &AttentionStep,
        cache: &mut LayerCache,
    ) -> Result<(Tensor, Tensor)> {
        let (nope, rope, lora) = (
            self.dims.qk_nope_head_dim,
            self.dims.qk_rope_head_dim,
            self.dims.kv_lora_rank,
        );
        let (q_nope, mut q_rot) = split_heads(q, self.n_heads, nope, rope)?;
        step.rope(&mut q_rot, &self.rotary)?;
        let (latent, mut k_rot) = split_heads(kv, 1, lora, rope)?;
        let latent = ops::rms_norm(&latent, &self.kv_norm, self.eps)?;
        step.rope(&mut k_rot, &self.rotary)?;
        step.write_rows(&mut cache.keys, lora + rope, 0, &latent)?;
        step.write_rows(&mut cache.keys, lora + rope, lora, &k_rot)?;
        Ok((q_nope, q_rot))
    }

    /// The absorbed form's queries, per head [q̃_h = W_UK,hᵀ q_nope,h ; RoPE(q_rope,h)], heads
    /// side by side, after [`Self::rotate_and_cache`]'s cache writes. On a GPU one kernel does
    /// the splits, norm, rotations and writes and one batched GEMM writes q̃ in place
    /// (`StepIndex::mla_rope_cache`); elsewhere the reference ops.
    fn absorbed_queries(
        &self,
        q: &Tensor,
        kv: &Tensor,
        step: &AttentionStep,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(g) = step.fused_gpu(q, &self.rotary) {
            let prelude = crate::backend::cuda::attention::MlaPrelude {
                norm: &self.kv_norm,
                eps: self.eps,
                w_uk_t: &self.w_uk_t,
                n_heads: self.n_heads,
                dims: &self.dims,
            };
            return g.mla_rope_cache(q, kv, &prelude, &self.rotary, &mut cache.keys);
        }
        let (q_nope, q_rot) = self.rotate_and_cache(q, kv, step, cache)?;
        let (rope, lora) = (self.dims.qk_rope_head_dim, self.dims.kv_lora_rank);
        let q_abs = ops::linear_heads(&q_nope, &self.w_uk_t)?;
        join_heads(&q_abs, &q_rot, self.n_heads, lora, rope)
    }

    /// Scores the absorbed queries `q` ([`Self::absorbed_queries`]) against the latent directly:
    /// MQA over (c, k_r), then W_UV,h.
    fn attend_absorbed(
        &self,
        q: &Tensor,
        step: &AttentionStep,
        cache: &LayerCache,
    ) -> Result<Tensor> {
        let block_size = step.block_size();
        let (rope, lora) = (self.dims.qk_rope_head_dim, self.dims.kv_lora_rank);
        let nh = self.n_heads;
        let rows = PagedCache {
            data: &cache.keys,
            width: lora + rope,
            block_size,
        };
        let heads = Heads {
            n_heads: nh,
            n_kv_heads: 1,
            qk_dim: lora + rope,
            v_dim: lora,
            scale: self.scale,
            window: None,
        };
        let o_lat = step.paged_attention(q, rows, rows, heads)?;
        self.project_values(&o_lat)
    }

    /// The paper's form: per-head keys and values expanded from every cached latent.
    fn attend_naive(
        &self,
        q_nope: &Tensor,
        q_rot: &Tensor,
        step: &AttentionStep,
        cache: &LayerCache,
    ) -> Result<Tensor> {
        let (batch, block_size) = (step.batch(), step.block_size());
        let (nope, rope, lora, vd) = (
            self.dims.qk_nope_head_dim,
            self.dims.qk_rope_head_dim,
            self.dims.kv_lora_rank,
            self.dims.v_head_dim,
        );
        let nh = self.n_heads;
        let t = batch.tokens.len();
        let qk = nope + rope;
        if q_nope.is_cuda() {
            return Err(crate::Error::Device(
                "the naive MLA form runs on the CPU only; the GPU uses the absorbed form".into(),
            ));
        }
        let keys = cache.keys.as_slice();
        let mut out = vec![0.0f32; t * nh * vd];
        for (i, qp) in batch.queries.iter().enumerate() {
            let table = &batch.tables[qp.seq];
            let rows: Vec<&[f32]> = (0..=qp.pos)
                .map(|p| {
                    &keys[ops::cache_slot(table, block_size, p) * (lora + rope)..][..lora + rope]
                })
                .collect();
            let latents: Vec<f32> = rows.iter().flat_map(|r| r[..lora].to_vec()).collect();
            let latents = Tensor::from_f32([rows.len(), lora], latents)?;
            for h in 0..nh {
                // k_nope,h(j) = W_UK,h c_j ; v_h(j) = W_UV,h c_j for every visible position j.
                let w_uk = transpose(&head_matrix(&self.w_uk_t, h)?)?;
                let k_nope = ops::linear(&latents, &w_uk, None)?;
                let v = ops::linear(&latents, &head_matrix(&self.w_uv, h)?, None)?;
                let q_h: Vec<f32> = q_nope.row(i)[h * nope..][..nope]
                    .iter()
                    .chain(&q_rot.row(i)[h * rope..][..rope])
                    .copied()
                    .collect();
                let scores: Vec<f32> = rows
                    .iter()
                    .enumerate()
                    .map(|(j, r)| {
                        let k: Vec<f32> = k_nope.row(j).iter().chain(&r[lora..]).copied().collect();
                        q_h.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>() * self.scale
                    })
                    .collect();
                debug_assert_eq!(q_h.len(), qk);
                let p = crate::backend::cpu::attention::softmax(&scores);
                let o = &mut out[(i * nh + h) * vd..][..vd];
                for (j, w) in p.iter().enumerate() {
                    for (oi, vi) in o.iter_mut().zip(v.row(j)) {
                        *oi += w * vi;
                    }
                }
            }
        }
        Tensor::from_f32([t, nh * vd], out)
    }

    /// o_h = W_UV,h · (attention-weighted latent of head h), for every head.
    fn project_values(&self, o_lat: &Tensor) -> Result<Tensor> {
        ops::linear_heads(o_lat, &self.w_uv)
    }
}

/// Splits rows of `n` heads × (a + b) into [T, n·a] and [T, n·b] (each head's row as a row of
/// its own, two column slices).
fn split_heads(x: &Tensor, n: usize, a: usize, b: usize) -> Result<(Tensor, Tensor)> {
    let t = x.dims()[0];
    let per_head = x.clone().reshape([t * n, a + b])?;
    Ok((
        ops::narrow_cols(&per_head, 0, a)?.reshape([t, n * a])?,
        ops::narrow_cols(&per_head, a, b)?.reshape([t, n * b])?,
    ))
}

/// The inverse of [`split_heads`]: rows of `n` heads × (a + b) from [T, n·a] and [T, n·b].
fn join_heads(x: &Tensor, y: &Tensor, n: usize, a: usize, b: usize) -> Result<Tensor> {
    let t = x.dims()[0];
    let (xa, yb) = (
        x.clone().reshape([t * n, a])?,
        y.clone().reshape([t * n, b])?,
    );
    ops::concat_cols(&[&xa, &yb])?.reshape([t, n * (a + b)])
}

fn transpose(w: &Tensor) -> Result<Tensor> {
    let (r, c) = (w.dims()[0], w.dims()[1]);
    let mut v = vec![0.0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            v[j * r + i] = w.as_slice()[i * c + j];
        }
    }
    Tensor::from_f32_stored_as([c, r], v, w.dtype())
}

/// kv_b_proj [h·(nope + v), kv_lora] → W_UKᵀ of every head [h, kv_lora, nope] and W_UV of every
/// head [h, v, kv_lora].
fn split_kv_b(w: &Tensor, nh: usize, d: &MlaConfig) -> Result<(Tensor, Tensor)> {
    let (nope, vd, lora) = (d.qk_nope_head_dim, d.v_head_dim, d.kv_lora_rank);
    let mut uk_t = Vec::with_capacity(nh);
    let mut uv = Vec::with_capacity(nh);
    for h in 0..nh {
        let rows = w.narrow_rows(h * (nope + vd), nope + vd)?;
        uk_t.push(transpose(&rows.narrow_rows(0, nope)?)?);
        uv.push(rows.narrow_rows(nope, vd)?);
    }
    let stack = |parts: &[Tensor], shape: [usize; 3]| {
        Tensor::concat(&parts.iter().collect::<Vec<_>>(), shape)
    };
    Ok((stack(&uk_t, [nh, lora, nope])?, stack(&uv, [nh, vd, lora])?))
}

/// Head `h`'s matrix of weights stacked [heads, r, c]: [r, c].
fn head_matrix(w: &Tensor, h: usize) -> Result<Tensor> {
    let (r, c) = (w.dims()[1], w.dims()[2]);
    w.narrow_rows(h, 1)?.reshape([r, c])
}
