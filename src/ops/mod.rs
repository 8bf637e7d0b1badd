//! The fused ops of inference over [`Tensor`]s, dispatched on where the tensor lives. The model
//! calls only these; each backend provides the kernels (`backend::cpu` is the reference).

use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

pub use cpu::attention::{cache_slot, Heads, PagedCache, QueryPos};
pub use cpu::moe::Permutation;
pub use cpu::rope::Rotary;

fn cpu_of(t: &Tensor) -> &[f32] {
    match t.storage() {
        Storage::Cpu(v) => v,
    }
}

fn rows_of(x: &Tensor) -> (usize, usize) {
    let d = x.dims();
    let cols = *d.last().unwrap_or(&0);
    (if cols == 0 { 0 } else { x.numel() / cols }, cols)
}

/// `x · wᵀ (+ b)` over the last dim of `x`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (m, k) = rows_of(x);
    let (n, wk) = (w.dims()[0], w.dims()[1]);
    if k != wk {
        return Err(Error::Shape(format!("linear: input {} against weight {}", x.shape(), w.shape())));
    }
    let out = cpu::matmul::linear(cpu_of(x), m, k, cpu_of(w), n, b.map(cpu_of));
    Tensor::from_f32([m, n], out)
}

/// Rows of the embedding table for `ids`.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (vocab, hidden) = (table.dims()[0], table.dims()[1]);
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        if id as usize >= vocab {
            return Err(Error::Input(format!("token id {id} is outside the vocabulary (size {vocab})")));
        }
        out.extend_from_slice(table.row(id as usize));
    }
    Tensor::from_f32([ids.len(), hidden], out)
}

/// RMSNorm of each row.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Tensor::from_f32(x.dims().to_vec(), cpu::norm::rms_norm(cpu_of(x), cpu_of(w), eps))
}

/// `residual += delta`, then RMSNorm(residual).
pub fn add_rms_norm(residual: &mut Tensor, delta: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let dims = residual.dims().to_vec();
    let out = cpu::norm::add_rms_norm(residual.as_mut_slice(), cpu_of(delta), cpu_of(w), eps);
    Tensor::from_f32(dims, out)
}

/// `x += y`.
pub fn add_in_place(x: &mut Tensor, y: &Tensor) {
    for (a, b) in x.as_mut_slice().iter_mut().zip(cpu_of(y)) {
        *a += b;
    }
}

/// RMSNorm over every `w.len()`-wide chunk (per-head q/k norm).
pub fn rms_norm_chunks(x: &mut Tensor, w: &Tensor, eps: f32) {
    cpu::norm::rms_norm_in_place(x.as_mut_slice(), cpu_of(w), eps);
}

/// RoPE on every row of `x` (one token's heads) at that token's position.
pub fn rope(x: &mut Tensor, rotary: &Rotary, positions: &[usize]) {
    let (_, cols) = rows_of(x);
    for (row, &pos) in x.as_mut_slice().chunks_exact_mut(cols).zip(positions) {
        rotary.apply(row, pos);
    }
}

/// silu(gate) · up over rows of `[gate | up]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (m, cols) = rows_of(gate_up);
    Tensor::from_f32([m, cols / 2], cpu::activation::silu_mul(cpu_of(gate_up), cols / 2))
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
    let out = cpu::attention::paged_attention(cpu_of(q), queries, tables, keys, values, heads);
    Tensor::from_f32([queries.len(), heads.n_heads * heads.v_dim], out)
}

/// Groups (token, k) pairs by expert.
pub fn permute_by_expert(experts: &[u32], n_experts: usize) -> Permutation {
    cpu::moe::permute_by_expert(experts, n_experts)
}

/// Rows of `x` in permutation order (pair p reads token p / top_k).
pub fn gather_rows(x: &Tensor, order: &[u32], top_k: usize) -> Result<Tensor> {
    let (_, h) = rows_of(x);
    Tensor::from_f32([order.len(), h], cpu::moe::gather_rows(cpu_of(x), h, order, top_k))
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
    let (_, h) = rows_of(y);
    let out = cpu::moe::combine(cpu_of(y), order, weights, top_k, h);
    Tensor::from_f32([weights.len() / top_k.max(1), h], out)
}
