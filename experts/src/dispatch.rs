//! Dispatch plans: which physical replica serves every (token, k) pair, and in what order rows
//! travel through the All-to-All.
//!
//! # One row per token and destination
//! A token whose experts share a rank travels there once: the plan sends each destination the
//! distinct tokens of its pairs (ascending) and, for every pair in send order, the index of its
//! token among them; the receiver expands the rows back into pairs before the experts. The
//! results still come back one per pair, so the source combines exactly as without the dedup.
//!
//! # Replica choice (deterministic)
//! For a source rank `s` and a logical expert `e`, the candidate replicas are, in this order of
//! preference, the replicas of `e` on rank `s` itself; if none, those on `s`'s node; if none, all
//! replicas of `e`. Candidates are ordered by physical slot. The `i`-th pair of `s` routed to `e`
//! (counting in token-major pair order `t * top_k + j`) goes to candidate `(i + s) % n_candidates`.
//! So a source splits its pairs for `e` over the candidates round robin (balanced to within one
//! pair) and the rotation by `s` spreads the remainders of different sources over different
//! replicas. When every rank holds the same share of `e`'s tokens, each replica of `e` ends up with
//! the same share globally: the ranks with a replica keep theirs, the others spread theirs evenly.

use thiserror::Error;

use crate::placement::Placement;
use crate::routing::Routing;

/// Errors building a [`DispatchPlan`] or a [`RecvPermutation`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// Inputs disagree; the message names the number.
    #[error("invalid dispatch input: {0}")]
    Input(String),
}

/// The send side of one MoE layer's All-to-All on one source rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchPlan {
    src_rank: usize,
    n_ranks: usize,
    slots_per_rank: usize,
    /// Physical slot chosen for every pair `t * top_k + j`.
    chosen_slot: Vec<u32>,
    /// Pairs per destination rank.
    rank_counts: Vec<usize>,
    /// Pairs per physical slot (`dest_rank * slots_per_rank + local_slot`).
    slot_counts: Vec<usize>,
    /// Pair indices grouped by destination rank, then local slot, then token order.
    send_order: Vec<u32>,
    /// Distinct tokens per destination rank (the rows that travel).
    row_counts: Vec<usize>,
    /// The tokens of those rows, grouped by destination rank, ascending within each.
    send_tokens: Vec<u32>,
    /// For each pair of `send_order`: the index of its token among its destination's rows.
    pair_rows: Vec<u32>,
}

impl DispatchPlan {
    /// Plans the dispatch of `routing` (made on `src_rank`) onto `placement`; nodes are groups
    /// of `ranks_per_node` consecutive ranks. See the module doc for the replica rule.
    pub fn new(
        routing: &Routing,
        placement: &Placement,
        src_rank: usize,
        ranks_per_node: usize,
    ) -> Result<Self, DispatchError> {
        let n_ranks = placement.n_ranks();
        let spr = placement.slots_per_rank();
        if src_rank >= n_ranks {
            return Err(DispatchError::Input(format!(
                "src_rank {src_rank} >= ep {n_ranks}"
            )));
        }
        if ranks_per_node == 0 || !n_ranks.is_multiple_of(ranks_per_node) {
            return Err(DispatchError::Input(format!(
                "ranks_per_node {ranks_per_node} does not divide ep {n_ranks}"
            )));
        }
        if routing.top_k == 0 || !routing.experts.len().is_multiple_of(routing.top_k) {
            return Err(DispatchError::Input(format!(
                "{} routed experts is not a multiple of top_k {}",
                routing.experts.len(),
                routing.top_k
            )));
        }
        if u32::try_from(routing.experts.len()).is_err() {
            return Err(DispatchError::Input(format!(
                "{} pairs overflow u32",
                routing.experts.len()
            )));
        }
        let node = src_rank / ranks_per_node;
        let n_logical = placement.n_logical();
        let mut candidates: Vec<Option<Vec<u32>>> = vec![None; n_logical];
        let mut seen = vec![0usize; n_logical];
        let mut chosen_slot = Vec::with_capacity(routing.experts.len());
        let mut slot_counts = vec![0usize; placement.n_slots()];
        for (pair, &e) in routing.experts.iter().enumerate() {
            let e = e as usize;
            if e >= n_logical {
                return Err(DispatchError::Input(format!(
                    "pair {pair} routes to expert {e} but the placement has {n_logical} experts"
                )));
            }
            let cands = candidates[e].get_or_insert_with(|| {
                let all = placement.replicas(e);
                let on_rank: Vec<u32> = all
                    .iter()
                    .copied()
                    .filter(|&p| p as usize / spr == src_rank)
                    .collect();
                if !on_rank.is_empty() {
                    return on_rank;
                }
                let on_node: Vec<u32> = all
                    .iter()
                    .copied()
                    .filter(|&p| p as usize / spr / ranks_per_node == node)
                    .collect();
                if !on_node.is_empty() {
                    return on_node;
                }
                all.to_vec()
            });
            let slot = cands[(seen[e] + src_rank) % cands.len()];
            seen[e] += 1;
            chosen_slot.push(slot);
            slot_counts[slot as usize] += 1;
        }
        // Counting sort by physical slot (= by rank, then local slot), stable in pair order.
        let mut offsets = vec![0usize; slot_counts.len() + 1];
        for (p, &c) in slot_counts.iter().enumerate() {
            offsets[p + 1] = offsets[p] + c;
        }
        let mut cursor = offsets.clone();
        let mut send_order = vec![0u32; chosen_slot.len()];
        for (pair, &slot) in chosen_slot.iter().enumerate() {
            send_order[cursor[slot as usize]] = pair as u32;
            cursor[slot as usize] += 1;
        }
        let rank_counts: Vec<usize> = slot_counts.chunks(spr).map(|c| c.iter().sum()).collect();
        let (row_counts, send_tokens, pair_rows) =
            dedup_tokens(&send_order, &rank_counts, routing.top_k);
        Ok(DispatchPlan {
            src_rank,
            n_ranks,
            slots_per_rank: spr,
            chosen_slot,
            rank_counts,
            slot_counts,
            send_order,
            row_counts,
            send_tokens,
            pair_rows,
        })
    }

    /// The source rank this plan was made for.
    pub fn src_rank(&self) -> usize {
        self.src_rank
    }

    /// Physical slot chosen for every pair `t * top_k + j`.
    pub fn chosen_slots(&self) -> &[u32] {
        &self.chosen_slot
    }

    /// Pairs sent to every destination rank (the All-to-All split sizes).
    pub fn rank_counts(&self) -> &[usize] {
        &self.rank_counts
    }

    /// Pairs sent to each local slot of `dest_rank`: the row the receiver sees for this source
    /// (empty if `dest_rank` is out of range).
    pub fn slot_counts(&self, dest_rank: usize) -> &[usize] {
        if dest_rank >= self.n_ranks {
            return &[];
        }
        &self.slot_counts[dest_rank * self.slots_per_rank..(dest_rank + 1) * self.slots_per_rank]
    }

    /// Pair indices in send order: grouped by destination rank, then local slot, then token.
    pub fn send_order(&self) -> &[u32] {
        &self.send_order
    }

    /// Distinct tokens sent to every destination rank (the row All-to-All's split sizes).
    pub fn row_counts(&self) -> &[usize] {
        &self.row_counts
    }

    /// The token of every row sent, grouped by destination rank, ascending within each.
    pub fn send_tokens(&self) -> &[u32] {
        &self.send_tokens
    }

    /// For every pair of [`Self::send_order`]: the index of its token among the rows sent to its
    /// destination (what the receiver needs to expand rows back into pairs).
    pub fn pair_rows(&self) -> &[u32] {
        &self.pair_rows
    }

    /// Bytes this rank's dispatch sends to other ranks: one row per (token, destination) and a
    /// u32 row index per pair (rows and pairs for its own rank stay local and are not counted).
    pub fn alltoall_bytes(&self, hidden: usize, bytes_per_elem: usize) -> u64 {
        let others = |counts: &[usize]| -> u64 {
            counts
                .iter()
                .enumerate()
                .filter(|&(r, _)| r != self.src_rank)
                .map(|(_, &c)| c as u64)
                .sum()
        };
        others(&self.row_counts) * (hidden * bytes_per_elem) as u64
            + others(&self.rank_counts) * std::mem::size_of::<u32>() as u64
    }
}

/// Per destination (the `rank_counts` segments of `send_order`): its distinct tokens, ascending,
/// and each pair's index among them.
fn dedup_tokens(
    send_order: &[u32],
    rank_counts: &[usize],
    top_k: usize,
) -> (Vec<usize>, Vec<u32>, Vec<u32>) {
    let mut row_counts = Vec::with_capacity(rank_counts.len());
    let mut send_tokens = Vec::new();
    let mut pair_rows = Vec::with_capacity(send_order.len());
    let mut start = 0;
    for &n in rank_counts {
        let pairs = &send_order[start..start + n];
        let mut tokens: Vec<u32> = pairs.iter().map(|&p| p / top_k as u32).collect();
        tokens.sort_unstable();
        tokens.dedup();
        for &p in pairs {
            let row = tokens
                .binary_search(&(p / top_k as u32))
                .expect("every pair's token is among its destination's tokens");
            pair_rows.push(row as u32);
        }
        row_counts.push(tokens.len());
        send_tokens.extend(tokens);
        start += n;
    }
    (row_counts, send_tokens, pair_rows)
}

/// The receive side: rows arrive concatenated by source rank, each source's chunk grouped by
/// local slot; this permutation groups them by local slot (then source, then arrival order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvPermutation {
    /// `perm[i]` = index in the received buffer of the `i`-th row in slot-grouped order
    /// (gather: `grouped[i] = received[perm[i]]`).
    pub perm: Vec<u32>,
    /// Rows of local slot `s` are `grouped[slot_offsets[s]..slot_offsets[s + 1]]`.
    pub slot_offsets: Vec<usize>,
}

impl RecvPermutation {
    /// Builds the permutation from `counts[src][local_slot]` (rows received from every source
    /// for every local slot; every row of the matrix must have the same length).
    pub fn new(counts: &[Vec<usize>]) -> Result<Self, DispatchError> {
        let n_local = counts.first().map_or(0, |r| r.len());
        if let Some(s) = counts.iter().position(|r| r.len() != n_local) {
            return Err(DispatchError::Input(format!(
                "source {s} reports {} local slots, source 0 reports {n_local}",
                counts[s].len()
            )));
        }
        let total: usize = counts.iter().flatten().sum();
        if u32::try_from(total).is_err() {
            return Err(DispatchError::Input(format!(
                "{total} received rows overflow u32"
            )));
        }
        let mut slot_offsets = vec![0usize; n_local + 1];
        for s in 0..n_local {
            slot_offsets[s + 1] = slot_offsets[s] + counts.iter().map(|r| r[s]).sum::<usize>();
        }
        let mut cursor = slot_offsets.clone();
        let mut perm = vec![0u32; total];
        let mut received = 0usize;
        for row in counts {
            for (s, &c) in row.iter().enumerate() {
                for k in 0..c {
                    perm[cursor[s] + k] = (received + k) as u32;
                }
                cursor[s] += c;
                received += c;
            }
        }
        Ok(RecvPermutation { perm, slot_offsets })
    }

    /// The inverse (scatter back for the return trip): `received[j] = grouped[inverse[j]]`.
    pub fn inverse(&self) -> Vec<u32> {
        let mut inv = vec![0u32; self.perm.len()];
        for (i, &j) in self.perm.iter().enumerate() {
            inv[j as usize] = i as u32;
        }
        inv
    }
}
