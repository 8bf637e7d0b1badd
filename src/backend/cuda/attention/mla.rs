//! MLA's weight-absorbed attention at DeepSeek's widths on the tensor cores: the launches of
//! `mla_prefill_r4` over runs of consecutive rows, `mla_decode_h16/_h32` over the other rows
//! and, when those are too few to fill the GPU, `mla_merge` over chunks of their positions
//! (kernels/mla.cu), for the step's [`StepIndex`]; and the layer's step before them
//! (`mla_rope_cache`, kernels/ops.cu, and the W_UKᵀ GEMM writing in place).

use cudarc::driver::LaunchConfig;

use super::{Section, StepIndex};
use crate::backend::cpu::attention::Heads;
use crate::backend::cpu::rope::Rotary;
use crate::backend::cuda::ops::{cache_ptrs, empty, f32_ptr, gpu, gpu_mut, raw};
use crate::backend::cuda::storage::alloc;
use crate::backend::cuda::{overlap, Kernel};
use crate::config::MlaConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The absorbed MLA kernel's shapes (kernels/mla.cu's MLA_DK, MLA_DV, rows of a group, threads).
const MLA_DK: usize = 576;
const MLA_DV: usize = 512;
const MLA_GROUP: usize = 16;
const MLA_THREADS: u32 = 256;
/// Query rows of a prefill unit (`mla_prefill_r4`): runs of at least two consecutive rows of
/// one sequence are cut into units of up to this many.
pub(super) const MLA_UNIT_ROWS: usize = 4;

/// One form of the kernel: its name, groups of 16 (row, head) pairs a block, keys a tile.
struct Form {
    name: &'static str,
    groups: usize,
    keys: usize,
}

impl Form {
    /// Decode rows: 32 heads a block where the heads divide into 32, else 16. (32-key tiles,
    /// two blocks an SM, measured within noise of these on an H100: benches/RESULTS.md.)
    fn decode(n_heads: usize) -> Self {
        // SWITCHYARD_MLA_HEADS=16 forces 16 heads a block: a diagnostic switch for benches,
        // read once a process (this runs every layer of every step).
        static FORCE16: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let force16 =
            *FORCE16.get_or_init(|| std::env::var("SWITCHYARD_MLA_HEADS").is_ok_and(|v| v == "16"));
        if n_heads.is_multiple_of(2 * MLA_GROUP) && !force16 {
            Form {
                name: "mla_decode_h32",
                groups: 2,
                keys: 64,
            }
        } else {
            Form {
                name: "mla_decode_h16",
                groups: 1,
                keys: 64,
            }
        }
    }

    const PREFILL: Form = Form {
        name: "mla_prefill_r4",
        groups: MLA_UNIT_ROWS,
        keys: 32,
    };

    /// Bytes of dynamic shared memory (kernels/mla.cu's MLA_SMEM): the pairs' queries and two
    /// key tiles in rows of 584 bf16, P in rows of keys + 8, the eight warps' row maxima and two
    /// tiles' slots.
    fn smem(&self) -> usize {
        let m = MLA_GROUP * self.groups;
        (m + 2 * self.keys) * (MLA_DK + 8) * 2
            + m * (self.keys + 8) * 2
            + 8 * 16 * 4
            + 2 * self.keys * 4
    }
}

impl StepIndex {
    /// Every query of the step through kernels/mla.cu: the runs of consecutive rows of one
    /// sequence (prefill) in units of up to four rows through `mla_prefill_r4` (a block per
    /// (unit, 16 heads)), the other rows through `mla_decode_h32` / `_h16` (a block per (row, 32
    /// or 16 heads)); each block reads the latent rows once for its (row, head) pairs and
    /// multiplies on the tensor cores. The caller checked the shapes ([`is_mla_latent`]) and
    /// that q, the cache (one bf16 buffer of latent rows, read as keys and values) and out are
    /// whole.
    pub(super) fn mla_decode(&self, qp: u64, kp: u64, outp: u64, h: &Heads) -> Result<()> {
        let units = self.mla_units.len / 4;
        if units > 0 {
            let f = Form::PREFILL;
            let grid = ((units * h.n_heads / MLA_GROUP) as u32, 1, 1);
            self.mla_launch(&f, grid, (qp, kp, outp), self.mla_units, h, (0, 0))?;
        }
        let rows = self.mla_rows.len;
        if rows == 0 {
            return Ok(());
        }
        let f = Form::decode(h.n_heads);
        let blocks = rows * h.n_heads / (MLA_GROUP * f.groups);
        let (splits, split_len) = self.mla_split(blocks)?;
        // Chunk records (outputs, max, sum) when the positions are split.
        let part = if splits > 1 {
            Some(empty(
                &self.dev,
                [rows * h.n_heads * splits * (MLA_DV + 2)],
            )?)
        } else {
            None
        };
        let partp = part.as_ref().map_or(Ok(0), |t| gpu(t).map(|s| s.ptr()))?;
        let grid = (blocks as u32, splits as u32, 1);
        self.mla_launch(
            &f,
            grid,
            (qp, kp, outp),
            self.mla_rows,
            h,
            (split_len, partp),
        )?;
        if splits > 1 {
            let f = self.dev.function(Kernel::Attention, "mla_merge")?;
            let (rp, nh, sn) = (self.at(self.mla_rows), h.n_heads as i32, splits as i32);
            let mut b = overlap::Args::new();
            b.arg(&partp).arg(&outp).arg(&rp).arg(&nh).arg(&sn);
            let cfg = LaunchConfig {
                grid_dim: ((rows * h.n_heads) as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: mla_merge reads the records the decode kernel wrote (it waits for it) for
            // every (row, head, chunk) and writes each row's n_heads x 512 outputs.
            unsafe { overlap::launch(&self.dev, &f, cfg, &mut b, "launching mla_merge") }?;
        }
        Ok(())
    }

    /// One launch of `form` over `rows` (units of four words for the prefill form, row indices
    /// for the decode forms), with the positions cut in chunks of `split_len` into `part` when
    /// the grid's y is above 1.
    fn mla_launch(
        &self,
        form: &Form,
        grid: (u32, u32, u32),
        (qp, kp, outp): (u64, u64, u64),
        rows: Section,
        h: &Heads,
        (split_len, partp): (usize, u64),
    ) -> Result<()> {
        let f = self
            .dev
            .function_with_smem(Kernel::Attention, form.name, form.smem())?;
        let (sp, pp, rp) = (self.at(self.seq), self.at(self.pos), self.at(rows));
        let (op, tp) = (self.at(self.table_off), self.at(self.tables));
        let (nh, bs, sl) = (h.n_heads as i32, self.block_size as i32, split_len as i32);
        let mut b = overlap::Args::new();
        b.arg(&qp)
            .arg(&kp)
            .arg(&outp)
            .arg(&sp)
            .arg(&pp)
            .arg(&op)
            .arg(&tp);
        b.arg(&rp)
            .arg(&nh)
            .arg(&bs)
            .arg(&h.scale)
            .arg(&sl)
            .arg(&partp);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (MLA_THREADS, 1, 1),
            shared_mem_bytes: form.smem() as u32,
        };
        // SAFETY: q/out hold `queries` rows of n_heads heads of 576 / 512 values and the cache
        // every slot the tables name (checked by paged_attention); `rows` indexes queries of the
        // step (units: consecutive rows of one sequence); `part`, when the grid's y is above 1,
        // holds a record for every (row, head, chunk); the kernel touches nothing before the
        // previous kernel ends.
        unsafe { overlap::launch(&self.dev, &f, cfg, &mut b, form.name) }
    }

    /// The decode form's chunks of positions (count, positions a chunk) for `blocks` blocks:
    /// when they cannot fill the GPU twice over (one block an SM fits; two waves even out
    /// chunks that end early), each row's positions are cut into chunks of at least 256 (up to
    /// 32 chunks) so that they can.
    fn mla_split(&self, blocks: usize) -> Result<(usize, usize)> {
        let fill = 2 * self.dev.sm_count()?;
        let wanted = fill.div_ceil(blocks.max(1));
        let splits = wanted.min(self.longest.div_ceil(256)).clamp(1, 32);
        let split_len = self.longest.div_ceil(splits).next_multiple_of(64);
        Ok((splits, split_len))
    }
}

/// What an MLA layer's step before attention takes besides its activations: the latent's
/// RMSNorm, W_UKᵀ of this rank's heads ([heads, lora, nope], bf16 on the GPU) and the widths.
#[derive(Debug)]
pub struct MlaPrelude<'a> {
    /// The latent's RMSNorm weight and epsilon.
    pub norm: &'a Tensor,
    pub eps: f32,
    /// W_UKᵀ of every head.
    pub w_uk_t: &'a Tensor,
    /// This rank's query heads.
    pub n_heads: usize,
    pub dims: &'a MlaConfig,
}

impl StepIndex {
    /// What an MLA layer does between its projections and the absorbed attention, in one kernel
    /// and one batched GEMM: from the queries `q` [T, heads·(nope + rope)] and `kv` [T, lora +
    /// rope], writes [RMSNorm(latent) ; RoPE(k_rope)] into `cache` (rows of lora + rope) at each
    /// new token's slot and returns the absorbed queries [T, heads·(lora + rope)], per head
    /// [W_UK,hᵀ q_nope,h ; RoPE(q_rope,h)] (the GEMM writes the first part in place).
    pub fn mla_rope_cache(
        &self,
        q: &Tensor,
        kv: &Tensor,
        p: &MlaPrelude,
        rotary: &Rotary,
        cache: &mut Tensor,
    ) -> Result<Tensor> {
        use cudarc::cublas::sys::cudaDataType;
        self.check_serves(q)?;
        let cs = self.rope_table(rotary)?;
        let (nh, d) = (p.n_heads, p.dims);
        let (nope, rope, lora) = (d.qk_nope_head_dim, d.qk_rope_head_dim, d.kv_lora_rank);
        let (row_w, t) = (lora + rope, self.queries);
        let w = gpu(p.w_uk_t)?;
        if q.dims() != [t, nh * (nope + rope)]
            || kv.dims() != [t, row_w]
            || p.norm.numel() != lora
            || rotary.dim() != rope
            || rope % 2 != 0
            || p.w_uk_t.dims() != [nh, lora, nope]
            || !w.is_bf16()
            || self.slot_end * row_w > cache.numel()
        {
            return Err(Error::Shape(format!(
                "mla_rope_cache: q {} and kv {} for {t} queries of {nh} heads of {d:?}, RoPE dim {}, \
                 norm {}, W_UK {} (bf16: {}), a cache of {} values",
                q.shape(),
                kv.shape(),
                rotary.dim(),
                p.norm.shape(),
                p.w_uk_t.shape(),
                w.is_bf16(),
                cache.numel()
            )));
        }
        let dev = gpu(q)?.device().clone();
        let q_full = empty(&dev, [t, nh * row_w])?;
        if t == 0 {
            return Ok(q_full);
        }
        let q_nope = alloc::<half::bf16>(&dev, t * nh * nope)?;
        gpu_mut(cache)?; // written in place: unshared first (a cache is never shared)
        let (cp, _, bf16) = cache_ptrs(cache, cache)?;
        let (qp, kvp, np, eps) = (f32_ptr(q)?, f32_ptr(kv)?, f32_ptr(p.norm)?, p.eps);
        let (qnp, qfp, sp) = (raw(&dev, &q_nope), gpu(&q_full)?.ptr(), self.at(self.slot));
        let (h, no, r, l) = (nh as i32, nope as i32, rope as i32, lora as i32);
        let il = rotary.interleaved() as i32;
        let name = if bf16 {
            "mla_rope_cache_bf16"
        } else {
            "mla_rope_cache"
        };
        let f = dev.function(Kernel::Ops, name)?;
        let mut b = overlap::Args::new();
        b.arg(&qp)
            .arg(&kvp)
            .arg(&np)
            .arg(&eps)
            .arg(&qnp)
            .arg(&qfp)
            .arg(&cp);
        b.arg(&sp)
            .arg(&cs)
            .arg(&h)
            .arg(&no)
            .arg(&r)
            .arg(&l)
            .arg(&il);
        let cfg = LaunchConfig {
            grid_dim: (t as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: q, kv, the norm and q_full hold what the checks above say, q_nope t·heads·nope
        // bf16; every slot is below slot_end, so each cache row written lies inside the cache;
        // the RoPE table has rope values per query; the kernel touches nothing before the
        // previous kernel ends.
        unsafe { overlap::launch(&dev, &f, cfg, &mut b, "launching mla_rope_cache") }?;
        // q̃_h = W_UK,hᵀ q_nope,h into columns [0, lora) of head h's row_w in q_full.
        super::super::blas::linear_heads_raw(
            &dev,
            qnp,
            w.ptr(),
            qfp,
            (t, nh, nope, lora),
            (nh * row_w, row_w),
            cudaDataType::CUDA_R_16BF,
        )?;
        drop(q_nope);
        Ok(q_full)
    }
}

/// Heads of MLA's weight-absorbed form at DeepSeek-V2/V3's widths, the shape `mla_decode`
/// takes: one KV head of 512 latent + 64 rope dims read as both keys and values (rows of 576,
/// bf16: the cache a GPU model keeps at these widths), outputs of the 512 latent dims, heads in
/// groups of 16, no window.
pub(super) fn is_mla_latent(h: &Heads, k_width: usize, v_width: usize, bf16: bool) -> bool {
    bf16 && h.n_kv_heads == 1
        && (h.qk_dim, h.v_dim, k_width, v_width) == (MLA_DK, MLA_DV, MLA_DK, MLA_DK)
        && h.n_heads.is_multiple_of(MLA_GROUP)
        && h.window.is_none()
}
