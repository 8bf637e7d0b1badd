//! The MoE layer on the GPU, every stage on the device and no host round-trip:
//! router logits -> [`MoeWorkspace::route`] (fused top-k, one launch) -> [`MoeWorkspace::permute`]
//! (counting sort by expert, offsets and GEMM tile map on the device) -> [`MoeWorkspace::gate_up`]
//! (grouped GEMM, SiLU·up in the epilogue; the token rows are gathered on load, or, for the
//! Hopper kernels, by one pass into sorted order that TMA can tile; kernels in moe_gemm.rs) ->
//! [`MoeWorkspace::down`] (grouped GEMM, router weight in the epilogue) ->
//! [`MoeWorkspace::combine`] (unpermute and sum, plus an optional addend such as the shared
//! experts' output). bf16 activations and weights, f32 accumulation.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;
use switchyard_experts::{GroupMask, RoutedScaling, RouterConfig, ScoreFunction, TopkMethod};

use super::dev_err;
use super::device::{CudaDevice, DeviceBuffer, Kernel};
use super::overlap::{self, Args};
use crate::error::{Error, Result};

mod gemm;
mod wgmma;

pub use wgmma::{ForcedTiles, WgmmaTile};

/// Pairs per chunk of the permutation kernels (`CHUNK` in kernels/permute.cu).
const CHUNK: usize = 256;
/// Most experts the routing and permutation kernels take.
pub const MAX_EXPERTS: usize = 1024;
/// Most experts a token the routing kernel picks (one lane of a warp keeps each pick).
pub const MAX_TOP_K: usize = 32;
/// Most tokens and experts of the one-launch routing and permutation (`route_permute_one`: a
/// warp per token, each lane holding 8 experts' scores).
const FUSED_TOKENS: usize = 32;
const FUSED_EXPERTS: usize = 256;

/// The layer's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// Residual width (K of gate/up, N of down).
    pub hidden: usize,
    /// Expert intermediate width.
    pub inter: usize,
    /// Experts held by this device.
    pub n_experts: usize,
    /// Experts per token.
    pub top_k: usize,
}

impl MoeShape {
    /// Checks the divisibility the kernels rely on.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Shape(format!("CUDA MoE kernels: {what}")));
        if !self.hidden.is_multiple_of(128) {
            return bad(format!("hidden {} must be a multiple of 128", self.hidden));
        }
        if !self.inter.is_multiple_of(64) {
            return bad(format!(
                "intermediate {} must be a multiple of 64",
                self.inter
            ));
        }
        if self.n_experts == 0 || self.n_experts > MAX_EXPERTS {
            return bad(format!(
                "{} experts, expected 1..={MAX_EXPERTS}",
                self.n_experts
            ));
        }
        if self.top_k == 0 || self.top_k > self.n_experts {
            return bad(format!(
                "top_k {} with {} experts",
                self.top_k, self.n_experts
            ));
        }
        Ok(())
    }

    /// Bytes of one expert's weights in bf16 (gate, up and down).
    pub fn expert_bytes(&self) -> usize {
        3 * self.hidden * self.inter * 2
    }
}

/// Which kernels the grouped GEMMs use (the kernels themselves are picked per device in
/// moe_gemm.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPath {
    /// Few rows per expert (decode): 32-row M tiles; each block streams a 32-row slab of one
    /// expert's weights once, straight into registers, with K split over its warps.
    Small,
    /// Many rows per expert (prefill), arithmetic-bound: 128-row M tiles (wgmma 128 x 256 tiles
    /// on Hopper, mma.sync 128 x 128 elsewhere).
    Large,
}

impl GemmPath {
    /// The path for `n_pairs` (token, expert) pairs over `n_experts` experts, chosen on the host
    /// from sizes alone (the per-expert counts stay on the device). Measured on an H200 (see
    /// benches/RESULTS.md): the streaming kernels win while experts average at most a couple of
    /// rows (8 rows a pass); past that the tiled kernels stream the weights as well and reuse them.
    pub fn for_load(n_pairs: usize, n_experts: usize) -> Self {
        if n_pairs <= 2 * n_experts {
            GemmPath::Small
        } else {
            GemmPath::Large
        }
    }

    /// Rows per M tile.
    pub fn bm(self) -> usize {
        match self {
            GemmPath::Small => 32,
            GemmPath::Large => 128,
        }
    }
}

/// The routing variant as the kernel's scalar arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterParams {
    /// Experts per token.
    pub top_k: usize,
    /// Routed experts.
    pub n_experts: usize,
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
            top_k: cfg.top_k,
            n_experts: cfg.n_experts,
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

    fn is_noaux(&self) -> bool {
        self.args.method == 2
    }
}

/// Raw device address of an optional buffer (0 for none), for nullable kernel arguments.
fn addr<T>(dev: &CudaDevice, b: Option<&DeviceBuffer<T>>) -> u64 {
    // The guard only records a stream event in multi-stream mode; everything here runs on the
    // device's single stream, so dropping it at once keeps the ordering.
    b.map(|b| overlap::address(dev, b)).unwrap_or(0)
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
            logits: overlap::address(dev, logits),
            bias: if p.is_noaux() { addr(dev, bias) } else { 0 },
            experts: overlap::address(dev, &ws.experts),
            weights: overlap::address(dev, &ws.weights),
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

/// Buffers of one MoE layer call, sized for up to `max_tokens` tokens (reused across layers).
#[derive(Debug)]
pub struct MoeWorkspace {
    /// Layer shape.
    pub shape: MoeShape,
    /// Capacity in tokens.
    pub max_tokens: usize,
    /// [T, top_k] chosen experts.
    pub experts: DeviceBuffer<i32>,
    /// [T, top_k] combine weights.
    pub weights: DeviceBuffer<f32>,
    /// [n_chunks, n_experts] counts, then each chunk's first row inside every expert.
    pub chunk_counts: DeviceBuffer<i32>,
    /// [n_experts + 1] first sorted row of each expert.
    pub offsets: DeviceBuffer<i32>,
    /// [n_experts + 1] first GEMM M tile of each expert.
    pub tile_offsets: DeviceBuffer<i32>,
    /// [P] pair (t·top_k + j) of each sorted row.
    pub order: DeviceBuffer<i32>,
    /// [P] sorted row of each pair.
    pub row_of_pair: DeviceBuffer<i32>,
    /// [P, inter] SiLU(gate)·up.
    pub act: DeviceBuffer<bf16>,
    /// [P, hidden] down projections, scaled by the router weights (between gate/up and down on
    /// the Hopper path: the token rows in sorted order).
    pub y: DeviceBuffer<bf16>,
    /// Forces the Hopper kernels' tile of either projection (None: chosen per projection and
    /// load, see [`WgmmaTile`]); starts as [`WgmmaTile::from_env`].
    pub wgmma_tile: ForcedTiles,
    /// What the cluster kernels ([`WgmmaTile::Pairs`], [`WgmmaTile::Quads`]) multicast: bit 0
    /// the weights, bit 1 the token rows (a cleared bit: each CTA loads its own);
    /// starts from the diagnostic switch `SWITCHYARD_MULTICAST` (3 unless set).
    pub wgmma_multicast: i32,
    /// The one-CTA Hopper kernels walk their units expert by expert, each expert's tiles in
    /// bands (true), or in one banded raster over all experts' tiles (false). Expert by expert
    /// measured 5% faster at DeepSeek-V3 T = 16384 on the H200 and the same elsewhere
    /// (benches/RESULTS.md); starts true unless `SWITCHYARD_RASTER=global` is set.
    pub wgmma_expert_raster: bool,
    /// The Hopper kernels' unit counter (zeroed before each launch).
    tile_counter: DeviceBuffer<i32>,
    /// Clusters of two and of four CTAs that fit on the GPU at once, for down and gate/up
    /// (asked of the driver at the first launch of each).
    cluster_fits: [[Option<usize>; 2]; 2],
}

impl MoeWorkspace {
    /// Allocates the buffers for `max_tokens` tokens.
    pub fn new(dev: &CudaDevice, shape: MoeShape, max_tokens: usize) -> Result<Self> {
        shape.validate()?;
        let p = max_tokens * shape.top_k;
        let e = shape.n_experts;
        Ok(Self {
            shape,
            max_tokens,
            experts: dev.zeros(p.max(1))?,
            weights: dev.zeros(p.max(1))?,
            chunk_counts: dev.zeros(p.div_ceil(CHUNK).max(1) * e)?,
            offsets: dev.zeros(e + 1)?,
            tile_offsets: dev.zeros(e + 1)?,
            order: dev.zeros(p.max(1))?,
            row_of_pair: dev.zeros(p.max(1))?,
            act: dev.zeros(p.max(1) * shape.inter)?,
            y: dev.zeros(p.max(1) * shape.hidden)?,
            wgmma_tile: WgmmaTile::from_env(),
            wgmma_multicast: wgmma::multicast_from_env(),
            wgmma_expert_raster: wgmma::expert_raster_from_env(),
            tile_counter: dev.zeros(1)?,
            cluster_fits: [[None; 2]; 2],
        })
    }

    fn check_tokens(&self, n_tokens: usize) -> Result<()> {
        if n_tokens == 0 || n_tokens > self.max_tokens {
            return Err(Error::Shape(format!(
                "{n_tokens} tokens; the workspace holds 1..={}",
                self.max_tokens
            )));
        }
        Ok(())
    }

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
        let name = if p.n_experts <= FUSED_EXPERTS {
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
        let fused =
            n_tokens <= FUSED_TOKENS && p.n_experts <= FUSED_EXPERTS && n_tokens * p.top_k <= CHUNK;
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
        .map(|b| overlap::address(dev, b));
        let mut a = Args::new();
        ops.push(&mut a, p);
        a.arg(&bm);
        for o in &outs {
            a.arg(o);
        }
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
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
        if p.n_experts != self.shape.n_experts || p.top_k != self.shape.top_k {
            return Err(Error::Shape(format!(
                "router ({} experts, top {}) does not fit the layer {:?}",
                p.n_experts, p.top_k, self.shape
            )));
        }
        if logits.len() < n_tokens * p.n_experts || bias.is_some_and(|b| b.len() < p.n_experts) {
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
            unsafe {
                b.launch(LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (1024, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(dev_err("launching expert_permute_one"))?;
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
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(dev_err("launching expert_offsets"))?;
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

    /// Grouped gate/up GEMM with SiLU·up: [`Self::act`] row r = SiLU(x_t·gate_e)·(x_t·up_e) for
    /// the token t and expert e of sorted row r. `x` is [T, hidden] bf16; `gate_up` is
    /// [n_experts, 2·inter, hidden] (gate rows, then up rows). On the Hopper path this also
    /// overwrites [`Self::y`] (it holds the gathered token rows until [`Self::down`] writes it).
    pub fn gate_up(
        &mut self,
        dev: &CudaDevice,
        x: &DeviceBuffer<bf16>,
        gate_up: &DeviceBuffer<bf16>,
        n_tokens: usize,
        path: GemmPath,
    ) -> Result<()> {
        self.check_tokens(n_tokens)?;
        let s = self.shape;
        if x.len() < n_tokens * s.hidden || gate_up.len() < s.n_experts * 2 * s.inter * s.hidden {
            return Err(Error::Shape(
                "gate_up: x or the weights are too short".into(),
            ));
        }
        gemm::gate_up(dev, self, x, gate_up, n_tokens, path)
    }

    /// Grouped down GEMM: [`Self::y`] row r = w_r · (act_r · down_e), `down` [n_experts, hidden, inter].
    /// Queue it right after [`Self::gate_up`] (it needs its act): the decode kernel may start
    /// while gate/up finishes and reads the tile map before it waits (see kernels/grouped_gemm.cu).
    pub fn down(
        &mut self,
        dev: &CudaDevice,
        down: &DeviceBuffer<bf16>,
        n_tokens: usize,
        path: GemmPath,
    ) -> Result<()> {
        self.check_tokens(n_tokens)?;
        let s = self.shape;
        if down.len() < s.n_experts * s.hidden * s.inter {
            return Err(Error::Shape("down: the weights are too short".into()));
        }
        gemm::down(dev, self, down, n_tokens, path)
    }

    /// Unpermute and combine into `out` [T, hidden] bf16: out_t = Σ_j y[row(t, j)] (+ addend_t).
    pub fn combine(
        &self,
        dev: &CudaDevice,
        n_tokens: usize,
        addend: Option<&DeviceBuffer<bf16>>,
        out: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        self.check_tokens(n_tokens)?;
        let h = self.shape.hidden;
        if out.len() < n_tokens * h || addend.is_some_and(|a| a.len() < n_tokens * h) {
            return Err(Error::Shape("combine: out or addend too short".into()));
        }
        let f = dev.function(Kernel::Combine, "moe_combine")?;
        let ptrs = [
            overlap::address(dev, &self.y),
            overlap::address(dev, &self.row_of_pair),
            addr(dev, addend),
            overlap::address(dev, out),
        ];
        let (hi, k) = (h as i32, self.shape.top_k as i32);
        let mut a = Args::new();
        for p in &ptrs {
            a.arg(p);
        }
        a.arg(&hi).arg(&k);
        let cfg = LaunchConfig {
            grid_dim: ((h / 8).div_ceil(256) as u32, n_tokens as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads top_k rows of y per token (rows < n_pairs from permute) and writes
        // n_tokens x hidden outputs (checked); hidden % 8 == 0 for the 16-byte accesses; it
        // waits for the previous kernel before it touches memory.
        unsafe { overlap::launch(dev, &f, cfg, &mut a, "launching moe_combine") }
    }
}

/// One MoE layer's experts on a GPU: stacked bf16 weights and the router.
#[derive(Debug)]
pub struct MoeLayer {
    /// Dimensions.
    pub shape: MoeShape,
    /// [n_experts, 2·inter, hidden]: gate rows, then up rows.
    pub gate_up: DeviceBuffer<bf16>,
    /// [n_experts, hidden, inter].
    pub down: DeviceBuffer<bf16>,
    /// The routing variant.
    pub router: RouterParams,
    /// noaux_tc correction bias [n_experts], if any.
    pub bias: Option<DeviceBuffer<f32>>,
}

impl MoeLayer {
    /// The whole layer for `n_tokens` tokens: `x` [T, hidden] bf16 and router `logits` [T, n_experts]
    /// f32 in, `out` [T, hidden] bf16 out (plus `addend` when given). Queues the work on the
    /// device's stream and returns without waiting.
    pub fn forward(
        &self,
        dev: &CudaDevice,
        ws: &mut MoeWorkspace,
        x: &DeviceBuffer<bf16>,
        logits: &DeviceBuffer<f32>,
        n_tokens: usize,
        addend: Option<&DeviceBuffer<bf16>>,
        out: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        if ws.shape != self.shape {
            return Err(Error::Shape(format!(
                "workspace {:?} does not fit layer {:?}",
                ws.shape, self.shape
            )));
        }
        let path = GemmPath::for_load(n_tokens * self.shape.top_k, self.shape.n_experts);
        ws.route_and_permute(
            dev,
            logits,
            self.bias.as_ref(),
            &self.router,
            n_tokens,
            path,
        )?;
        ws.gate_up(dev, x, &self.gate_up, n_tokens, path)?;
        ws.down(dev, &self.down, n_tokens, path)?;
        ws.combine(dev, n_tokens, addend, out)
    }
}
