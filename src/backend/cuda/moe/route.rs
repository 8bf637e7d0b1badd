//! Routing and the sort by expert on the GPU (kernels/route.cu, kernels/permute.cu): the routing
//! variant as the kernels' arguments ([`RouterParams`]), and [`MoeWorkspace::route`],
//! [`MoeWorkspace::permute`] and, for decode batches in one launch,
//! [`MoeWorkspace::route_and_permute`].

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use switchyard_experts::{GroupMask, RoutedScaling, RouterConfig, ScoreFunction, TopkMethod};

use super::{addr, GemmPath, MoeWorkspace, CHUNK, MAX_EXPERTS};
use crate::backend::cuda::dev_err;
use crate::backend::cuda::device::{CudaDevice, DeviceBuffer, Kernel};
use crate::backend::cuda::ops::raw;
use crate::backend::cuda::overlap::{self, Args};
use crate::error::{Error, Result};

/// The launch of the one-block kernels: 1024 threads, a thread per expert.
const ONE_BLOCK: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (1024, 1, 1),
    shared_mem_bytes: 0,
};

/// Most experts a token the routing kernel picks (one lane of a warp keeps each pick).
pub const MAX_TOP_K: usize = 32;
/// Most tokens and experts of the one-launch routing and permutation (`route_permute_one`: a
/// warp per token, each lane holding 8 experts' scores).
const FUSED_TOKENS: usize = 32;
const FUSED_EXPERTS: usize = 256;

/// The routing variant as the kernel's scalar arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterParams {
    args: RouteArgs,
}

/// `RouteArgs` of kernels/route.cu, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
struct RouteArgs {
    n_experts: i32,
    top_k: i32,
    score_fn: i32,
    method: i32,
    n_group: i32,
    topk_group: i32,
    group_mask: i32,
    normalize: i32,
    eps: f32,
    scale: f32,
}

// SAFETY: plain-old-data of i32 and f32 fields, laid out as the C struct the kernels declare.
unsafe impl DeviceRepr for RouteArgs {}

impl RouterParams {
    /// Converts a validated router configuration.
    pub fn new(cfg: &RouterConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.n_experts > MAX_EXPERTS {
            return Err(Error::Shape(format!(
                "{} experts; the routing kernel takes at most {MAX_EXPERTS}",
                cfg.n_experts
            )));
        }
        let (method, n_group, topk_group) = match cfg.method {
            TopkMethod::Greedy => (0, 1, 1),
            TopkMethod::GroupLimitedGreedy {
                n_group,
                topk_group,
            } => (1, n_group, topk_group),
            TopkMethod::NoAuxTc {
                n_group,
                topk_group,
            } => (2, n_group, topk_group),
        };
        if n_group > 32 {
            return Err(Error::Shape(format!(
                "{n_group} expert groups; the routing kernel takes at most 32"
            )));
        }
        if cfg.top_k > MAX_TOP_K {
            return Err(Error::Shape(format!(
                "top_k {}; the routing kernel picks at most {MAX_TOP_K} experts a token",
                cfg.top_k
            )));
        }
        let scale = match cfg.scaling {
            RoutedScaling::None => 1.0,
            RoutedScaling::Always(f) => f,
            RoutedScaling::UnlessNormalized(f) => {
                if cfg.normalize {
                    1.0
                } else {
                    f
                }
            }
        };
        Ok(Self {
            args: RouteArgs {
                n_experts: cfg.n_experts as i32,
                top_k: cfg.top_k as i32,
                score_fn: match cfg.score {
                    ScoreFunction::Softmax => 0,
                    ScoreFunction::Sigmoid => 1,
                },
                method,
                n_group: n_group as i32,
                topk_group: topk_group as i32,
                group_mask: match cfg.group_mask {
                    GroupMask::ZeroFill => 0,
                    GroupMask::Exclude => 1,
                },
                normalize: cfg.normalize as i32,
                eps: cfg.norm_epsilon,
                scale,
            },
        })
    }

    /// Experts per token.
    pub fn top_k(&self) -> usize {
        self.args.top_k as usize
    }

    /// Routed experts.
    pub fn n_experts(&self) -> usize {
        self.args.n_experts as usize
    }

    fn is_noaux(&self) -> bool {
        self.args.method == 2
    }
}

/// The arguments every routing kernel starts with (`ROUTE_PARAMS` in kernels/route.cu).
struct RouteOperands {
    logits: u64,
    bias: u64,
    experts: u64,
    weights: u64,
    n_tokens: i32,
}

impl RouteOperands {
    fn new(
        dev: &CudaDevice,
        ws: &MoeWorkspace,
        logits: &DeviceBuffer<f32>,
        bias: Option<&DeviceBuffer<f32>>,
        p: &RouterParams,
        n_tokens: usize,
    ) -> Self {
        Self {
            logits: raw(dev, logits),
            bias: if p.is_noaux() { addr(dev, bias) } else { 0 },
            experts: raw(dev, &ws.experts),
            weights: raw(dev, &ws.weights),
            n_tokens: n_tokens as i32,
        }
    }

    fn push<'a>(&'a self, a: &mut Args<'a>, p: &'a RouterParams) {
        a.arg(&self.logits)
            .arg(&self.bias)
            .arg(&self.experts)
            .arg(&self.weights)
            .arg(&self.n_tokens)
            .arg(&p.args);
    }
}

impl MoeWorkspace {
    /// Fused routing of `n_tokens` rows of f32 `logits` into [`Self::experts`] and [`Self::weights`].
    /// `bias` is the noaux_tc correction bias (selection only).
    pub fn route(
        &mut self,
        dev: &CudaDevice,
        logits: &DeviceBuffer<f32>,
        bias: Option<&DeviceBuffer<f32>>,
        p: &RouterParams,
        n_tokens: usize,
    ) -> Result<()> {
        self.check_router(logits, bias, p, n_tokens)?;
        let name = if p.n_experts() <= FUSED_EXPERTS {
            "topk_route_256"
        } else {
            "topk_route_1024"
        };
        let f = dev.function(Kernel::Route, name)?;
        let ops = RouteOperands::new(dev, self, logits, bias, p, n_tokens);
        let mut a = Args::new();
        ops.push(&mut a, p);
        let cfg = LaunchConfig {
            grid_dim: (n_tokens.div_ceil(4) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: topk_route reads n_tokens*n_experts logits and n_experts bias values (checked
        // above, or a null bias) and writes n_tokens*top_k experts and weights (workspace
        // capacity); it waits for the previous kernel before it reads the logits.
        unsafe { overlap::launch(dev, &f, cfg, &mut a, "launching topk_route") }
    }

    /// [`Self::route`] then [`Self::permute`], in one launch for decode batches (up to 32 tokens
    /// and 256 experts, the pairs within one chunk), where the launches are much of the time.
    pub fn route_and_permute(
        &mut self,
        dev: &CudaDevice,
        logits: &DeviceBuffer<f32>,
        bias: Option<&DeviceBuffer<f32>>,
        p: &RouterParams,
        n_tokens: usize,
        path: GemmPath,
    ) -> Result<()> {
        let fused = n_tokens <= FUSED_TOKENS
            && p.n_experts() <= FUSED_EXPERTS
            && n_tokens * p.top_k() <= CHUNK;
        if !fused {
            self.route(dev, logits, bias, p, n_tokens)?;
            return self.permute(dev, n_tokens, path);
        }
        self.check_router(logits, bias, p, n_tokens)?;
        let f = dev.function(Kernel::Route, "route_permute_one")?;
        let ops = RouteOperands::new(dev, self, logits, bias, p, n_tokens);
        let bm = path.bm() as i32;
        let outs = [
            &self.offsets,
            &self.tile_offsets,
            &self.order,
            &self.row_of_pair,
        ]
        .map(|b| raw(dev, b));
        let mut a = Args::new();
        ops.push(&mut a, p);
        a.arg(&bm);
        for o in &outs {
            a.arg(o);
        }
        let cfg = ONE_BLOCK;
        // SAFETY: as `route` for n_tokens <= 32 tokens, then as `expert_permute_one` for
        // n_tokens * top_k <= CHUNK pairs of experts < n_experts <= 256 (the picks stay in
        // shared memory as well); it waits for the previous kernel before it reads the logits.
        unsafe { overlap::launch(dev, &f, cfg, &mut a, "launching route_permute_one") }
    }

    /// Checks a routing call against the workspace: the router's shape and the buffers' lengths.
    fn check_router(
        &self,
        logits: &DeviceBuffer<f32>,
        bias: Option<&DeviceBuffer<f32>>,
        p: &RouterParams,
        n_tokens: usize,
    ) -> Result<()> {
        self.check_tokens(n_tokens)?;
        if p.n_experts() != self.shape.n_experts || p.top_k() != self.shape.top_k {
            return Err(Error::Shape(format!(
                "router ({} experts, top {}) does not fit the layer {:?}",
                p.n_experts(),
                p.top_k(),
                self.shape
            )));
        }
        if logits.len() < n_tokens * p.n_experts() || bias.is_some_and(|b| b.len() < p.n_experts())
        {
            return Err(Error::Shape("router logits or bias too short".into()));
        }
        Ok(())
    }

    /// Sorts the pairs of [`Self::experts`] by expert (stable in token order), filling
    /// [`Self::order`], [`Self::row_of_pair`], [`Self::offsets`] and the tile map for `path`.
    pub fn permute(&mut self, dev: &CudaDevice, n_tokens: usize, path: GemmPath) -> Result<()> {
        self.check_tokens(n_tokens)?;
        let n_pairs = n_tokens * self.shape.top_k;
        let n_chunks = n_pairs.div_ceil(CHUNK);
        let (np, ne, nc, bm) = (
            n_pairs as i32,
            self.shape.n_experts as i32,
            n_chunks as i32,
            path.bm() as i32,
        );
        if n_chunks == 1 {
            // One block does histogram, offsets and scatter: decode batches save two launches.
            let f = dev.function(Kernel::Route, "expert_permute_one")?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(&self.experts)
                .arg(&np)
                .arg(&ne)
                .arg(&bm)
                .arg(&mut self.offsets)
                .arg(&mut self.tile_offsets)
                .arg(&mut self.order)
                .arg(&mut self.row_of_pair);
            // SAFETY: n_pairs <= CHUNK experts (< n_experts <= 1024, written by route) are read;
            // n_experts + 1 offsets and tile offsets and n_pairs order / row_of_pair entries written.
            unsafe { b.launch(ONE_BLOCK) }.map_err(dev_err("launching expert_permute_one"))?;
            return Ok(());
        }
        let smem = (self.shape.n_experts * 4) as u32;
        let hist = dev.function(Kernel::Route, "expert_histogram")?;
        let offs = dev.function(Kernel::Route, "expert_offsets")?;
        let scatter = dev.function(Kernel::Route, "expert_scatter")?;
        let mut b = dev.stream().launch_builder(&hist);
        b.arg(&self.experts)
            .arg(&np)
            .arg(&ne)
            .arg(&mut self.chunk_counts);
        // SAFETY: reads n_pairs experts (< n_experts, written by route), writes n_chunks*n_experts counts (capacity).
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (n_chunks as u32, 1, 1),
                block_dim: (CHUNK as u32, 1, 1),
                shared_mem_bytes: smem,
            })
        }
        .map_err(dev_err("launching expert_histogram"))?;
        let mut b = dev.stream().launch_builder(&offs);
        b.arg(&mut self.chunk_counts)
            .arg(&nc)
            .arg(&ne)
            .arg(&bm)
            .arg(&mut self.offsets)
            .arg(&mut self.tile_offsets);
        // SAFETY: one block of 1024 threads over n_experts <= 1024 columns of n_chunks counts;
        // writes n_experts + 1 offsets and tile offsets.
        unsafe { b.launch(ONE_BLOCK) }.map_err(dev_err("launching expert_offsets"))?;
        let mut b = dev.stream().launch_builder(&scatter);
        b.arg(&self.experts)
            .arg(&np)
            .arg(&ne)
            .arg(&self.chunk_counts)
            .arg(&mut self.order)
            .arg(&mut self.row_of_pair);
        // SAFETY: each chunk writes its pairs to distinct rows < n_pairs of order and row_of_pair.
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (n_chunks as u32, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: smem,
            })
        }
        .map_err(dev_err("launching expert_scatter"))?;
        Ok(())
    }
}
