//! Rebalancing: from per-expert loads, choose how many replicas every logical expert gets and
//! which rank holds each, so that the heaviest rank carries as little as possible.
//!
//! The algorithm is DeepSeek's EPLB (github.com/deepseek-ai/EPLB): per layer, replicate
//! (each spare slot to the expert with the highest load per replica) and pack (heaviest replica
//! first onto the least-loaded rank with a free slot). With several nodes it is hierarchical:
//! expert groups are packed onto nodes first (balanced, equal group counts), then replication
//! and packing run inside every node, so all replicas of a group stay in one node. Beyond EPLB:
//! - ranks may have spare capacity (empty slots), and a rank avoids two replicas of one expert;
//! - a local search then moves or swaps single replicas while that lowers the heaviest rank;
//! - stickiness: whole nodes, then ranks inside nodes, are relabelled to maximise the overlap
//!   with the current placement (maximum-weight matching), and inside a rank an expert keeps its
//!   slot. These choices never change a rank's load. Only slots whose expert changes must load
//!   weights: that is `moved_slots`. The balancing itself ignores the current placement, so the
//!   same loads give the same answer and a second call moves nothing;
//! - a layer whose new placement is not strictly better than its current one keeps the current.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::assign::stick;
use crate::load::{imbalance, LoadError};
use crate::packing::{pack, replicate, Item};
use crate::placement::{Placement, PlacementError, EMPTY_SLOT};

/// Ranks grouped into nodes (the fast intra-node network is what hierarchy exploits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Number of nodes.
    pub n_nodes: usize,
    /// Ranks per node; rank `r` is on node `r / ranks_per_node`.
    pub ranks_per_node: usize,
}

impl Topology {
    /// Total ranks.
    pub fn n_ranks(&self) -> usize {
        self.n_nodes * self.ranks_per_node
    }
}

/// Knobs of [`rebalance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceOptions {
    /// Contiguous expert groups kept together on one node (DeepSeek's `n_group`, worth it with
    /// node-limited routing). Hierarchical balancing runs when this is given, there are several
    /// nodes and the group count is a multiple of the node count; otherwise (the default) the
    /// balancing is global: replicas of a hot expert may then spread over every node, which
    /// balances skewed loads far better (a node's spare slots alone cannot absorb a hot expert).
    pub expert_groups: Option<usize>,
}

/// The result of [`rebalance`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rebalanced {
    /// The new placement of every layer (same shape as the current one).
    pub placements: Vec<Placement>,
    /// Physical slots, all layers, that now hold a different (non-empty) expert.
    pub moved_slots: usize,
    /// The same per layer.
    pub moved_per_layer: Vec<usize>,
    /// Max-over-mean rank load of the current placements.
    pub imbalance_before: Vec<f64>,
    /// Max-over-mean rank load of the new placements.
    pub imbalance_after: Vec<f64>,
}

/// Errors of [`rebalance`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RebalanceError {
    /// Inputs disagree or cannot work; the message names the number.
    #[error("cannot rebalance: {0}")]
    Input(String),
    /// A load vector does not fit its placement.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Building a placement failed.
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// Rebalances every layer: `loads[layer][logical expert]` (any non-negative unit, e.g. tokens)
/// and `current[layer]`. Every placement keeps its number of ranks, slots and used slots.
pub fn rebalance(
    loads: &[Vec<f64>],
    current: &[Placement],
    topology: Topology,
    options: RebalanceOptions,
) -> Result<Rebalanced, RebalanceError> {
    if loads.len() != current.len() {
        return Err(RebalanceError::Input(format!(
            "{} load layers for {} placements",
            loads.len(),
            current.len()
        )));
    }
    // Layers are independent: spread them over scoped threads; results keep layer order, so
    // the answer does not depend on the thread count.
    let n_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(current.len())
        .max(1);
    let chunk = current.len().div_ceil(n_threads).max(1);
    let results: Vec<Result<LayerResult, RebalanceError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = loads
            .chunks(chunk)
            .zip(current.chunks(chunk))
            .enumerate()
            .map(|(c, (ls, cs))| {
                scope.spawn(move || {
                    ls.iter()
                        .zip(cs)
                        .enumerate()
                        .map(|(k, (l, cur))| layer_result(c * chunk + k, l, cur, topology, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(RebalanceError::Input(
                        "a rebalancing thread panicked".into(),
                    ))]
                })
            })
            .collect()
    });
    let mut out = Rebalanced {
        placements: Vec::with_capacity(current.len()),
        moved_slots: 0,
        moved_per_layer: Vec::with_capacity(current.len()),
        imbalance_before: Vec::with_capacity(current.len()),
        imbalance_after: Vec::with_capacity(current.len()),
    };
    for r in results {
        let r = r?;
        out.moved_slots += r.moved;
        out.moved_per_layer.push(r.moved);
        out.imbalance_before.push(r.before);
        out.imbalance_after.push(r.after);
        out.placements.push(r.placement);
    }
    Ok(out)
}

struct LayerResult {
    placement: Placement,
    moved: usize,
    before: f64,
    after: f64,
}

fn layer_result(
    layer: usize,
    loads: &[f64],
    cur: &Placement,
    topology: Topology,
    options: RebalanceOptions,
) -> Result<LayerResult, RebalanceError> {
    let placement = rebalance_layer(loads, cur, topology, options)
        .map_err(|e| RebalanceError::Input(format!("layer {layer}: {e}")))?;
    Ok(LayerResult {
        moved: moved_slots(cur, &placement),
        before: imbalance(loads, cur)?,
        after: imbalance(loads, &placement)?,
        placement,
    })
}

/// Slots of `new` that hold an expert different from `old`'s (empty slots load nothing).
pub fn moved_slots(old: &Placement, new: &Placement) -> usize {
    old.slots()
        .iter()
        .zip(new.slots())
        .filter(|(o, n)| **n != EMPTY_SLOT && o != n)
        .count()
}

/// Rebalances one layer.
pub fn rebalance_layer(
    loads: &[f64],
    current: &Placement,
    topology: Topology,
    options: RebalanceOptions,
) -> Result<Placement, RebalanceError> {
    let n_ranks = current.n_ranks();
    let n_logical = current.n_logical();
    if topology.n_nodes == 0 || topology.ranks_per_node == 0 || topology.n_ranks() != n_ranks {
        return Err(RebalanceError::Input(format!(
            "topology {} nodes x {} ranks per node does not match ep {n_ranks}",
            topology.n_nodes, topology.ranks_per_node
        )));
    }
    if loads.len() != n_logical {
        return Err(RebalanceError::Input(format!(
            "{} loads for {n_logical} logical experts",
            loads.len()
        )));
    }
    if let Some(e) = loads.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
        return Err(RebalanceError::Input(format!(
            "load of expert {e} is {}",
            loads[e]
        )));
    }
    let groups = options.expert_groups.unwrap_or(1);
    if groups == 0 || !n_logical.is_multiple_of(groups) {
        return Err(RebalanceError::Input(format!(
            "expert groups {groups} do not divide {n_logical} experts"
        )));
    }
    let n_used = current.n_used_slots();
    let spr = current.slots_per_rank();
    let hierarchical = options.expert_groups.is_some()
        && topology.n_nodes > 1
        && groups.is_multiple_of(topology.n_nodes);
    // Experts of every rank, rank label as produced by the balancer.
    let rank_sets: Vec<Vec<u32>> = if hierarchical {
        hierarchical_packs(loads, groups, n_used, spr, topology)
    } else {
        node_packs(
            loads,
            &(0..n_logical as u32).collect::<Vec<_>>(),
            n_used,
            n_ranks,
            spr,
        )
    };
    let node_size = if hierarchical {
        topology.ranks_per_node
    } else {
        n_ranks
    };
    let new = stick(rank_sets, current, node_size)?;
    // The cheapest move is none: keep the current placement unless the new one is strictly
    // better (e.g. uniform loads, where any packing ties with the current one).
    if imbalance(loads, &new)? < imbalance(loads, current)? * (1.0 - 1e-9) {
        Ok(new)
    } else {
        Ok(current.clone())
    }
}

/// Replication and packing of `experts` with `n_physical` replicas over `n_ranks` ranks.
fn node_packs(
    loads: &[f64],
    experts: &[u32],
    n_physical: usize,
    n_ranks: usize,
    spr: usize,
) -> Vec<Vec<u32>> {
    let local: Vec<f64> = experts.iter().map(|&e| loads[e as usize]).collect();
    let counts = replicate(&local, n_physical);
    let mut items = Vec::with_capacity(n_physical);
    for (k, &e) in experts.iter().enumerate() {
        for _ in 0..counts[k] {
            items.push(Item {
                expert: e,
                weight: local[k] / counts[k] as f64,
            });
        }
    }
    pack(items, n_ranks, spr)
        .into_iter()
        .map(|p| {
            let mut v: Vec<u32> = p.into_iter().map(|i| i.expert).collect();
            v.sort_unstable();
            v
        })
        .collect()
}

/// EPLB's hierarchical policy: groups onto nodes (equal group counts), then per node.
fn hierarchical_packs(
    loads: &[f64],
    groups: usize,
    n_used: usize,
    spr: usize,
    topo: Topology,
) -> Vec<Vec<u32>> {
    let group_size = loads.len() / groups;
    let group_items: Vec<Item> = (0..groups)
        .map(|g| Item {
            expert: g as u32,
            weight: loads[g * group_size..(g + 1) * group_size].iter().sum(),
        })
        .collect();
    // Exactly groups / n_nodes groups per node (EPLB's balanced_packing), refined by swaps only.
    let node_groups = pack(group_items, topo.n_nodes, groups / topo.n_nodes);
    let node_load: Vec<f64> = node_groups
        .iter()
        .map(|p| p.iter().map(|i| i.weight).sum())
        .collect();
    // Beyond EPLB (which splits slots evenly): every spare slot goes to the node with the
    // highest load per slot that still has room, like `replicate` one level up.
    let per_node = loads.len() / topo.n_nodes;
    let room = topo.ranks_per_node * spr;
    let mut node_physical = vec![per_node; topo.n_nodes];
    for _ in loads.len()..n_used {
        let mut best: Option<usize> = None;
        for n in 0..topo.n_nodes {
            if node_physical[n] >= room {
                continue;
            }
            best = match best {
                Some(b)
                    if node_load[n] * node_physical[b] as f64
                        <= node_load[b] * node_physical[n] as f64 =>
                {
                    Some(b)
                }
                _ => Some(n),
            };
        }
        match best {
            Some(n) => node_physical[n] += 1,
            None => break,
        }
    }
    let mut ranks = Vec::with_capacity(topo.n_ranks());
    for (n, gs) in node_groups.iter().enumerate() {
        let mut experts: Vec<u32> = gs
            .iter()
            .flat_map(|g| {
                let g = g.expert as usize;
                (g * group_size..(g + 1) * group_size).map(|e| e as u32)
            })
            .collect();
        experts.sort_unstable();
        ranks.extend(node_packs(
            loads,
            &experts,
            node_physical[n],
            topo.ranks_per_node,
            spr,
        ));
    }
    ranks
}
