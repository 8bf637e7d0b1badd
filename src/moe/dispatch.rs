//! Expert parallelism: the (token, expert) pairs of this rank travel to the ranks that hold
//! their experts and back (Lepikhin et al. 2020, GShard; DeepSeek-V3 §3.4).
//!
//! plan (replica per pair) → All-to-All of per-slot counts → All-to-All of one row per (token,
//! destination) and of each pair's row index → expand into pairs, group by local slot → grouped
//! SwiGLU → ungroup → All-to-All of the pairs' results back → weighted sum in token order.
//! Dropless: every pair is computed. With one rank the All-to-Alls are local copies. A token
//! travels once to each rank that holds any of its experts (DeepSeek-V3 §3.4 caps the nodes
//! for the same reason); results return per pair so the sum runs in the same order as on one
//! rank, and every layout gives bit-identical answers.

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
    // 2. The rows themselves, one per (token, destination), on the device the tokens live on (a
    // GPU communicator never copies them through the host); then, for every pair in send order,
    // which of its source's rows it reads.
    let send = ops::gather_rows(x, plan.send_tokens(), 1)?;
    let (rows, rows_from) = comm.all_to_all_rows(&send, plan.row_counts())?;
    let (pair_rows, recv_rows) = comm.all_to_all_v_u32(plan.pair_rows(), plan.rank_counts())?;
    let pair_row = expand_pairs(&pair_rows, &recv_rows, &rows_from)?;
    // 3. Expand into pairs grouped by local slot (one gather), run the experts, ungroup (the
    // permutations are computed on the host from the exchanged counts; rows move on the device).
    let perm = RecvPermutation::new(&recv_matrix).map_err(dispatch_err)?;
    if perm.perm.len() != pair_row.len() {
        return Err(dispatch_err(format!(
            "the slot counts announce {} pairs, the row indices {}",
            perm.perm.len(),
            pair_row.len()
        )));
    }
    let by_slot: Vec<u32> = perm.perm.iter().map(|&i| pair_row[i as usize]).collect();
    let grouped = ops::gather_rows(&rows, &by_slot, 1)?;
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

/// Row indices into the received rows (sources one after another) of every received pair:
/// source s's pairs read `pair_rows` relative to the first of its `rows_from[s]` rows.
fn expand_pairs(pair_rows: &[u32], pairs_from: &[usize], rows_from: &[usize]) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(pair_rows.len());
    let (mut at, mut base) = (0usize, 0usize);
    for (src, (&n, &rows)) in pairs_from.iter().zip(rows_from).enumerate() {
        for &r in pair_rows.get(at..at + n).unwrap_or(&[]) {
            if r as usize >= rows {
                return Err(dispatch_err(format!(
                    "rank {src} sent a pair reading row {r} of the {rows} it sent"
                )));
            }
            out.push((base + r as usize) as u32);
        }
        at += n;
        base += rows;
    }
    if out.len() != pair_rows.len() {
        return Err(dispatch_err(format!(
            "{} pair row indices received for {} pairs",
            pair_rows.len(),
            out.len()
        )));
    }
    Ok(out)
}

fn dispatch_err(e: impl std::fmt::Display) -> Error {
    Error::Ranks(format!("expert dispatch: {e}"))
}
