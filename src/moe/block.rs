//! The feed-forward block of one layer: routed experts (+ shared experts).
//!
//! out(x) = Σ_{e ∈ topk(x)} w_e(x) · E_e(x)  [+ σ(x·g) ·] S(x)

use super::dispatch::{dispatch_combine, DispatchStats, EpRank};
use super::{ExpertBank, ExpertNames, Router};
use crate::backend::{FusedMoe, MoeScratch};
use crate::checkpoint::WeightSource;
use crate::comm::Communicator;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::ops;
use crate::parallel::Shard;
use crate::tensor::Tensor;
use switchyard_experts::{expert_counts, Placement};

/// Always-on experts computed beside the routed ones.
#[derive(Debug, Clone)]
struct SharedExperts {
    mlp: ExpertBank,
    /// [1, hidden]: Qwen2-MoE scales the shared output by sigmoid(x · gate).
    gate: Option<Tensor>,
}

/// One layer's feed-forward block: the router and shared experts replicated on every rank,
/// the routed experts of this rank's slots.
#[derive(Debug, Clone)]
pub struct MoeBlock {
    router: Router,
    experts: ExpertBank,
    shared: Option<SharedExperts>,
    /// Where the routed experts live (None: a dense block, computed locally).
    placement: Placement,
    ep_rank: usize,
    ranks_per_node: usize,
    /// The model layer this block belongs to.
    layer: usize,
    /// The block on the fused GPU MoE kernels, where it runs on a GPU, holds every expert in
    /// order and fits the kernels (see [`MoeBlock::to_device`]).
    fused: Option<FusedMoe>,
}

/// The block's output and the routing it did (for load statistics).
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// [T, hidden].
    pub hidden: Tensor,
    /// Tokens this rank routed to each logical expert (empty for a dense block, and for a fused
    /// GPU block, whose counts stay on the device until [`MoeScratch::take_counts`]).
    pub expert_counts: Vec<u64>,
    /// (token, expert) pairs this rank's experts computed, from every source rank.
    pub rows_computed: u64,
    /// The dispatch's byte counts (predicted by the plan, measured by the communicator).
    pub dispatch: DispatchStats,
}

impl MoeBlock {
    /// Loads this rank's part of the feed-forward block of layer `layer`: sparse where the
    /// config says so (the experts of this rank's slots in the shard's placement), else a dense
    /// MLP as the experts of its intermediate-dim parts (one part: the whole MLP, replicated).
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        layer: usize,
        shard: &Shard,
    ) -> Result<Self> {
        let prefix = format!("model.layers.{layer}");
        let h = cfg.hidden_size;
        let (Some(moe), Some(placement)) = (&cfg.moe, shard.placements[layer].as_ref()) else {
            let placement = &shard.dense_placement;
            let parts = placement.n_logical();
            let slots = placement.rank_experts(shard.ep_rank);
            let mlp = ExpertBank::load_dense_parts(
                src,
                &format!("{prefix}.mlp"),
                h,
                cfg.intermediate_size,
                cfg.mlp_bias,
                parts,
                slots,
            )?;
            return Ok(Self {
                router: Router::Dense { parts },
                experts: mlp,
                shared: None,
                placement: placement.clone(),
                ep_rank: shard.ep_rank,
                ranks_per_node: shard.ranks_per_node,
                layer,
                fused: None,
            });
        };
        let names = ExpertNames::of(cfg.architecture);
        let p = format!("{prefix}.{}", names.sparse);
        let router = Router::load(src, &p, moe.router, h, moe.correction_bias)?;
        let slots = placement.rank_experts(shard.ep_rank);
        let experts = ExpertBank::load_experts(
            src,
            &p,
            names.proj,
            slots,
            moe.n_experts,
            h,
            moe.intermediate_size,
        )?;
        let shared = match (&moe.shared, names.shared) {
            (Some(s), Some(name)) => Some(SharedExperts {
                mlp: ExpertBank::load_dense(
                    src,
                    &format!("{p}.{name}"),
                    h,
                    s.intermediate_size,
                    false,
                )?,
                gate: if s.gated {
                    Some(src.load(&format!("{p}.shared_expert_gate.weight"), &[1, h])?)
                } else {
                    None
                },
            }),
            _ => None,
        };
        Ok(Self {
            router,
            experts,
            shared,
            placement: placement.clone(),
            ep_rank: shard.ep_rank,
            ranks_per_node: shard.ranks_per_node,
            layer,
            fused: None,
        })
    }

    /// Whether a router picks among several experts.
    pub fn is_sparse(&self) -> bool {
        matches!(self.router, Router::Learned { .. })
    }

    /// Where the routed experts live (None for a dense block).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The model layer this block belongs to.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// This rank's index in the EP group.
    pub fn ep_rank(&self) -> usize {
        self.ep_rank
    }

    /// The routed experts of this rank's slots.
    pub fn experts(&self) -> &ExpertBank {
        &self.experts
    }

    /// Switches to a new placement of a sparse block at a step boundary (a rebalance): writes
    /// the staged weights of this rank's changed slots (`(local slot, weights)`, laid out as
    /// [`ExpertBank::slot_weights`]) into the bank and routes by `placement` from now on. Every
    /// rank of the EP group must switch before the same step. Checks everything before changing
    /// anything.
    pub fn switch_placement(
        &mut self,
        placement: Placement,
        slots: Vec<(usize, Vec<f32>)>,
    ) -> Result<()> {
        if !self.is_sparse() {
            return Err(crate::Error::Ranks(
                "a dense block has no expert placement to switch".into(),
            ));
        }
        let old = &self.placement;
        let same_shape = old.n_logical() == placement.n_logical()
            && old.n_ranks() == placement.n_ranks()
            && old.slots_per_rank() == placement.slots_per_rank();
        if !same_shape || !self.is_sparse() {
            return Err(crate::Error::Ranks(format!(
                "a new placement must keep {} experts over {} ranks of {} slots",
                old.n_logical(),
                old.n_ranks(),
                old.slots_per_rank()
            )));
        }
        let (n, len) = (self.experts.len(), self.experts.slot_len());
        if let Some((slot, w)) = slots.iter().find(|(slot, w)| *slot >= n || w.len() != len) {
            return Err(crate::Error::Shape(format!(
                "{} weights for local slot {slot}; the bank has {n} slots of {len}",
                w.len()
            )));
        }
        for (slot, w) in &slots {
            self.experts.set_slot_weights(*slot, w)?;
        }
        self.placement = placement;
        // The fused kernels index experts by slot: they hold only for the in-place placement.
        if !self.in_place() {
            self.fused = None;
        }
        Ok(())
    }

    /// Moves the router, the experts and the shared experts to `device` (matrices as bf16 on a GPU,
    /// the router in f32) and, on a GPU, sets the block up for the fused MoE kernels where it can.
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        self.router.to_device(device)?;
        self.experts.to_device(device)?;
        if let Some(s) = &mut self.shared {
            s.mlp.to_device(device)?;
            if let Some(g) = &mut s.gate {
                *g = g.to_device_bf16(device)?;
            }
        }
        self.fuse(device)
    }

    /// Whether this rank holds every expert, slot i holding expert i (one EP rank, no replicas).
    fn in_place(&self) -> bool {
        let p = &self.placement;
        p.n_ranks() == 1
            && p.rank_experts(0)
                .iter()
                .enumerate()
                .all(|(i, &e)| e as usize == i)
    }

    /// The fused GPU form of a sparse block that holds its experts in place, has no expert
    /// biases and whose widths fit the kernels (`MoeShape::validate`); other blocks keep the
    /// general path.
    #[cfg(feature = "cuda")]
    fn fuse(&mut self, device: &crate::backend::Device) -> Result<()> {
        use crate::backend::cuda::FusedParts;
        self.fused = None;
        let Router::Learned {
            gate,
            correction_bias,
            config,
        } = &self.router
        else {
            return Ok(());
        };
        let shared_biased = self.shared.as_ref().is_some_and(|s| s.mlp.has_biases());
        if !device.is_cuda() || !self.in_place() || self.experts.has_biases() || shared_biased {
            return Ok(());
        }
        self.fused = FusedMoe::new(FusedParts {
            layer: self.layer,
            router: config,
            gate,
            bias: correction_bias.as_deref(),
            experts: self.experts.stacked(),
            shared: self.shared.as_ref().map(|s| {
                let (gate_up, down) = s.mlp.stacked();
                (gate_up, down, s.gate.as_ref())
            }),
        })?;
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    fn fuse(&mut self, _device: &crate::backend::Device) -> Result<()> {
        Ok(())
    }

    /// Whether the block runs on the fused GPU MoE kernels.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Bytes of the expert weights in their stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.experts.stored_bytes() + self.shared.as_ref().map_or(0, |s| s.mlp.stored_bytes())
    }

    /// route → dispatch to the experts' ranks → grouped SwiGLU → combine (+ shared). Every rank
    /// of the EP group calls this together (with its own tokens, possibly none). A fused GPU
    /// block runs entirely on the device and leaves its expert counts in `scratch`.
    pub fn forward(
        &self,
        x: &Tensor,
        ep: &dyn Communicator,
        scratch: Option<&mut MoeScratch>,
    ) -> Result<MoeOutput> {
        if let (Some(fused), Some(scratch)) = (&self.fused, scratch) {
            let rows = (x.dims()[0] * self.router.top_k()) as u64;
            return Ok(MoeOutput {
                hidden: fused.forward(x, scratch)?,
                expert_counts: Vec::new(),
                rows_computed: rows,
                dispatch: DispatchStats {
                    rows_computed: rows,
                    ..DispatchStats::default()
                },
            });
        }
        let routing = self.router.route(x)?;
        let n = self.router.n_experts();
        let placement = &self.placement;
        // One EP rank whose slot i holds expert i runs its experts in place on a GPU; every
        // other placement dispatches (on the device for GPU ranks; routing stays on the host).
        let (mut out, dispatch) = if x.is_cuda() && self.in_place() {
            let perm = ops::permute_by_expert(&routing.experts, n);
            let xs = ops::gather_rows(x, &perm.order, routing.top_k)?;
            let ys = self.experts.forward_grouped(&xs, &perm.offsets)?;
            let stats = DispatchStats {
                rows_computed: perm.order.len() as u64,
                ..DispatchStats::default()
            };
            (
                ops::combine(&ys, &perm.order, &routing.weights, routing.top_k)?,
                stats,
            )
        } else {
            let rank = EpRank {
                placement,
                rank: self.ep_rank,
                ranks_per_node: self.ranks_per_node,
            };
            dispatch_combine(x, &routing, rank, &self.experts, ep)?
        };
        if let Some(shared) = &self.shared {
            let mut s = shared.mlp.forward_grouped(x, &[0, x.dims()[0]])?;
            if let Some(g) = &shared.gate {
                let gate = ops::linear(x, g, None)?;
                ops::sigmoid_scale_rows(&mut s, &gate)?;
            }
            ops::add_in_place(&mut out, &s)?;
        }
        let expert_counts = if self.is_sparse() {
            expert_counts(&routing, n)
        } else {
            Vec::new()
        };
        Ok(MoeOutput {
            hidden: out,
            expert_counts,
            rows_computed: dispatch.rows_computed,
            dispatch,
        })
    }
}
