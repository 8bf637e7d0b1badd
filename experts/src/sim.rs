//! The placement simulator behind `switchyard rebalance-sim`: synthetic Zipf loads or a routing
//! trace in, imbalance before/after rebalancing, slots moved and time taken out.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::placement::{Placement, PlacementError};
use crate::rebalance::{rebalance, RebalanceError, RebalanceOptions, Topology};

/// Errors of the simulator and the trace parser.
#[derive(Debug, Error)]
pub enum SimError {
    /// The layout cannot work; the message names the number.
    #[error("invalid simulation: {0}")]
    Input(String),
    /// A trace line is not valid.
    #[error("trace line {line}: {msg}")]
    Trace {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Building the initial placement failed.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The rebalancer refused.
    #[error(transparent)]
    Rebalance(#[from] RebalanceError),
}

/// SplitMix64: a tiny, well-mixed deterministic generator (no dependency, same on every platform).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Zipf(`s`) loads in expert order: expert `i` carries `1 / (i + 1)^s`.
pub fn zipf_weights(experts: usize, s: f64) -> Vec<f64> {
    (0..experts)
        .map(|i| 1.0 / ((i + 1) as f64).powf(s))
        .collect()
}

/// `layers` layers of Zipf(`s`) loads, each layer's experts permuted by a generator seeded with
/// `seed`, so the hot experts differ per layer. Deterministic.
pub fn zipf_loads(experts: usize, s: f64, layers: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = SplitMix64::new(seed);
    let base = zipf_weights(experts, s);
    (0..layers)
        .map(|_| {
            let mut perm: Vec<usize> = (0..experts).collect();
            rng.shuffle(&mut perm);
            let mut l = vec![0.0; experts];
            for (i, &e) in perm.iter().enumerate() {
                l[e] = base[i];
            }
            l
        })
        .collect()
}

/// What [`simulate`] measured; serialisable for `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// MoE layers.
    pub layers: usize,
    /// Logical experts per layer.
    pub experts: usize,
    /// EP ranks.
    pub ranks: usize,
    /// Nodes.
    pub nodes: usize,
    /// Redundant (replica) slots per layer.
    pub redundant: usize,
    /// Physical slots per rank (empty ones included).
    pub slots_per_rank: usize,
    /// Per layer, max-over-mean rank load of the initial [`Placement::padded`] placement.
    pub imbalance_before: Vec<f64>,
    /// Per layer, after [`rebalance`].
    pub imbalance_after: Vec<f64>,
    /// Max of `imbalance_before`.
    pub before_max: f64,
    /// Mean of `imbalance_before`.
    pub before_mean: f64,
    /// Max of `imbalance_after`.
    pub after_max: f64,
    /// Mean of `imbalance_after`.
    pub after_mean: f64,
    /// Slots, all layers, whose expert changed.
    pub moved_slots: usize,
    /// Wall time of the rebalance call, milliseconds.
    pub elapsed_ms: f64,
}

fn max_mean(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max, v.iter().sum::<f64>() / v.len() as f64)
}

/// Rebalances `loads[layer][expert]` from the default padded placement over `ranks` ranks in
/// `nodes` nodes with `redundant` replica slots, and reports the effect.
pub fn simulate(
    loads: &[Vec<f64>],
    ranks: usize,
    nodes: usize,
    redundant: usize,
) -> Result<SimReport, SimError> {
    let experts = loads.first().map_or(0, |l| l.len());
    if let Some(l) = loads.iter().position(|l| l.len() != experts) {
        return Err(SimError::Input(format!(
            "layer {l} has {} experts, layer 0 has {experts}",
            loads[l].len()
        )));
    }
    if nodes == 0 || !ranks.is_multiple_of(nodes) {
        return Err(SimError::Input(format!(
            "nodes {nodes} does not divide ranks {ranks}"
        )));
    }
    let topology = Topology {
        n_nodes: nodes,
        ranks_per_node: ranks / nodes,
    };
    let initial = Placement::padded(experts, ranks, redundant)?;
    let current = vec![initial.clone(); loads.len()];
    let start = Instant::now();
    let out = rebalance(loads, &current, topology, RebalanceOptions::default())?;
    let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
    let (before_max, before_mean) = max_mean(&out.imbalance_before);
    let (after_max, after_mean) = max_mean(&out.imbalance_after);
    Ok(SimReport {
        layers: loads.len(),
        experts,
        ranks,
        nodes,
        redundant,
        slots_per_rank: initial.slots_per_rank(),
        imbalance_before: out.imbalance_before,
        imbalance_after: out.imbalance_after,
        before_max,
        before_mean,
        after_max,
        after_mean,
        moved_slots: out.moved_slots,
        elapsed_ms,
    })
}

/// One line of a routing trace: `{"step": n, "layers": [[count per expert], ...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Step number.
    pub step: u64,
    /// Tokens per expert, per MoE layer.
    pub layers: Vec<Vec<u64>>,
}

/// Parses a JSON-lines routing trace (blank lines skipped); all steps must agree on the shape.
pub fn parse_trace_steps(text: &str) -> Result<Vec<TraceStep>, SimError> {
    let mut steps: Vec<TraceStep> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let step: TraceStep = serde_json::from_str(line).map_err(|e| SimError::Trace {
            line: line_no,
            msg: e.to_string(),
        })?;
        if let Some(first) = steps.first() {
            if step.layers.len() != first.layers.len() {
                return Err(SimError::Trace {
                    line: line_no,
                    msg: format!(
                        "{} layers, earlier lines have {}",
                        step.layers.len(),
                        first.layers.len()
                    ),
                });
            }
            if let Some(l) = step
                .layers
                .iter()
                .zip(&first.layers)
                .position(|(a, b)| a.len() != b.len())
            {
                return Err(SimError::Trace {
                    line: line_no,
                    msg: format!(
                        "layer {l} has {} experts, earlier lines have {}",
                        step.layers[l].len(),
                        first.layers[l].len()
                    ),
                });
            }
        }
        steps.push(step);
    }
    Ok(steps)
}

/// Parses a trace and sums its steps into `loads[layer][expert]` (empty for an empty trace).
pub fn parse_trace(text: &str) -> Result<Vec<Vec<f64>>, SimError> {
    let steps = parse_trace_steps(text)?;
    let Some(first) = steps.first() else {
        return Ok(Vec::new());
    };
    let mut sums: Vec<Vec<u64>> = first.layers.iter().map(|l| vec![0; l.len()]).collect();
    for s in &steps {
        for (acc, l) in sums.iter_mut().zip(&s.layers) {
            for (a, &c) in acc.iter_mut().zip(l) {
                *a = a.saturating_add(c);
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|l| l.into_iter().map(|c| c as f64).collect())
        .collect())
}
