//! The MoE layer on the GPU, every stage on the device and no host round-trip:
//! router logits -> [`MoeWorkspace::route`] (fused top-k, one launch) -> [`MoeWorkspace::permute`]
//! (counting sort by expert, offsets and GEMM tile map on the device; both in route.rs, one
//! launch together for decode batches: [`MoeWorkspace::route_and_permute`]) ->
//! [`MoeWorkspace::gate_up`] (grouped GEMM, SiLU·up in the epilogue; the token rows are gathered
//! on load, or, for the Hopper kernels, by one pass into sorted order that TMA can tile; kernels
//! in gemm.rs) ->
//! [`MoeWorkspace::down`] (grouped GEMM, router weight in the epilogue) ->
//! [`MoeWorkspace::combine`] (unpermute and sum, plus an optional addend such as the shared
//! experts' output). bf16 activations and weights, f32 accumulation.

use cudarc::driver::LaunchConfig;
use half::bf16;

use super::device::{CudaDevice, DeviceBuffer, Kernel};
use super::ops::raw;
use super::overlap::{self, Args};
use crate::error::{Error, Result};

mod gemm;
mod route;
mod wgmma;

pub use route::{RouterParams, MAX_TOP_K};
pub use wgmma::{ForcedTiles, WgmmaTile};

/// Pairs per chunk of the permutation kernels (`CHUNK` in kernels/permute.cu).
const CHUNK: usize = 256;
/// Most experts the routing and permutation kernels take.
pub const MAX_EXPERTS: usize = 1024;
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

/// Raw device address of an optional buffer (0 for none), for nullable kernel arguments.
fn addr<T>(dev: &CudaDevice, b: Option<&DeviceBuffer<T>>) -> u64 {
    // The guard only records a stream event in multi-stream mode; everything here runs on the
    // device's single stream, so dropping it at once keeps the ordering.
    b.map(|b| raw(dev, b)).unwrap_or(0)
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
            raw(dev, &self.y),
            raw(dev, &self.row_of_pair),
            addr(dev, addend),
            raw(dev, out),
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
