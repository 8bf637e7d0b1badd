//! Paged attention on the GPU: the step's queries are cut on the host (from [`QueryPos`]) into
//! runs of consecutive positions of one sequence. Runs of at least [`MIN_FLASH_RUN`] queries
//! (prefill and prefill chunks) go in tiles of 64 to the tensor-core flash kernel
//! (`kernels/attention.cu`) when the head dims fit it (qk = v = 64 or 128); every other query
//! (decode rows, short runs) goes to a per-query kernel (f32 math): with those head dims and up to
//! [`DECODE_MAX_GROUP`] query heads a KV head, `paged_decode_d64/128` (kernels/attention.cu: one
//! block per query and KV head, the positions split over 8 warps), else (MLA's wide latent
//! heads, other dims) `paged_attention_f32` (kernels/ops.cu). All write disjoint rows of one
//! output. MLA's weight-absorbed heads at DeepSeek's widths (576 / 512, one latent row a position
//! shared by every head, bf16) go to `mla_decode_h16/_h32` (kernels/mla.cu) instead, which reads
//! each latent row once for 16 or 32 heads and multiplies on the tensor cores. The others read
//! f32 or bf16 caches (a GPU model's cache is bf16, except MLA's latent at other widths:
//! `crate::kv_cache::KvDtype`), one template instantiated per element type (`_bf16` names).
//!
//! What the kernels index by (each query's sequence, position and cache slot, the block tables,
//! the plan, the rotary tables) is the same for every layer of a step: [`StepIndex`] builds it
//! once per step and uploads it in one copy, and every layer's RoPE, cache write and attention
//! read it there, so a layer copies nothing from the host.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::ops::{
    cache_ptrs, empty, f32_ptr, gpu, gpu_mut, raw, rope_with, scatter_rows_at, upload_i32,
};
use super::storage::CudaHandle;
use super::{overlap, Kernel};
use mla::is_mla_latent;
pub use mla::MlaPrelude;

mod mla;
use crate::backend::cpu::attention::{cache_slot, Heads, QueryPos};
use crate::backend::cpu::rope::Rotary;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Query rows per flash tile (`FA_ROWS` in kernels/attention.cu).
const TILE: usize = 64;
/// Shorter runs are not worth a 64-row tile: the per-query kernel serves them.
pub const MIN_FLASH_RUN: usize = 8;
/// Threads of the per-query kernel's blocks.
const THREADS_ATT: usize = 128;
/// Warps of the decode kernel's blocks (`DEC_WARPS`) and the most query heads a KV head it
/// serves (`DEC_MAX_GROUP`, kernels/attention.cu).
const DECODE_WARPS: usize = 8;
pub const DECODE_MAX_GROUP: usize = 8;

/// How one step's queries are split between the two kernels.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AttentionPlan {
    /// Tiles as (first query row, rows, sequence, first position), flattened.
    pub tiles: Vec<i32>,
    /// Query rows for the per-query kernel.
    pub rows: Vec<i32>,
}

/// Cuts `queries` into maximal runs (same sequence, positions +1 each) and sends runs of at least
/// `min_run` queries to tiles of up to `tile` rows when `flash` holds, the rest to `rows`.
pub fn plan(queries: &[QueryPos], flash: bool, min_run: usize, tile: usize) -> AttentionPlan {
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
            for t0 in (start..end).step_by(tile) {
                let n = tile.min(end - t0);
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

/// Words `at..at + len` of a [`StepIndex`]'s buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Section {
    at: usize,
    len: usize,
}

/// Appends `values` to `words` and returns where they went.
fn push(words: &mut Vec<i32>, values: impl IntoIterator<Item = i32>) -> Section {
    let at = words.len();
    words.extend(values);
    Section {
        at,
        len: words.len() - at,
    }
}

/// One step's attention indexing on one GPU, in one buffer uploaded with one copy: each query's
/// sequence, position and cache slot; the block tables (flattened, with each sequence's first
/// entry); the plan (flash tiles and the per-query kernel's rows, and every row for layers the
/// flash kernel cannot serve); and the cos/sin tables of the rotaries the step was built for.
/// Every layer of the step reads it; none copies anything from the host.
#[derive(Debug)]
pub struct StepIndex {
    dev: CudaHandle,
    /// 32-bit words: i32 indices, and the rotary tables as f32 bit patterns (owned here; the
    /// kernels get addresses from `base`).
    _buf: CudaSlice<i32>,
    /// Device address of word 0.
    base: u64,
    queries: usize,
    block_size: usize,
    seq: Section,
    pos: Section,
    slot: Section,
    table_off: Section,
    tables: Section,
    tiles: Section,
    flash_rows: Section,
    all_rows: Section,
    /// MLA's prefill units (tiles of up to four rows) and its other rows.
    mla_units: Section,
    mla_rows: Section,
    /// One past the largest slot a query writes, and one past the largest block a table names
    /// (each cache an op touches is checked against them).
    slot_end: usize,
    block_end: usize,
    /// Positions the longest query attends to (its position + 1).
    longest: usize,
    /// Each registered rotary and its table ([queries, dim] f32: cos then sin per query).
    rotaries: Vec<(Rotary, Section)>,
}

impl StepIndex {
    /// The index of `queries` over `tables` (cache blocks of `block_size` slots) on `dev`, with
    /// the RoPE tables of `rotaries`. Fails when a query's position has no block in its table.
    pub fn new(
        dev: &CudaHandle,
        queries: &[QueryPos],
        tables: &[&[u32]],
        block_size: usize,
        rotaries: &[&Rotary],
    ) -> Result<Self> {
        crate::ops::check_query_blocks(queries, tables, block_size)?;
        let block_end = tables
            .iter()
            .flat_map(|t| t.iter())
            .map(|&b| b as usize + 1)
            .max()
            .unwrap_or(0);
        if block_end.saturating_mul(block_size) > i32::MAX as usize {
            return Err(Error::Shape(format!(
                "paged attention: block {} of {block_size} slots is past the GPU kernels' i32 indexing",
                block_end - 1
            )));
        }
        let slots: Vec<i32> = queries
            .iter()
            .map(|q| cache_slot(tables[q.seq], block_size, q.pos) as i32)
            .collect();
        let slot_end = slots.iter().map(|&s| s as usize + 1).max().unwrap_or(0);
        let mla = plan(queries, true, 2, mla::MLA_UNIT_ROWS);
        let plan = plan(queries, true, MIN_FLASH_RUN, TILE);
        let n = queries.len();
        let mut words = Vec::with_capacity(
            7 * n
                + tables.iter().map(|t| t.len() + 1).sum::<usize>()
                + plan.tiles.len()
                + mla.tiles.len(),
        );
        let w = &mut words;
        let seq = push(w, queries.iter().map(|q| q.seq as i32));
        let pos = push(w, queries.iter().map(|q| q.pos as i32));
        let slot = push(w, slots);
        let table_off = push(
            w,
            tables.iter().scan(0i32, |off, t| {
                let first = *off;
                *off += t.len() as i32;
                Some(first)
            }),
        );
        let tables_at = push(w, tables.iter().flat_map(|t| t.iter().map(|&b| b as i32)));
        let tiles = push(w, plan.tiles);
        let flash_rows = push(w, plan.rows);
        let all_rows = push(w, 0..n as i32);
        let mla_units = push(w, mla.tiles);
        let mla_rows = push(w, mla.rows);
        let rotaries = rotaries
            .iter()
            .map(|r| {
                let table = queries
                    .iter()
                    .flat_map(|q| r.cos_sin(q.pos))
                    .map(|v| v.to_bits() as i32);
                ((*r).clone(), push(w, table))
            })
            .collect();
        let buf = upload_i32(dev, &words)?;
        let base = raw(dev, &buf);
        Ok(Self {
            dev: dev.clone(),
            _buf: buf,
            base,
            queries: n,
            block_size,
            seq,
            pos,
            slot,
            table_off,
            tables: tables_at,
            tiles,
            flash_rows,
            all_rows,
            mla_units,
            mla_rows,
            slot_end,
            block_end,
            longest: queries.iter().map(|q| q.pos + 1).max().unwrap_or(0),
            rotaries,
        })
    }

    /// The device address of a section.
    fn at(&self, s: Section) -> u64 {
        self.base + 4 * s.at as u64
    }

    /// Whether `t` lives where this index can serve it: in the same context and on the same
    /// stream, so that the index's upload is ordered before the kernels that read it.
    pub fn serves(&self, t: &Tensor) -> bool {
        gpu(t).is_ok_and(|s| {
            let d = s.device();
            d.context().cu_ctx() == self.dev.context().cu_ctx()
                && d.stream().cu_stream() == self.dev.stream().cu_stream()
        })
    }

    fn check_serves(&self, t: &Tensor) -> Result<()> {
        if self.serves(t) {
            return Ok(());
        }
        Err(Error::Device(
            "a step index was used with a tensor of another GPU stream".into(),
        ))
    }

    /// The number of queries.
    pub fn len(&self) -> usize {
        self.queries
    }

    /// Whether the step has no queries.
    pub fn is_empty(&self) -> bool {
        self.queries == 0
    }

    /// Whether RoPE tables of `rotary` were built into the index.
    pub fn has_rotary(&self, rotary: &Rotary) -> bool {
        self.rotaries.iter().any(|(r, _)| r == rotary)
    }

    /// RoPE in place on `x` (one row per query) with the index's tables for `rotary` (an error
    /// when the index was not built for it; see [`Self::has_rotary`]).
    pub fn rope(&self, x: &mut Tensor, rotary: &Rotary) -> Result<()> {
        self.check_serves(x)?;
        rope_with(x, rotary, self.queries, self.rope_table(rotary)?)
    }

    /// The device address of the step's cos/sin rows for `rotary`.
    fn rope_table(&self, rotary: &Rotary) -> Result<u64> {
        let (_, table) = self
            .rotaries
            .iter()
            .find(|(r, _)| r == rotary)
            .ok_or_else(|| Error::Shape("RoPE with a rotary the step index lacks".into()))?;
        Ok(self.at(*table))
    }

    /// The step of a GQA layer between its QKV projection and attention in one launch: splits
    /// `qkv` [queries, q_w + 2·kv_w] into q, k and v, rotates q and k with the index's tables for
    /// `rotary`, writes k and v into the caches (rows of kv_w) at each query's slot and returns q.
    pub fn qkv_rope_cache(
        &self,
        qkv: &Tensor,
        q_w: usize,
        kv_w: usize,
        rotary: &Rotary,
        keys: &mut Tensor,
        values: &mut Tensor,
    ) -> Result<Tensor> {
        self.check_serves(qkv)?;
        let cs = self.rope_table(rotary)?;
        let half = rotary.dim() / 2;
        let (rows, cols) = match qkv.dims() {
            &[r, c] => (r, c),
            _ => (usize::MAX, 0),
        };
        let fits = |t: &Tensor| self.slot_end * kv_w <= t.numel();
        if rows != self.queries
            || cols != q_w + 2 * kv_w
            || half == 0
            || !q_w.is_multiple_of(2 * half)
            || !kv_w.is_multiple_of(2 * half)
            || !fits(keys)
            || !fits(values)
        {
            return Err(Error::Shape(format!(
                "qkv_rope_cache: {} for {} queries, q {q_w} + k/v {kv_w} wide, RoPE dim {}, caches of {} / {} values",
                qkv.shape(),
                self.queries,
                rotary.dim(),
                keys.numel(),
                values.numel()
            )));
        }
        let dev = gpu(qkv)?.device().clone();
        let q = empty(&dev, [rows, q_w])?;
        if rows == 0 {
            return Ok(q);
        }
        let per_row = (q_w / 2 + kv_w / 2).max(kv_w).div_ceil(256);
        let (qkvp, qp) = (f32_ptr(qkv)?, gpu(&q)?.ptr());
        // Written in place: unshared first (a cache is never shared, so no copy is made).
        gpu_mut(keys)?;
        gpu_mut(values)?;
        let (kp, vp, bf16) = cache_ptrs(keys, values)?;
        let sp = self.at(self.slot);
        let (qw, kw, h) = (q_w as i32, kv_w as i32, half as i32);
        let (il, pr) = (rotary.interleaved() as i32, per_row as i32);
        let name = if bf16 {
            "qkv_rope_cache_bf16"
        } else {
            "qkv_rope_cache"
        };
        let f = dev.function(Kernel::Ops, name)?;
        let mut b = overlap::Args::new();
        b.arg(&qkvp).arg(&qp).arg(&kp).arg(&vp).arg(&sp).arg(&cs);
        b.arg(&qw).arg(&kw).arg(&h).arg(&il).arg(&pr);
        let cfg = LaunchConfig {
            grid_dim: ((rows * per_row) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: qkv holds rows x (q_w + 2 kv_w) values and q rows x q_w (checked, allocated);
        // every slot is below slot_end, so the cache rows written lie inside keys and values
        // (checked); the RoPE table has a row of 2 half values per query; the kernel touches
        // nothing before the previous kernel ends.
        unsafe { overlap::launch(&dev, &f, cfg, &mut b, "launching qkv_rope_cache") }?;
        Ok(q)
    }

    /// Writes row i of `src` into the cache `dst` (rows of `dst_w`) at query i's slot, from
    /// column `col` on.
    pub fn write_rows(
        &self,
        dst: &mut Tensor,
        dst_w: usize,
        col: usize,
        src: &Tensor,
    ) -> Result<()> {
        self.check_serves(src)?;
        scatter_rows_at(
            dst,
            dst_w,
            col,
            self.at(self.slot),
            self.queries,
            self.slot_end,
            src,
        )
    }

    /// Causal paged attention of `q` [queries, n_heads·qk_dim] over GPU caches of
    /// `k_width`/`v_width`-wide rows (f32 or bf16); returns [queries, n_heads·v_dim].
    pub fn paged_attention(
        &self,
        q: &Tensor,
        keys: &Tensor,
        k_width: usize,
        values: &Tensor,
        v_width: usize,
        h: Heads,
    ) -> Result<Tensor> {
        self.check_serves(q)?;
        let dev = &self.dev;
        let out = empty(dev, [self.queries, h.n_heads * h.v_dim])?;
        if self.queries == 0 {
            return Ok(out);
        }
        if h.v_dim > 8 * THREADS_ATT || h.n_kv_heads == 0 || !h.n_heads.is_multiple_of(h.n_kv_heads)
        {
            return Err(Error::Shape(format!(
                "paged attention: {h:?} is not supported on the GPU"
            )));
        }
        let slots = self.block_end * self.block_size;
        if q.numel() != self.queries * h.n_heads * h.qk_dim
            || keys.numel() < slots * k_width
            || values.numel() < slots * v_width
        {
            return Err(Error::Shape(format!(
                "paged attention: q {} for {} queries of {h:?}, or caches of {} / {} values for \
                 {slots} slots of {k_width} / {v_width}",
                q.shape(),
                self.queries,
                keys.numel(),
                values.numel()
            )));
        }
        let (qp, outp) = (f32_ptr(q)?, gpu(&out)?.ptr());
        let (kp, vp, bf16) = cache_ptrs(keys, values)?;
        if kp == vp && is_mla_latent(&h, k_width, v_width, bf16) {
            self.mla_decode(qp, kp, outp, &h)?;
            return Ok(out);
        }
        // The flash kernel reads 4 elements of a (key, head) row at a time (16 bytes of f32, 8 of
        // bf16): every row must start aligned to that.
        let flash = h.qk_dim == h.v_dim
            && matches!(h.qk_dim, 64 | 128)
            && k_width.is_multiple_of(4)
            && v_width.is_multiple_of(4)
            && kp.is_multiple_of(16)
            && vp.is_multiple_of(16);
        let (tiles, rows) = if flash {
            (self.tiles, self.flash_rows)
        } else {
            (Section::default(), self.all_rows)
        };
        let (op, tp) = (self.at(self.table_off), self.at(self.tables));
        let group = (h.n_heads / h.n_kv_heads) as i32;
        let window = h.window.map_or(0, |w| w as i32);
        let (nh, kw, vw, bs) = (
            h.n_heads as i32,
            k_width as i32,
            v_width as i32,
            self.block_size as i32,
        );
        if tiles.len / 4 > 65535 {
            return Err(Error::Shape(format!(
                "{} query tiles of 64 in one step; the flash kernel's grid takes at most 65535",
                tiles.len / 4
            )));
        }
        if tiles.len > 0 {
            let name = match (h.qk_dim, bf16) {
                (64, false) => "flash_prefill_d64",
                (64, true) => "flash_prefill_d64_bf16",
                (_, false) => "flash_prefill_d128",
                (_, true) => "flash_prefill_d128_bf16",
            };
            let tl = self.at(tiles);
            let f = dev.function(Kernel::Attention, name)?;
            let mut b = overlap::Args::new();
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
                grid_dim: (h.n_heads as u32, (tiles.len / 4) as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: q/out have `queries` rows of n_heads heads (checked above), every tile's
            // rows and positions come from the queries (checked against the tables when the
            // index was built), the caches hold every slot the tables name (checked above), and
            // the rows are 16-byte aligned (checked above).
            // Both kernels touch nothing before the previous kernel ends (kernels/attention.cu).
            unsafe { overlap::launch(dev, &f, cfg, &mut b, "launching flash_prefill") }?;
        }
        if rows.len > 0 {
            // The decode kernel where the head dims and group fit it, else the generic one; both
            // take the same arguments.
            let group_size = h.n_heads / h.n_kv_heads;
            let (f, cfg) = if flash && group_size <= DECODE_MAX_GROUP {
                let name = match (h.qk_dim, bf16) {
                    (64, false) => "paged_decode_d64",
                    (64, true) => "paged_decode_d64_bf16",
                    (_, false) => "paged_decode_d128",
                    (_, true) => "paged_decode_d128_bf16",
                };
                let cfg = LaunchConfig {
                    grid_dim: ((rows.len * h.n_kv_heads) as u32, 1, 1),
                    block_dim: ((32 * DECODE_WARPS) as u32, 1, 1),
                    shared_mem_bytes: (DECODE_WARPS * group_size * (h.qk_dim + 2) * 4) as u32,
                };
                (dev.function(Kernel::Attention, name)?, cfg)
            } else {
                let cfg = LaunchConfig {
                    grid_dim: ((rows.len * h.n_heads) as u32, 1, 1),
                    block_dim: (THREADS_ATT as u32, 1, 1),
                    shared_mem_bytes: ((h.qk_dim + 256) * 4) as u32,
                };
                let name = if bf16 {
                    "paged_attention_bf16"
                } else {
                    "paged_attention_f32"
                };
                (dev.function(Kernel::Ops, name)?, cfg)
            };
            let (sp, pp, rp) = (self.at(self.seq), self.at(self.pos), self.at(rows));
            let (qk, vd) = (h.qk_dim as i32, h.v_dim as i32);
            let mut b = overlap::Args::new();
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
            // SAFETY: as for the flash kernel; `rows` indexes the queries, whose seq/pos sections
            // are whole; the decode kernel runs only where the flash kernel's alignment and dims
            // hold and n_heads = group * n_kv_heads with group <= DEC_MAX_GROUP.
            unsafe { overlap::launch(dev, &f, cfg, &mut b, "launching the per-query attention") }?;
        }
        Ok(out)
    }
}

/// Causal paged attention over GPU caches of `k_width`/`v_width`-wide rows (f32 or bf16), `q` [T,
/// n_heads·qk_dim] on the same GPU; returns [T, n_heads·v_dim]. Builds a [`StepIndex`] for this
/// one call; a model step builds one for all its layers.
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
    StepIndex::new(&dev, queries, tables, block_size, &[])?
        .paged_attention(q, keys, k_width, values, v_width, h)
}
