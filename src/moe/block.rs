//! The feed-forward block of one layer: routed experts (+ shared experts).
//!
//! out(x) = Σ_{e ∈ topk(x)} w_e(x) · E_e(x)  [+ σ(x·g) ·] S(x)

use super::{ExpertBank, ExpertNames, Router};
use crate::backend::cpu::activation::sigmoid;
use crate::checkpoint::WeightSource;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;
use switchyard_experts::expert_counts;

/// Always-on experts computed beside the routed ones.
#[derive(Debug, Clone)]
struct SharedExperts {
    mlp: ExpertBank,
    /// [1, hidden]: Qwen2-MoE scales the shared output by sigmoid(x · gate).
    gate: Option<Tensor>,
}

/// One layer's feed-forward block.
#[derive(Debug, Clone)]
pub struct MoeBlock {
    router: Router,
    experts: ExpertBank,
    shared: Option<SharedExperts>,
}

/// The block's output and the routing it did (for load statistics).
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// [T, hidden].
    pub hidden: Tensor,
    /// Tokens sent to each logical expert (empty for a dense block).
    pub expert_counts: Vec<u64>,
}

impl MoeBlock {
    /// Loads the feed-forward block of layer `layer`: sparse where the config says so, else a
    /// dense MLP as one expert.
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, layer: usize) -> Result<Self> {
        let prefix = format!("model.layers.{layer}");
        let h = cfg.hidden_size;
        let (Some(moe), true) = (&cfg.moe, cfg.is_sparse_layer(layer)) else {
            let mlp = ExpertBank::load_dense(src, &format!("{prefix}.mlp"), h, cfg.intermediate_size, cfg.mlp_bias)?;
            return Ok(Self { router: Router::Single, experts: mlp, shared: None });
        };
        let names = ExpertNames::of(cfg.architecture);
        let p = format!("{prefix}.{}", names.sparse);
        let router = Router::load(src, &p, moe.router, h, moe.correction_bias)?;
        let ids: Vec<usize> = (0..moe.n_experts).collect();
        let experts = ExpertBank::load_experts(src, &p, names.proj, &ids, h, moe.intermediate_size)?;
        let shared = match (&moe.shared, names.shared) {
            (Some(s), Some(name)) => Some(SharedExperts {
                mlp: ExpertBank::load_dense(src, &format!("{p}.{name}"), h, s.intermediate_size, false)?,
                gate: if s.gated { Some(src.load(&format!("{p}.shared_expert_gate.weight"), &[1, h])?) } else { None },
            }),
            _ => None,
        };
        Ok(Self { router, experts, shared })
    }

    /// Whether a router picks among several experts.
    pub fn is_sparse(&self) -> bool {
        matches!(self.router, Router::Learned { .. })
    }

    /// Bytes of the expert weights in their stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.experts.stored_bytes() + self.shared.as_ref().map_or(0, |s| s.mlp.stored_bytes())
    }

    /// route → permute → grouped SwiGLU → combine (+ shared).
    pub fn forward(&self, x: &Tensor) -> Result<MoeOutput> {
        let routing = self.router.route(x)?;
        let n = self.router.n_experts();
        let perm = ops::permute_by_expert(&routing.experts, n);
        let xs = ops::gather_rows(x, &perm.order, routing.top_k)?;
        let ys = self.experts.forward_grouped(&xs, &perm.offsets)?;
        let mut out = ops::combine(&ys, &perm.order, &routing.weights, routing.top_k)?;
        if let Some(shared) = &self.shared {
            let mut s = shared.mlp.forward_grouped(x, &[0, x.dims()[0]])?;
            if let Some(g) = &shared.gate {
                let gate = ops::linear(x, g, None)?;
                let h = x.dims()[1];
                for (row, gv) in s.as_mut_slice().chunks_exact_mut(h).zip(gate.as_slice()) {
                    let scale = sigmoid(*gv);
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            }
            ops::add_in_place(&mut out, &s);
        }
        let expert_counts = if self.is_sparse() { expert_counts(&routing, n) } else { Vec::new() };
        Ok(MoeOutput { hidden: out, expert_counts })
    }
}
