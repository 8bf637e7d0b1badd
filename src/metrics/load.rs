//! Where the tokens went: per-layer expert loads and per-rank loads, over the whole run and
//! over a window of recent steps, for the dashboard and the imbalance gauge.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Steps the "recent" loads cover.
pub const LOAD_WINDOW_STEPS: usize = 64;

/// A snapshot of the loads (what `/api/expert-load` returns).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpertLoad {
    /// Layers that route (MoE layers), in order.
    pub layers: Vec<usize>,
    /// `total[i][e]`: tokens layer `layers[i]` sent to expert e since start.
    pub total: Vec<Vec<u64>>,
    /// `recent[i][e]`: the same over the last [`LOAD_WINDOW_STEPS`] steps.
    pub recent: Vec<Vec<u64>>,
    /// `rank_total[i][r]`: (token, expert) pairs EP rank r computed in layer `layers[i]`.
    pub rank_total: Vec<Vec<u64>>,
    /// `rank_recent[i][r]`: the same over the recent window.
    pub rank_recent: Vec<Vec<u64>>,
    /// Max over mean rank load per layer over the recent window (1 = balanced).
    pub imbalance: Vec<f64>,
    /// Forward steps seen.
    pub steps: u64,
    /// `replicas[i][e]`: physical slots holding expert e of layer `layers[i]` (empty until the
    /// executor reports a placement; then hot experts show their extra replicas).
    pub replicas: Vec<Vec<u32>>,
}

#[derive(Debug, Default)]
struct Window {
    snapshot: ExpertLoad,
    /// Per step: (expert counts, rank counts) per MoE layer.
    history: VecDeque<(Vec<Vec<u64>>, Vec<Vec<u64>>)>,
}

/// The loads, updated by the engine thread after every step and read by the HTTP handlers.
#[derive(Debug, Default)]
pub struct LoadBoard {
    inner: Mutex<Window>,
}

fn add(into: &mut Vec<Vec<u64>>, from: &[Vec<u64>], sub: bool) {
    into.resize(from.len().max(into.len()), Vec::new());
    for (dst, src) in into.iter_mut().zip(from) {
        dst.resize(src.len().max(dst.len()), 0);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = if sub { d.saturating_sub(s) } else { *d + s };
        }
    }
}

/// Max over mean of `loads` (1 when all are equal or all are zero).
pub fn imbalance(loads: &[u64]) -> f64 {
    let total: u64 = loads.iter().sum();
    if total == 0 || loads.is_empty() {
        return 1.0;
    }
    let mean = total as f64 / loads.len() as f64;
    *loads.iter().max().unwrap_or(&0) as f64 / mean
}

impl LoadBoard {
    /// Adds one step's routing: `expert_counts[l]` and `rank_tokens[l]` per layer (empty for
    /// dense layers, which are skipped). Returns the recent imbalance per MoE layer.
    pub fn record(&self, expert_counts: &[Vec<u64>], rank_tokens: &[Vec<u64>]) -> Vec<f64> {
        let moe: Vec<usize> = (0..expert_counts.len())
            .filter(|&l| !expert_counts[l].is_empty())
            .collect();
        let experts: Vec<Vec<u64>> = moe.iter().map(|&l| expert_counts[l].clone()).collect();
        let ranks: Vec<Vec<u64>> = moe
            .iter()
            .map(|&l| rank_tokens.get(l).cloned().unwrap_or_default())
            .collect();
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut w.snapshot;
        s.layers = moe;
        s.steps += 1;
        add(&mut s.total, &experts, false);
        add(&mut s.recent, &experts, false);
        add(&mut s.rank_total, &ranks, false);
        add(&mut s.rank_recent, &ranks, false);
        w.history.push_back((experts, ranks));
        if w.history.len() > LOAD_WINDOW_STEPS {
            if let Some((e, r)) = w.history.pop_front() {
                add(&mut w.snapshot.recent, &e, true);
                add(&mut w.snapshot.rank_recent, &r, true);
            }
        }
        let s = &mut w.snapshot;
        s.imbalance = s.rank_recent.iter().map(|r| imbalance(r)).collect();
        s.imbalance.clone()
    }

    /// Records the executor's current replica counts (`layers[i]` holds `replicas[i]`).
    pub fn set_replicas(&self, layers: &[usize], replicas: &[Vec<u32>]) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let order = w.snapshot.layers.clone();
        w.snapshot.replicas = order
            .iter()
            .map(|l| {
                layers
                    .iter()
                    .position(|x| x == l)
                    .map(|i| replicas[i].clone())
                    .unwrap_or_default()
            })
            .collect();
    }

    /// A copy of the current loads.
    pub fn snapshot(&self) -> ExpertLoad {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_loads_forget_steps_past_the_window() {
        let board = LoadBoard::default();
        board.record(&[vec![3, 1], vec![]], &[vec![2, 2], vec![]]);
        for _ in 0..LOAD_WINDOW_STEPS {
            board.record(&[vec![0, 1], vec![]], &[vec![1, 0], vec![]]);
        }
        let s = board.snapshot();
        assert_eq!(s.layers, vec![0]);
        assert_eq!(s.total, vec![vec![3, 1 + LOAD_WINDOW_STEPS as u64]]);
        assert_eq!(s.recent, vec![vec![0, LOAD_WINDOW_STEPS as u64]]);
        assert_eq!(s.imbalance, vec![2.0]);
    }
}
