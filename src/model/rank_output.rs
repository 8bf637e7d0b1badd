//! What each rank returns from a step, and how the driver assembles the step's output.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One rank's results of one step.
#[derive(Debug, Clone, Default)]
pub struct RankOutput {
    /// The rank's index in its stage.
    pub ep_rank: usize,
    /// Logit rows this rank computed: indices into the batch's `logit_rows`, and the rows (on
    /// the rank's device: a GPU rank's stay there for sampling on the device).
    pub logits: Option<(Vec<usize>, Tensor)>,
    /// Per sparse layer of this rank: tokens it routed to each logical expert.
    pub expert_counts: Vec<(usize, Vec<u64>)>,
    /// Per sparse layer of this rank: pairs its experts computed.
    pub rows_computed: Vec<(usize, u64)>,
    /// All-to-All bytes the dispatch plans predicted for this rank's sends.
    pub a2a_predicted_bytes: u64,
    /// All-to-All bytes the EP communicator counted.
    pub a2a_measured_bytes: u64,
    /// Logical-clock ticks at which the rank's input was ready and its work done.
    pub work_ticks: Option<(u64, u64)>,
}

impl RankOutput {
    /// Records a layer's routing statistics.
    pub fn record_layer(&mut self, layer: usize, counts: Vec<u64>, rows: u64, sparse: bool) {
        if sparse {
            self.expert_counts.push((layer, counts));
            self.rows_computed.push((layer, rows));
        }
    }

    /// Fills in counts that were read after the layers ran (the fused GPU blocks keep theirs on
    /// the device until the end of the step): replaces each recorded layer's counts.
    pub fn set_expert_counts(&mut self, late: Vec<(usize, Vec<u64>)>) {
        for (layer, counts) in late {
            match self.expert_counts.iter_mut().find(|(l, _)| *l == layer) {
                Some((_, c)) => *c = counts,
                None => self.expert_counts.push((layer, counts)),
            }
        }
    }
}

/// A step's output, assembled from every rank.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// [batch.logit_rows.len(), vocab], on the device of the rank that computed them when one
    /// rank computed every row in order (a GPU's logits stay on the GPU: samplers copy only what
    /// they need), else assembled on the host.
    pub logits: Tensor,
    /// Per layer, tokens routed to each logical expert (empty for dense layers).
    pub expert_counts: Vec<Vec<u64>>,
    /// Per layer, (token, expert) pairs each EP rank computed (empty for dense layers).
    pub rank_tokens: Vec<Vec<u64>>,
    /// Bytes the communicators moved between ranks during the step.
    pub comm_bytes: u64,
    /// All-to-All bytes the dispatch plans predicted (summed over ranks and layers).
    pub a2a_predicted_bytes: u64,
    /// All-to-All bytes the EP communicators counted.
    pub a2a_measured_bytes: u64,
    /// What the hot-expert replication did this step and its state after it (replicas per
    /// expert, rebalances, bytes migrated); None where there is no manager (one local rank, or a
    /// model without MoE layers).
    pub replication: Option<crate::replication::ReplicationStep>,
}

impl StepOutput {
    /// Sums every rank's statistics and places every logits row. When one rank computed all the
    /// rows in order (one rank, or the last stage's TP rank 0 without data parallelism) its
    /// tensor is the step's logits as it is, wherever it lives: no copy, no new buffer.
    pub fn assemble(
        mut outputs: Vec<RankOutput>,
        n_rows: usize,
        vocab: usize,
        num_layers: usize,
        ep: usize,
        comm_bytes: u64,
    ) -> Result<Self> {
        let whole = whole_logits(&mut outputs, n_rows, vocab);
        let mut logits = Vec::new();
        let mut filled = 0;
        let mut expert_counts: Vec<Vec<u64>> = vec![Vec::new(); num_layers];
        let mut rank_tokens: Vec<Vec<u64>> = vec![Vec::new(); num_layers];
        let (mut a2a_predicted_bytes, mut a2a_measured_bytes) = (0, 0);
        for out in outputs {
            a2a_predicted_bytes += out.a2a_predicted_bytes;
            a2a_measured_bytes += out.a2a_measured_bytes;
            if let Some((index, rows)) = out.logits {
                let rows = rows.into_cpu()?;
                logits.resize(n_rows * vocab, f32::NAN);
                for (k, &row) in index.iter().enumerate() {
                    logits[row * vocab..][..vocab].copy_from_slice(rows.row(k));
                    filled += 1;
                }
            }
            for (layer, counts) in out.expert_counts {
                let total = &mut expert_counts[layer];
                total.resize(counts.len(), 0);
                total.iter_mut().zip(&counts).for_each(|(t, c)| *t += c);
            }
            for (layer, rows) in out.rows_computed {
                rank_tokens[layer].resize(ep, 0);
                rank_tokens[layer][out.ep_rank] += rows;
            }
        }
        if whole.is_some() {
            filled = n_rows;
        }
        if filled != n_rows {
            return Err(Error::Ranks(format!(
                "ranks returned {filled} logit rows, the step needs {n_rows}"
            )));
        }
        let logits = match whole {
            Some(t) => t,
            None => Tensor::from_f32([n_rows, vocab], logits)?,
        };
        Ok(Self {
            logits,
            expert_counts,
            rank_tokens,
            comm_bytes,
            a2a_predicted_bytes,
            a2a_measured_bytes,
            replication: None,
        })
    }
}

/// Takes the one rank's logits tensor out when a single rank returned all `n_rows` rows in
/// order with the step's shape (then nothing is copied); None leaves every output as it was.
fn whole_logits(outputs: &mut [RankOutput], n_rows: usize, vocab: usize) -> Option<Tensor> {
    let mut with = outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.logits.is_some());
    let (k, o) = with.next()?;
    if with.next().is_some() {
        return None;
    }
    let (index, t) = o.logits.as_ref()?;
    let in_order = index.len() == n_rows && index.iter().enumerate().all(|(k, &r)| k == r);
    if !in_order || t.dims() != [n_rows, vocab] {
        return None;
    }
    outputs[k].logits.take().map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(ep_rank: usize, index: Vec<usize>, values: Vec<f32>, vocab: usize) -> RankOutput {
        let rows = index.len();
        RankOutput {
            ep_rank,
            logits: Some((index, Tensor::from_f32([rows, vocab], values).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn one_rank_in_order_is_kept_and_others_are_placed() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let whole = StepOutput::assemble(vec![rank(0, vec![0, 1, 2], v.clone(), 2)], 3, 2, 1, 1, 0)
            .unwrap();
        assert_eq!(whole.logits.as_slice(), &v[..]);
        // Rows out of order, split over two ranks: placed by index.
        let a = rank(0, vec![2], vec![4.0, 5.0], 2);
        let b = rank(1, vec![1, 0], vec![2.0, 3.0, 0.0, 1.0], 2);
        let placed = StepOutput::assemble(vec![b, a], 3, 2, 1, 2, 0).unwrap();
        assert_eq!(placed.logits.as_slice(), &v[..]);
        // One rank, out of order: placed too.
        let c = rank(0, vec![1, 0], vec![2.0, 3.0, 0.0, 1.0], 2);
        let out = StepOutput::assemble(vec![c], 2, 2, 1, 1, 0).unwrap();
        assert_eq!(out.logits.as_slice(), &v[..4]);
        let short = rank(0, vec![0], vec![0.0, 1.0], 2);
        assert!(StepOutput::assemble(vec![short], 2, 2, 1, 1, 0).is_err());
    }
}
