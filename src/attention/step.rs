//! What every attention layer of one step shares. The step's queries, positions, cache slots and
//! block tables are the same for all layers; on a GPU [`AttentionStep`] holds them (with the
//! attention plan and the RoPE tables) in one device buffer uploaded once per step, so that no
//! layer copies anything from the host. On the CPU it keeps the positions and slots on the host
//! and runs the reference ops.

use crate::backend::{Device, StepIndex};
use crate::error::Result;
use crate::model::StepBatch;
use crate::ops::{self, Heads, PagedCache, Rotary};
use crate::tensor::Tensor;

/// One step's attention inputs besides the activations: the batch, the cache's block size and,
/// on a GPU, the step's [`StepIndex`].
#[derive(Debug)]
pub struct AttentionStep<'a> {
    batch: &'a StepBatch,
    block_size: usize,
    /// Each query's position and cache slot (host side, for the CPU ops and the fallbacks).
    positions: Vec<usize>,
    slots: Vec<usize>,
    /// The step on the GPU, when the model runs there.
    gpu: Option<StepIndex>,
}

impl<'a> AttentionStep<'a> {
    /// The step of `batch` over caches of `block_size`-slot blocks on `device`; on a GPU with the
    /// RoPE tables of `rotaries` (the model's distinct rotaries) built in. Fails when a query's
    /// position has no block in its table.
    pub fn new(
        batch: &'a StepBatch,
        block_size: usize,
        device: &Device,
        rotaries: &[&Rotary],
    ) -> Result<Self> {
        let tables = batch.table_refs();
        ops::check_query_blocks(&batch.queries, &tables, block_size)?;
        let gpu = match device {
            Device::Cpu => None,
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Some(StepIndex::new(
                dev,
                &batch.queries,
                &tables,
                block_size,
                rotaries,
            )?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(dev) => match *dev {},
        };
        let _ = rotaries; // only the GPU index takes them
        let slots = batch
            .queries
            .iter()
            .map(|q| ops::cache_slot(&batch.tables[q.seq], block_size, q.pos))
            .collect();
        Ok(Self {
            batch,
            block_size,
            positions: batch.positions(),
            slots,
            gpu,
        })
    }

    /// The step's batch.
    pub fn batch(&self) -> &'a StepBatch {
        self.batch
    }

    /// Slots per cache block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The GPU index when it can serve `t` (a tensor on the step's GPU stream).
    fn gpu_for(&self, t: &Tensor) -> Option<&StepIndex> {
        self.gpu.as_ref().filter(|g| t.is_cuda() && g.serves(t))
    }

    /// The GPU index when it serves `t` and holds `rotary`'s tables, as a fused step kernel needs
    /// (the callers keep the reference ops for every other case).
    pub fn fused_gpu(&self, t: &Tensor, rotary: &Rotary) -> Option<&StepIndex> {
        self.gpu_for(t).filter(|g| g.has_rotary(rotary))
    }

    /// RoPE in place on `x` (one row per new token) at each token's position.
    pub fn rope(&self, x: &mut Tensor, rotary: &Rotary) -> Result<()> {
        match self.fused_gpu(x, rotary) {
            Some(g) => g.rope(x, rotary),
            None => ops::rope(x, rotary, &self.positions),
        }
    }

    /// What a GQA layer does between its QKV projection and attention: splits `qkv` [T, q_w +
    /// 2·kv_w] into q, k and v, applies the per-head `norms` (q, k) if any, rotates q and k,
    /// writes k and v into the caches (rows of kv_w) at each new token's slot and returns q.
    /// One launch on a GPU when there are no norms; the reference ops otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_cache(
        &self,
        qkv: &Tensor,
        q_w: usize,
        kv_w: usize,
        norms: Option<(&Tensor, &Tensor, f32)>,
        rotary: &Rotary,
        keys: &mut Tensor,
        values: &mut Tensor,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(g) = self.fused_gpu(qkv, rotary).filter(|_| norms.is_none()) {
            return g.qkv_rope_cache(qkv, q_w, kv_w, rotary, keys, values);
        }
        let mut q = ops::narrow_cols(qkv, 0, q_w)?;
        let mut k = ops::narrow_cols(qkv, q_w, kv_w)?;
        let v = ops::narrow_cols(qkv, q_w + kv_w, kv_w)?;
        if let Some((qn, kn, eps)) = norms {
            ops::rms_norm_chunks(&mut q, qn, eps)?;
            ops::rms_norm_chunks(&mut k, kn, eps)?;
        }
        self.rope(&mut q, rotary)?;
        self.rope(&mut k, rotary)?;
        self.write_rows(keys, kv_w, 0, &k)?;
        self.write_rows(values, kv_w, 0, &v)?;
        Ok(q)
    }

    /// Writes row i of `src` into the cache `dst` (rows of `dst_width`) at new token i's slot,
    /// from column `col` on.
    pub fn write_rows(
        &self,
        dst: &mut Tensor,
        dst_width: usize,
        col: usize,
        src: &Tensor,
    ) -> Result<()> {
        match self.gpu_for(src) {
            Some(g) => g.write_rows(dst, dst_width, col, src),
            None => ops::scatter_rows(dst, dst_width, col, &self.slots, src),
        }
    }

    /// Causal paged attention of the new tokens' queries `q` over the caches.
    pub fn paged_attention(
        &self,
        q: &Tensor,
        keys: PagedCache,
        values: PagedCache,
        heads: Heads,
    ) -> Result<Tensor> {
        if keys.block_size != self.block_size || values.block_size != self.block_size {
            return Err(crate::Error::Shape(format!(
                "paged attention over blocks of {} / {} slots in a step of {}-slot blocks",
                keys.block_size, values.block_size, self.block_size
            )));
        }
        match self.gpu_for(q) {
            Some(g) => {
                g.paged_attention(q, keys.data, keys.width, values.data, values.width, heads)
            }
            None => ops::paged_attention(
                q,
                &self.batch.queries,
                &self.batch.table_refs(),
                keys,
                values,
                heads,
            ),
        }
    }
}
