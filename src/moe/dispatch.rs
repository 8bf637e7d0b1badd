//! Expert parallelism: the (token, expert) pairs of this rank travel to the ranks that hold
//! their experts and back (Lepikhin et al. 2020, GShard; DeepSeek-V3 §3.4).
//!
//! plan (replica per pair) → All-to-All of per-slot counts → All-to-All of rows → group the
//! received rows by local slot → grouped SwiGLU → ungroup → All-to-All back → weighted sum in
//! token order. Dropless: every pair is computed. With one rank the All-to-Alls are local copies.

use super::ExpertBank;
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;
use switchyard_experts::{DispatchPlan, Placement, RecvPermutation, Routing};

/// Where this rank sits among the experts' ranks.
#[derive(Debug, Clone, Copy)]
pub struct EpRank<'a> {
    /// The layer's placement.
    pub placement: &'a Placement,
    /// This rank's index in the EP group.
    pub rank: usize,
    /// Ranks per node (replica choice prefers the node).
    pub ranks_per_node: usize,
}

/// What the dispatch did, for statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct DispatchStats {
    /// Pairs this rank's experts computed (from every source).
    pub rows_computed: u64,
    /// Bytes the plan says this rank sends to other ranks: its rows there, the results back,
    /// and the per-slot counts.
    pub predicted_bytes: u64,
    /// Bytes the communicator counted for this dispatch.
    pub measured_bytes: u64,
}

/// Runs the routed experts of `x`'s tokens wherever they live; returns Σ_j w_tj · E_j(x_t).
pub fn dispatch_combine(
    x: &Tensor,
    routing: &Routing,
    ep: EpRank,
    bank: &ExpertBank,
    comm: &dyn Communicator,
) -> Result<(Tensor, DispatchStats)> {
    let hidden = x.dims()[1];
    let k = routing.top_k;
    let bytes_before = comm.bytes_moved();
    let plan = DispatchPlan::new(routing, ep.placement, ep.rank, ep.ranks_per_node)
        .map_err(dispatch_err)?;
    let n_ranks = ep.placement.n_ranks();
    let per_rank = ep.placement.slots_per_rank();
    // 1. How many rows each local slot of every destination gets from us.
    let slot_counts: Vec<u32> = (0..n_ranks)
        .flat_map(|d| plan.slot_counts(d).iter().map(|&c| c as u32))
        .collect();
    let (recv_counts, _) = comm.all_to_all_v_u32(&slot_counts, &vec![per_rank; n_ranks])?;
    let recv_matrix: Vec<Vec<usize>> = recv_counts
        .chunks(per_rank)
        .map(|c| c.iter().map(|&v| v as usize).collect())
        .collect();
    // 2. The rows themselves, in send order (by destination, then slot, then token), on the
    // device the tokens live on (a GPU communicator never copies them through the host).
    let send = ops::gather_rows(x, plan.send_order(), k)?;
    let (received, recv_rows) = comm.all_to_all_rows(&send, plan.rank_counts())?;
    // 3. Group by local slot, run the experts, ungroup (the permutation is computed on the host
    // from the exchanged counts; the rows move on the device).
    let perm = RecvPermutation::new(&recv_matrix).map_err(dispatch_err)?;
    let grouped = ops::gather_rows(&received, &perm.perm, 1)?;
    let computed = bank.forward_grouped(&grouped, &perm.slot_offsets)?;
    let back_rows = ops::gather_rows(&computed, &perm.inverse(), 1)?;
    // 4. Back to the sources, which receive their rows in the order they sent them.
    let (returned, _) = comm.all_to_all_rows(&back_rows, &recv_rows)?;
    let out = ops::combine(&returned, plan.send_order(), &routing.weights, k)?;
    let f32_bytes = std::mem::size_of::<f32>();
    let rows_back: usize = recv_rows
        .iter()
        .enumerate()
        .filter(|(src, _)| *src != ep.rank)
        .map(|(_, r)| r * hidden * f32_bytes)
        .sum();
    let counts_bytes = (n_ranks - 1) * per_rank * std::mem::size_of::<u32>();
    let stats = DispatchStats {
        rows_computed: grouped.dims()[0] as u64,
        predicted_bytes: plan.alltoall_bytes(hidden, f32_bytes)
            + rows_back as u64
            + counts_bytes as u64,
        measured_bytes: comm.bytes_moved() - bytes_before,
    };
    Ok((out, stats))
}

fn dispatch_err(e: impl std::fmt::Display) -> Error {
    Error::Ranks(format!("expert dispatch: {e}"))
}
