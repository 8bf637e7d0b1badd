//! The fused ops of inference over [`Tensor`]s, dispatched on where the tensor lives. The model
//! calls only these; each backend provides the kernels (`backend::cpu` is the reference,
//! `backend::cuda::ops` the GPU's, chosen when the first tensor argument is on a GPU).

use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub use cpu::attention::{cache_slot, Heads, QueryPos};
pub use cpu::moe::Permutation;
pub use cpu::rope::Rotary;

/// A paged cache of one layer: `slots` rows of `width` values, `block_size` rows per block,
/// on whichever device `data` lives.
#[derive(Debug, Clone, Copy)]
pub struct PagedCache<'a> {
    /// [num_slots · width] values.
    pub data: &'a Tensor,
    /// Values per slot.
    pub width: usize,
    /// Slots per block.
    pub block_size: usize,
}

impl<'a> PagedCache<'a> {
    fn cpu(&self) -> cpu::attention::PagedCache<'a> {
        cpu::attention::PagedCache {
            data: self.data.as_slice(),
            width: self.width,
            block_size: self.block_size,
        }
    }
}

/// Runs the GPU version when `$t` lives on a GPU (compiled only with the `cuda` feature; without
/// it no GPU tensor can exist).
macro_rules! on_gpu {
    ($t:expr => $call:expr) => {
        #[cfg(feature = "cuda")]
        if $t.is_cuda() {
            #[allow(clippy::needless_return)]
            return $call;
        }
    };
}

fn cpu_of(t: &Tensor) -> &[f32] {
    t.as_slice()
}

fn rows_of(x: &Tensor) -> (usize, usize) {
    let d = x.dims();
    let cols = *d.last().unwrap_or(&0);
    (x.numel().checked_div(cols).unwrap_or(0), cols)
}

/// `x · wᵀ (+ b)` over the last dim of `x`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::linear(x, w, b));
    let (m, k) = rows_of(x);
    let (n, wk) = (w.dims()[0], w.dims()[1]);
    if k != wk {
        return Err(Error::Shape(format!(
            "linear: input {} against weight {}",
            x.shape(),
            w.shape()
        )));
    }
    let out = cpu::matmul::linear(cpu_of(x), m, k, cpu_of(w), n, b.map(cpu_of));
    Tensor::from_f32([m, n], out)
}

/// One linear map per head: `out[t, h·n..][..n] = x[t, h·k..][..k] · w[h]ᵀ` for `x` [T, H·k] and
/// `w` [H, n, k], giving [T, H·n]. MLA's absorbed form applies W_UKᵀ and W_UV to every head this
/// way: one batched GEMM on a GPU instead of a GEMM and two copies a head.
pub fn linear_heads(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::linear_heads(x, w));
    let (t, hk) = rows_of(x);
    let (h, n, k) = heads_of(x, w)?;
    let (xs, ws) = (cpu_of(x), cpu_of(w));
    let mut out = vec![0.0f32; t * h * n];
    for head in 0..h {
        let xh: Vec<f32> = (0..t)
            .flat_map(|r| &xs[r * hk + head * k..][..k])
            .copied()
            .collect();
        let y = cpu::matmul::linear(&xh, t, k, &ws[head * n * k..][..n * k], n, None);
        for (r, row) in y.chunks_exact(n.max(1)).enumerate() {
            out[r * h * n + head * n..][..n].copy_from_slice(row);
        }
    }
    Tensor::from_f32([t, h * n], out)
}

/// (heads, n, k) of [`linear_heads`]'s weights `w` [H, n, k], checked against `x` [T, H·k].
pub(crate) fn heads_of(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    match *w.dims() {
        [h, n, k] if h * k == rows_of(x).1 => Ok((h, n, k)),
        _ => Err(Error::Shape(format!(
            "per-head linear: input {} against weights {}",
            x.shape(),
            w.shape()
        ))),
    }
}

/// An input error naming the first of `ids` outside a vocabulary of `vocab` tokens, if any.
pub fn check_token_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        ))),
        None => Ok(()),
    }
}

/// Rows of the embedding table for `ids`.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    on_gpu!(table => crate::backend::cuda::ops::embedding(table, ids));
    let (vocab, hidden) = (table.dims()[0], table.dims()[1]);
    check_token_ids(ids, vocab)?;
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        out.extend_from_slice(table.row(id as usize));
    }
    Tensor::from_f32([ids.len(), hidden], out)
}

/// RMSNorm of each row.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::rms_norm(x, w, eps));
    Tensor::from_f32(
        x.dims().to_vec(),
        cpu::norm::rms_norm(cpu_of(x), cpu_of(w), eps),
    )
}

/// `residual += delta`, then RMSNorm(residual).
pub fn add_rms_norm(residual: &mut Tensor, delta: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    on_gpu!(residual => crate::backend::cuda::ops::add_rms_norm(residual, delta, w, eps));
    let dims = residual.dims().to_vec();
    let out = cpu::norm::add_rms_norm(residual.as_mut_slice(), cpu_of(delta), cpu_of(w), eps);
    Tensor::from_f32(dims, out)
}

/// `x += y`.
pub fn add_in_place(x: &mut Tensor, y: &Tensor) -> Result<()> {
    on_gpu!(x => crate::backend::cuda::ops::add_in_place(x, y));
    for (a, b) in x.as_mut_slice().iter_mut().zip(cpu_of(y)) {
        *a += b;
    }
    Ok(())
}

/// RMSNorm over every `w.len()`-wide chunk (per-head q/k norm).
pub fn rms_norm_chunks(x: &mut Tensor, w: &Tensor, eps: f32) -> Result<()> {
    on_gpu!(x => crate::backend::cuda::ops::rms_norm_chunks(x, w, eps));
    cpu::norm::rms_norm_in_place(x.as_mut_slice(), cpu_of(w), eps);
    Ok(())
}

/// RoPE on every row of `x` (one token's heads) at that token's position.
pub fn rope(x: &mut Tensor, rotary: &Rotary, positions: &[usize]) -> Result<()> {
    on_gpu!(x => crate::backend::cuda::ops::rope(x, rotary, positions));
    let (_, cols) = rows_of(x);
    for (row, &pos) in x.as_mut_slice().chunks_exact_mut(cols).zip(positions) {
        rotary.apply(row, pos);
    }
    Ok(())
}

/// (rows, cols) of `x` when columns `start..start + len` lie inside its rows (narrow_cols on
/// either device).
pub(crate) fn col_range(x: &Tensor, start: usize, len: usize) -> Result<(usize, usize)> {
    let (rows, cols) = rows_of(x);
    if start + len > cols {
        return Err(Error::Shape(format!(
            "columns {start}..{} of {}",
            start + len,
            x.shape()
        )));
    }
    Ok((rows, cols))
}

/// Columns `start..start + len` of the rows of `x`, as [rows, len].
pub fn narrow_cols(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::narrow_cols(x, start, len));
    let (rows, cols) = col_range(x, start, len)?;
    let mut out = Vec::with_capacity(rows * len);
    for r in 0..rows {
        out.extend_from_slice(&cpu_of(x)[r * cols + start..][..len]);
    }
    Tensor::from_f32([rows, len], out)
}

/// The rows of `parts` side by side: [rows, Σ widths].
pub fn concat_cols(parts: &[&Tensor]) -> Result<Tensor> {
    on_gpu!(parts[0] => crate::backend::cuda::ops::concat_cols(parts));
    let rows = rows_of(parts[0]).0;
    let width: usize = parts.iter().map(|p| rows_of(p).1).sum();
    let mut out = Vec::with_capacity(rows * width);
    for r in 0..rows {
        for p in parts {
            let c = rows_of(p).1;
            out.extend_from_slice(&cpu_of(p)[r * c..][..c]);
        }
    }
    Tensor::from_f32([rows, width], out)
}

/// Writes row i of `src` into row `slots[i]` of `dst` (a cache of `dst_width`-wide rows), from
/// column `col` on.
pub fn scatter_rows(
    dst: &mut Tensor,
    dst_width: usize,
    col: usize,
    slots: &[usize],
    src: &Tensor,
) -> Result<()> {
    on_gpu!(dst => crate::backend::cuda::ops::scatter_rows(dst, dst_width, col, slots, src));
    let w = rows_of(src).1;
    let d = dst.as_mut_slice();
    for (i, &slot) in slots.iter().enumerate() {
        d[slot * dst_width + col..][..w].copy_from_slice(&cpu_of(src)[i * w..][..w]);
    }
    Ok(())
}

/// Row t of `s` times sigmoid(gate[t]) (Qwen2-MoE's gated shared expert).
pub fn sigmoid_scale_rows(s: &mut Tensor, gate: &Tensor) -> Result<()> {
    on_gpu!(s => crate::backend::cuda::ops::sigmoid_scale_rows(s, gate));
    let h = rows_of(s).1;
    for (row, gv) in s.as_mut_slice().chunks_exact_mut(h).zip(cpu_of(gate)) {
        let scale = cpu::activation::sigmoid(*gv);
        row.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(())
}

/// silu(gate) · up over rows of `[gate | up]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    on_gpu!(gate_up => crate::backend::cuda::ops::silu_mul(gate_up));
    let (m, cols) = rows_of(gate_up);
    Tensor::from_f32(
        [m, cols / 2],
        cpu::activation::silu_mul(cpu_of(gate_up), cols / 2),
    )
}

/// Causal paged attention; see [`cpu::attention::paged_attention`].
pub fn paged_attention(
    q: &Tensor,
    queries: &[QueryPos],
    tables: &[&[u32]],
    keys: PagedCache,
    values: PagedCache,
    heads: Heads,
) -> Result<Tensor> {
    on_gpu!(q => crate::backend::cuda::ops::paged_attention(
        q, queries, tables, keys.data, keys.width, values.data, values.width, keys.block_size, heads
    ));
    let out = cpu::attention::paged_attention(
        cpu_of(q),
        queries,
        tables,
        keys.cpu(),
        values.cpu(),
        heads,
    );
    Tensor::from_f32([queries.len(), heads.n_heads * heads.v_dim], out)
}

/// Fails unless every query's position has a block in its sequence's table (`block_size` slots
/// each), so that no backend indexes past a table.
pub fn check_query_blocks(
    queries: &[QueryPos],
    tables: &[&[u32]],
    block_size: usize,
) -> Result<()> {
    for q in queries {
        if block_size == 0
            || tables
                .get(q.seq)
                .is_none_or(|t| q.pos / block_size >= t.len())
        {
            return Err(Error::Shape(format!(
                "paged attention: position {} of sequence {} has no block",
                q.pos, q.seq
            )));
        }
    }
    Ok(())
}

/// Groups (token, k) pairs by expert.
pub fn permute_by_expert(experts: &[u32], n_experts: usize) -> Permutation {
    cpu::moe::permute_by_expert(experts, n_experts)
}

/// Rows of `x` in permutation order (pair p reads token p / top_k).
pub fn gather_rows(x: &Tensor, order: &[u32], top_k: usize) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::gather_rows(x, order, top_k));
    let (_, h) = rows_of(x);
    Tensor::from_f32(
        [order.len(), h],
        cpu::moe::gather_rows(cpu_of(x), h, order, top_k),
    )
}

/// Rows `start..start + len` of `x` as a new tensor (a TP rank's share of the tokens).
pub fn narrow_rows(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    if x.is_cuda() {
        let rows: Vec<u32> = (start..start + len).map(|r| r as u32).collect();
        return gather_rows(x, &rows, 1);
    }
    x.narrow_rows(start, len)
}

/// Grouped SwiGLU over expert groups; `gate_up` is [E, 2I, H], `down` is [E, H, I], the
/// optional biases [E, 2I] and [E, H].
pub fn grouped_swiglu(
    x: &Tensor,
    offsets: &[usize],
    gate_up: &Tensor,
    down: &Tensor,
    biases: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    on_gpu!(x => crate::backend::cuda::ops::grouped_swiglu(x, offsets, gate_up, down, biases));
    let (rows, h) = rows_of(x);
    let inter = down.dims()[2];
    let w = cpu::moe::ExpertWeights {
        gate_up: cpu_of(gate_up),
        down: cpu_of(down),
        hidden: h,
        inter,
        gate_up_bias: biases.map(|b| cpu_of(b.0)),
        down_bias: biases.map(|b| cpu_of(b.1)),
    };
    Tensor::from_f32([rows, h], cpu::moe::grouped_swiglu(cpu_of(x), offsets, w))
}

/// Unpermute and sum with the router weights.
pub fn combine(y: &Tensor, order: &[u32], weights: &[f32], top_k: usize) -> Result<Tensor> {
    on_gpu!(y => crate::backend::cuda::ops::combine(y, order, weights, top_k));
    let (_, h) = rows_of(y);
    let out = cpu::moe::combine(cpu_of(y), order, weights, top_k, h);
    Tensor::from_f32([weights.len() / top_k.max(1), h], out)
}

/// The index of the largest value of every row (the first on ties).
pub fn argmax_rows(x: &Tensor) -> Result<Vec<u32>> {
    on_gpu!(x => crate::backend::cuda::ops::argmax_rows(x));
    let (_, cols) = rows_of(x);
    Ok(cpu_of(x)
        .chunks_exact(cols.max(1))
        .map(cpu::sample::argmax)
        .collect())
}

/// The greedy pick of every logits row and how decisive it was: (argmax, first on ties; largest
/// minus second largest value). On a GPU only these two numbers per row reach the host.
pub fn greedy_rows(x: &Tensor) -> Result<Vec<(u32, f32)>> {
    on_gpu!(x => crate::backend::cuda::sample::argmax_margin_rows(x));
    let (_, cols) = rows_of(x);
    Ok(cpu_of(x)
        .chunks_exact(cols.max(1))
        .map(|r| (cpu::sample::argmax(r), cpu::sample::top2_margin(r)))
        .collect())
}

/// [`cpu::sample::sample`] of the given rows of `x` ([rows, vocab]), one token per draw. On a GPU
/// one launch samples every row where the logits are and only the tokens reach the host.
pub fn sample_rows(x: &Tensor, draws: &[cpu::sample::RowDraw]) -> Result<Vec<u32>> {
    on_gpu!(x => crate::backend::cuda::sample::sample_rows(x, draws));
    let (rows, cols) = rows_of(x);
    draws
        .iter()
        .map(|d| {
            if d.row >= rows || cols == 0 {
                return Err(Error::Shape(format!(
                    "sampling row {} of logits {}",
                    d.row,
                    x.shape()
                )));
            }
            Ok(cpu::sample::sample(x.row(d.row), &d.params, d.uniform))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpu::sample::{sample, RowDraw, SamplingParams};

    #[test]
    fn sample_rows_on_the_host_is_sample_per_draw_and_rejects_a_missing_row() {
        let x = Tensor::from_f32([2, 3], vec![0.0, 2.0, 1.0, 5.0, 4.0, 3.0]).unwrap();
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 2,
        };
        let draws: Vec<RowDraw> = [(1, 0.1), (0, 0.99), (1, 0.95)]
            .iter()
            .map(|&(row, uniform)| RowDraw {
                row,
                params,
                uniform,
            })
            .collect();
        let want: Vec<u32> = draws
            .iter()
            .map(|d| sample(x.row(d.row), &d.params, d.uniform))
            .collect();
        assert_eq!(sample_rows(&x, &draws).unwrap(), want);
        let bad = RowDraw { row: 2, ..draws[0] };
        assert!(sample_rows(&x, &[bad]).is_err());
    }
}
