//! Paged attention on the GPU: the step's queries are cut on the host (from [`QueryPos`]) into
//! runs of consecutive positions of one sequence. Runs of at least [`MIN_FLASH_RUN`] queries
//! (prefill and prefill chunks) go in tiles of 64 to the tensor-core flash kernel
//! (`kernels/attention.cu`) when the head dims fit it (qk = v = 64 or 128); every other query
//! (decode rows, short runs, MLA's wide latent heads) goes to the per-query f32 kernel
//! (`kernels/ops.cu` `paged_attention_f32`). Both write disjoint rows of one output.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::ops::{empty, f32_ptr, gpu, raw, upload_i32};
use super::{dev_err, Kernel};
use crate::backend::cpu::attention::{Heads, QueryPos};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Query rows per flash tile (`FA_ROWS` in kernels/attention.cu).
const TILE: usize = 64;
/// Shorter runs are not worth a 64-row tile: the per-query kernel serves them.
pub const MIN_FLASH_RUN: usize = 8;
/// Threads of the per-query kernel's blocks.
const THREADS_ATT: usize = 128;

/// How one step's queries are split between the two kernels.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AttentionPlan {
    /// Flash tiles as (first query row, rows, sequence, first position), flattened.
    pub tiles: Vec<i32>,
    /// Query rows for the per-query kernel.
    pub rows: Vec<i32>,
}

/// Cuts `queries` into maximal runs (same sequence, positions +1 each) and sends runs of at least
/// `min_run` queries to flash tiles of up to 64 rows when `flash` holds, the rest to `rows`.
pub fn plan(queries: &[QueryPos], flash: bool, min_run: usize) -> AttentionPlan {
    let mut p = AttentionPlan::default();
    let mut start = 0;
    while start < queries.len() {
        let mut end = start + 1;
        while end < queries.len()
            && queries[end].seq == queries[start].seq
            && queries[end].pos == queries[end - 1].pos + 1
        {
            end += 1;
        }
        if flash && end - start >= min_run {
            for t0 in (start..end).step_by(TILE) {
                let n = TILE.min(end - t0);
                let q = queries[t0];
                p.tiles
                    .extend([t0 as i32, n as i32, q.seq as i32, q.pos as i32]);
            }
        } else {
            p.rows.extend((start..end).map(|r| r as i32));
        }
        start = end;
    }
    p
}

/// Causal paged attention over GPU caches of `k_width`/`v_width`-wide rows (f32), `q` [T,
/// n_heads·qk_dim] on the same GPU; returns [T, n_heads·v_dim].
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &Tensor,
    queries: &[QueryPos],
    tables: &[&[u32]],
    keys: &Tensor,
    k_width: usize,
    values: &Tensor,
    v_width: usize,
    block_size: usize,
    h: Heads,
) -> Result<Tensor> {
    let dev = gpu(q)?.device().clone();
    let out = empty(&dev, [queries.len(), h.n_heads * h.v_dim])?;
    if queries.is_empty() {
        return Ok(out);
    }
    if h.v_dim > 8 * THREADS_ATT || h.n_kv_heads == 0 || !h.n_heads.is_multiple_of(h.n_kv_heads) {
        return Err(Error::Shape(format!(
            "paged attention: {h:?} is not supported on the GPU"
        )));
    }
    let mut offs = Vec::with_capacity(tables.len());
    let mut flat: Vec<i32> = Vec::new();
    for t in tables {
        offs.push(flat.len() as i32);
        flat.extend(t.iter().map(|&b| b as i32));
    }
    for qp in queries {
        if qp.seq >= tables.len() || qp.pos / block_size >= tables[qp.seq].len() {
            return Err(Error::Shape(format!(
                "paged attention: position {} of sequence {} has no block",
                qp.pos, qp.seq
            )));
        }
    }
    let (qp, kp, vp, outp) = (
        f32_ptr(q)?,
        f32_ptr(keys)?,
        f32_ptr(values)?,
        gpu(&out)?.ptr(),
    );
    // The flash kernel reads (key, head) rows as float4: every row must start 16-byte aligned.
    let flash = h.qk_dim == h.v_dim
        && matches!(h.qk_dim, 64 | 128)
        && k_width.is_multiple_of(4)
        && v_width.is_multiple_of(4)
        && kp.is_multiple_of(16)
        && vp.is_multiple_of(16);
    let plan = plan(queries, flash, MIN_FLASH_RUN);
    let (ob, tb) = (upload_i32(&dev, &offs)?, upload_i32(&dev, &flat)?);
    let (op, tp) = (raw(&dev, &ob), raw(&dev, &tb));
    let group = (h.n_heads / h.n_kv_heads) as i32;
    let window = h.window.map_or(0, |w| w as i32);
    let (nh, kw, vw, bs) = (
        h.n_heads as i32,
        k_width as i32,
        v_width as i32,
        block_size as i32,
    );
    if !plan.tiles.is_empty() {
        let name = if h.qk_dim == 64 {
            "flash_prefill_d64"
        } else {
            "flash_prefill_d128"
        };
        let tiles = upload_i32(&dev, &plan.tiles)?;
        let tl = raw(&dev, &tiles);
        let f = dev.function(Kernel::Attention, name)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&outp)
            .arg(&tl)
            .arg(&op)
            .arg(&tp);
        b.arg(&nh)
            .arg(&group)
            .arg(&kw)
            .arg(&vw)
            .arg(&bs)
            .arg(&h.scale)
            .arg(&window);
        let cfg = LaunchConfig {
            grid_dim: ((plan.tiles.len() / 4) as u32, h.n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: q/out have T rows of n_heads heads, every tile's rows and positions come from
        // `queries` (checked against the tables above), the caches hold every slot the tables
        // name, and the rows are 16-byte aligned (checked above).
        unsafe { b.launch(cfg) }.map_err(dev_err("launching flash_prefill"))?;
        drop(tiles);
    }
    if !plan.rows.is_empty() {
        let seqs: Vec<i32> = queries.iter().map(|q| q.seq as i32).collect();
        let poss: Vec<i32> = queries.iter().map(|q| q.pos as i32).collect();
        let (sb, pb, rb) = (
            upload_i32(&dev, &seqs)?,
            upload_i32(&dev, &poss)?,
            upload_i32(&dev, &plan.rows)?,
        );
        let (sp, pp, rp) = (raw(&dev, &sb), raw(&dev, &pb), raw(&dev, &rb));
        let (qk, vd) = (h.qk_dim as i32, h.v_dim as i32);
        let f = dev.function(Kernel::Ops, "paged_attention_f32")?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&outp)
            .arg(&sp)
            .arg(&pp)
            .arg(&op)
            .arg(&tp);
        b.arg(&rp)
            .arg(&nh)
            .arg(&group)
            .arg(&qk)
            .arg(&vd)
            .arg(&kw)
            .arg(&vw)
            .arg(&bs);
        b.arg(&h.scale).arg(&window);
        let cfg = LaunchConfig {
            grid_dim: ((plan.rows.len() * h.n_heads) as u32, 1, 1),
            block_dim: (THREADS_ATT as u32, 1, 1),
            shared_mem_bytes: ((h.qk_dim + 256) * 4) as u32,
        };
        // SAFETY: as above; `rows` indexes `queries`, whose seq/pos arrays are uploaded whole.
        unsafe { b.launch(cfg) }.map_err(dev_err("launching paged_attention_f32"))?;
        drop((sb, pb, rb));
    }
    drop((ob, tb));
    Ok(out)
}
