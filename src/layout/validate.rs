//! `Layout::validate`: every way a layout cannot run a model, found before anything starts.

use super::memory::{kv_bytes_per_token, stage_weights, Dtypes};
use super::{Layout, LayoutError};
use crate::config::{AttentionKind, ModelConfig};

/// Bytes in a GB (GPU memory is given in GB, 1e9 bytes).
pub(crate) const GB: f64 = 1e9;

/// "1, 2, 4 or 8".
pub(crate) fn or_list(v: &[usize]) -> String {
    match v {
        [] => "none".into(),
        [x] => x.to_string(),
        [init @ .., last] => {
            format!(
                "{} or {last}",
                init.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

/// tp values that split both the query heads and (evenly or by replication) the KV heads.
pub(crate) fn tp_fits(model: &ModelConfig) -> Vec<usize> {
    divisors(model.num_heads)
        .into_iter()
        .filter(|&t| kv_compatible(model, t))
        .collect()
}

fn kv_compatible(model: &ModelConfig, tp: usize) -> bool {
    match model.attention {
        AttentionKind::Gqa { .. } => {
            model.num_kv_heads.is_multiple_of(tp) || tp.is_multiple_of(model.num_kv_heads)
        }
        AttentionKind::Mla(_) => true,
    }
}

impl Layout {
    /// Checks the layout against `model`: sizes positive, tp dividing heads (and fitting KV
    /// heads) and ep, moe_tp dividing ep and the expert width, experts + redundant divisible by
    /// the expert groups, explicit placements, pp and the pipeline split against the layers, the
    /// world size against nodes x gpus_per_node, and — when GPU memory is known
    /// (`gpu_mem_gb`, else `[parallel] gpu_mem_gb`) — weights plus KV for one full batch against
    /// the memory a rank may use. The first problem found is returned.
    pub fn validate(
        &self,
        model: &ModelConfig,
        gpu_mem_gb: Option<f64>,
    ) -> Result<(), LayoutError> {
        self.check_ranges()?;
        self.check_attention(model)?;
        self.check_experts(model)?;
        self.check_pipeline(model)?;
        self.check_world()?;
        if let Some(gb) = gpu_mem_gb.or(self.parallel.gpu_mem_gb) {
            self.check_memory(model, gb, Dtypes::default())?;
        }
        Ok(())
    }

    fn check_ranges(&self) -> Result<(), LayoutError> {
        let p = &self.parallel;
        let s = &self.scheduler;
        let positive = [
            ("parallel.tp", p.tp),
            ("parallel.ep", p.ep),
            ("parallel.pp", p.pp),
            ("parallel.moe_tp", p.moe_tp.unwrap_or(1)),
            ("parallel.nodes", p.nodes.unwrap_or(1)),
            ("parallel.gpus_per_node", p.gpus_per_node.unwrap_or(1)),
            ("scheduler.max_num_seqs", s.max_num_seqs),
            ("scheduler.max_batched_tokens", s.max_batched_tokens),
            ("scheduler.kv_block_size", s.kv_block_size),
            ("experts.window", self.experts.window),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(LayoutError::Invalid {
                    field,
                    value: "0".into(),
                    why: "must be at least 1".into(),
                });
            }
        }
        if !(s.memory_fraction > 0.0 && s.memory_fraction <= 1.0) {
            return Err(LayoutError::Invalid {
                field: "scheduler.memory_fraction",
                value: s.memory_fraction.to_string(),
                why: "must be in (0, 1], e.g. 0.9".into(),
            });
        }
        if let Some(gb) = p.gpu_mem_gb.filter(|g| g.is_nan() || *g <= 0.0) {
            return Err(LayoutError::Invalid {
                field: "parallel.gpu_mem_gb",
                value: gb.to_string(),
                why: "must be positive".into(),
            });
        }
        Ok(())
    }

    fn check_attention(&self, model: &ModelConfig) -> Result<(), LayoutError> {
        let (tp, ep) = (self.parallel.tp, self.parallel.ep);
        if !model.num_heads.is_multiple_of(tp) {
            return Err(LayoutError::TpHeads {
                tp,
                heads: model.num_heads,
                fits: or_list(&tp_fits(model)),
            });
        }
        if !kv_compatible(model, tp) {
            return Err(LayoutError::TpKvHeads {
                tp,
                kv_heads: model.num_kv_heads,
                fits: or_list(&tp_fits(model)),
            });
        }
        if ep % tp != 0 {
            let fits: Vec<usize> = (1..=4).map(|k| k * tp).collect();
            return Err(LayoutError::TpEp {
                tp,
                ep,
                fits: or_list(&fits),
            });
        }
        Ok(())
    }

    fn check_experts(&self, model: &ModelConfig) -> Result<(), LayoutError> {
        let ep = self.parallel.ep;
        let moe_tp = self.moe_tp(model);
        let intermediate = model
            .moe
            .as_ref()
            .map_or(model.intermediate_size, |m| m.intermediate_size);
        if !ep.is_multiple_of(moe_tp) || !intermediate.is_multiple_of(moe_tp) {
            let fits: Vec<usize> = divisors(ep)
                .into_iter()
                .filter(|d| intermediate.is_multiple_of(*d))
                .collect();
            return Err(LayoutError::MoeTp {
                moe_tp,
                ep,
                intermediate,
                fits: or_list(&fits),
            });
        }
        let experts = Self::n_experts(model);
        let groups = self.expert_groups(model);
        let redundant = self.redundant(model);
        if !(experts + redundant).is_multiple_of(groups) {
            let first = (groups - experts % groups) % groups;
            let fits: Vec<usize> = (0..3).map(|k| first + k * groups).collect();
            return Err(LayoutError::ExpertsNotDivisible {
                experts,
                redundant,
                slots: experts + redundant,
                groups,
                ep,
                moe_tp,
                fits: or_list(&fits),
            });
        }
        self.placements(model).map(|_| ())
    }

    fn check_pipeline(&self, model: &ModelConfig) -> Result<(), LayoutError> {
        let (pp, layers) = (self.parallel.pp, model.num_layers);
        if pp > layers {
            return Err(LayoutError::PpLayers { pp, layers });
        }
        let Some(split) = &self.pipeline else {
            return Ok(());
        };
        let fits = crate::comm::even_counts(layers, pp);
        let sum: usize = split.iter().sum();
        let why = if split.len() != pp {
            format!("has {} stages but pp is {pp}", split.len())
        } else if sum != layers {
            format!("sums to {sum} but the model has {layers} layers")
        } else if split.contains(&0) {
            "gives a stage no layer".to_string()
        } else {
            return Ok(());
        };
        Err(LayoutError::PipelineSplit {
            split: split.clone(),
            why,
            fits,
        })
    }

    fn check_world(&self) -> Result<(), LayoutError> {
        let p = &self.parallel;
        if let (Some(nodes), Some(gpus_per_node)) = (p.nodes, p.gpus_per_node) {
            if nodes * gpus_per_node != self.world() {
                return Err(LayoutError::WorldSize {
                    ep: p.ep,
                    pp: p.pp,
                    world: self.world(),
                    nodes,
                    gpus_per_node,
                    gpus: nodes * gpus_per_node,
                });
            }
        }
        Ok(())
    }

    fn check_memory(
        &self,
        model: &ModelConfig,
        gpu_gb: f64,
        dt: Dtypes,
    ) -> Result<(), LayoutError> {
        let fraction = self.scheduler.memory_fraction;
        let usable = gpu_gb * GB * fraction;
        let min_tokens = self.scheduler.max_batched_tokens;
        for stage in 0..self.parallel.pp {
            let weights = stage_weights(model, self, stage, dt).total() as f64;
            let kv = (kv_bytes_per_token(model, self, stage, dt) * min_tokens as u64) as f64;
            if weights + kv > usable {
                let (ep, pp) = (self.parallel.ep, self.parallel.pp);
                return Err(LayoutError::Memory {
                    stage,
                    needed_gb: (weights + kv) / GB,
                    weights_gb: weights / GB,
                    kv_gb: kv / GB,
                    min_tokens,
                    usable_gb: usable / GB,
                    gpu_gb,
                    fraction,
                    min_gpu_gb: (weights + kv) / GB / fraction,
                    hint: format!(
                        "more ranks to share the weights: raise ep (now {ep}) or pp (now {pp})"
                    ),
                });
            }
        }
        Ok(())
    }
}
