//! MLA's weight-absorbed attention at DeepSeek's widths on the tensor cores: the launch of
//! `mla_decode_h16/_h32` and, when the queries are too few to fill the GPU, of `mla_merge`
//! over chunks of positions (kernels/mla.cu), for the step's [`StepIndex`].

use cudarc::driver::LaunchConfig;

use super::StepIndex;
use crate::backend::cpu::attention::Heads;
use crate::backend::cuda::ops::{empty, gpu};
use crate::backend::cuda::{overlap, Kernel};
use crate::error::Result;

/// The absorbed MLA kernel's shapes (kernels/mla.cu's MLA_DK, MLA_DV, heads a group, threads).
const MLA_DK: usize = 576;
const MLA_DV: usize = 512;
const MLA_GROUP: usize = 16;
const MLA_THREADS: u32 = 256;

/// Bytes of dynamic shared memory of the kernel over `hg` groups of 16 heads (kernels/mla.cu's
/// MLA_SMEM): the heads' queries and two 64-key tiles in rows of 584 bf16, P in rows of 72, the
/// eight warps' row maxima and two tiles' slots.
fn mla_smem(hg: usize) -> usize {
    (MLA_GROUP * hg + 2 * 64) * (MLA_DK + 8) * 2 + MLA_GROUP * hg * 72 * 2 + 8 * 16 * 4 + 2 * 64 * 4
}

impl StepIndex {
    /// Every query of the step through `mla_decode_h32` (32 heads a block, where the heads
    /// divide into 32) or `mla_decode_h16` (kernels/mla.cu): a block per (query, 16 or 32
    /// heads), the latent rows read once for them, both products on the tensor cores. The
    /// caller checked the shapes ([`is_mla_latent`]) and that q, the cache (one bf16 buffer of
    /// latent rows, read as keys and values) and out are whole.
    pub(super) fn mla_decode(&self, qp: u64, kp: u64, outp: u64, h: &Heads) -> Result<()> {
        let dev = &self.dev;
        let hg = if h.n_heads.is_multiple_of(2 * MLA_GROUP) {
            2
        } else {
            1
        };
        let groups = h.n_heads / (MLA_GROUP * hg);
        let name = if hg == 2 {
            "mla_decode_h32"
        } else {
            "mla_decode_h16"
        };
        let f = dev.function_with_smem(Kernel::Attention, name, mla_smem(hg))?;
        let (sp, pp, rp) = (self.at(self.seq), self.at(self.pos), self.at(self.all_rows));
        let (op, tp) = (self.at(self.table_off), self.at(self.tables));
        let (nh, bs) = (h.n_heads as i32, self.block_size as i32);
        let (blocks, splits, split_len) = self.mla_split(groups)?;
        // Chunk records (outputs, max, sum) when the positions are split.
        let part = if splits > 1 {
            Some(empty(
                dev,
                [self.queries * h.n_heads * splits * (MLA_DV + 2)],
            )?)
        } else {
            None
        };
        let partp = part.as_ref().map_or(Ok(0), |t| gpu(t).map(|s| s.ptr()))?;
        let sl = split_len as i32;
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
            grid_dim: (blocks as u32, splits as u32, 1),
            block_dim: (MLA_THREADS, 1, 1),
            shared_mem_bytes: mla_smem(hg) as u32,
        };
        // SAFETY: q/out hold `queries` rows of n_heads heads of 576 / 512 values and the cache
        // every slot the tables name (checked by paged_attention); the rows section indexes
        // every query; `part` holds a record for every (query, head, chunk); the kernel touches
        // nothing before the previous kernel ends.
        unsafe { overlap::launch(dev, &f, cfg, &mut b, "launching mla_decode") }?;
        if splits > 1 {
            let f = dev.function(Kernel::Attention, "mla_merge")?;
            let sn = splits as i32;
            let mut b = overlap::Args::new();
            b.arg(&partp).arg(&outp).arg(&rp).arg(&nh).arg(&sn);
            let cfg = LaunchConfig {
                grid_dim: ((self.queries * h.n_heads) as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; mla_merge reads the records mla_decode wrote (it waits for it)
            // and writes every query's n_heads x 512 outputs.
            unsafe { overlap::launch(dev, &f, cfg, &mut b, "launching mla_merge") }?;
        }
        Ok(())
    }

    /// The MLA kernel's grid: (blocks of heads, chunks of positions, positions a chunk). When
    /// the queries' blocks cannot fill the GPU twice over (one block an SM fits; two waves
    /// even out chunks that end early), each row's positions are cut into chunks of at least
    /// 256 (up to 32 chunks) so that they can.
    fn mla_split(&self, groups: usize) -> Result<(usize, usize, usize)> {
        let fill = 2 * self.dev.sm_count()?;
        let blocks = self.queries * groups;
        let wanted = fill.div_ceil(blocks.max(1));
        let splits = wanted.min(self.longest.div_ceil(256)).clamp(1, 32);
        let split_len = self.longest.div_ceil(splits).next_multiple_of(64);
        Ok((blocks, splits, split_len))
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
