//! The grouped-GEMM launches behind [`MoeWorkspace::gate_up`] and [`MoeWorkspace::down`]: which
//! kernel runs for a [`GemmPath`] on this device, and its grid.
//!
//! - [`GemmPath::Small`] (decode): `gate_up_stream32` / `down_stream32` (kernels/grouped_gemm.cu)
//!   stream each touched expert's weights once, 32 weight rows per block, K split over 8 warps.
//! - [`GemmPath::Large`] on Hopper (sm_90a) when the N tiles divide the shape: `gate_up_wgmma` /
//!   `down_wgmma` (kernels/grouped_gemm_sm90.cu, launched by moe/wgmma.rs), TMA + wgmma,
//!   persistent, 128 x 256 tiles a CTA, gate/up on clusters of two or four CTAs while experts
//!   hold few rows ([`WgmmaTile`]); the token rows are first
//!   copied into sorted order (`scatter_rows`, into [`MoeWorkspace::y`], which is free until
//!   the down projection writes it).
//! - [`GemmPath::Large`] elsewhere: the mma.sync 128 x 128 kernels (`gate_up_large` / `down_large`).

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use half::bf16;

use super::wgmma::{self, WgmmaTile};
use super::{GemmPath, MoeShape, MoeWorkspace};
use crate::backend::cuda::dev_err;
use crate::backend::cuda::device::{CudaDevice, DeviceBuffer, Kernel};
use crate::backend::cuda::ops::raw;
use crate::backend::cuda::overlap::{self, ArgSink, Args};
use crate::error::{Error, Result};

/// Which kernel family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Stream,
    MmaLarge,
    Wgmma,
}

/// Set (to anything) to keep the Hopper kernels off and run the mma.sync ones instead: a
/// diagnostic switch for comparing the two on the same machine.
const NO_WGMMA: &str = "SWITCHYARD_NO_WGMMA";

fn family(dev: &CudaDevice, path: GemmPath, s: &MoeShape) -> Family {
    let wgmma = dev.arch() == "sm_90a" && std::env::var_os(NO_WGMMA).is_none();
    match path {
        GemmPath::Small => Family::Stream,
        // wgmma's N tiles: 128 act columns (256 gate+up rows) for gate/up, 256 columns for down.
        GemmPath::Large if wgmma && s.inter.is_multiple_of(128) && s.hidden.is_multiple_of(256) => {
            Family::Wgmma
        }
        GemmPath::Large => Family::MmaLarge,
    }
}

/// Set to `16` to run both decode kernels on 16-row weight slabs instead of 32, or to `G,D` (each
/// 16 or 32) to choose per projection (gate/up, down): a diagnostic switch for the benchmark.
const STREAM_ROWS: &str = "SWITCHYARD_STREAM_ROWS";

/// Weight rows per block of the decode kernels: 32 (each lane owns two row pairs, so a token
/// row loaded once feeds twice the weights, and a block streams twice as long after its start).
fn stream_rows(gate_up: bool) -> usize {
    let v = std::env::var(STREAM_ROWS).unwrap_or_default();
    let pick = match v.split_once(',') {
        Some((g, d)) => {
            if gate_up {
                g
            } else {
                d
            }
        }
        None => v.as_str(),
    };
    if pick == "16" {
        16
    } else {
        32
    }
}

/// The decode or mma.sync kernel of `fam` (not Wgmma), its N extent (weight rows for the
/// decode kernels, output columns for the tiles) and its shared memory.
fn function(dev: &CudaDevice, fam: Family, gate_up: bool) -> Result<(CudaFunction, usize, usize)> {
    let wide = stream_rows(gate_up) == 32;
    let large_smem = 4 * 256 * 4 * 16;
    let (name, bn, smem) = match (fam, gate_up) {
        (Family::Stream, true) if wide => ("gate_up_stream32", 16, 0),
        (Family::Stream, false) if wide => ("down_stream32", 32, 0),
        (Family::Stream, true) => ("gate_up_stream", 8, 0),
        (Family::Stream, false) => ("down_stream", 16, 0),
        (_, true) => ("gate_up_large", 64, large_smem),
        (_, false) => ("down_large", 128, large_smem),
    };
    Ok((
        dev.function_with_smem(Kernel::GroupedGemm, name, smem)?,
        bn,
        smem,
    ))
}

/// Below this many rows an expert on average, gate/up runs on clusters.
const PAIR_ROWS: usize = 192;
/// From this many rows an expert on average (and below [`PAIR_ROWS`]), on clusters of four.
const QUAD_ROWS: usize = 96;

/// The Hopper tile for `op` over `n_pairs` rows, unless forced ([`MoeWorkspace::wgmma_tile`]):
/// gate/up on clusters while experts average under [`PAIR_ROWS`] rows (their weights then
/// leave DRAM about once: DeepSeek-V3 at T = 4096, 128 rows an expert, gate/up 5.4 vs 6.6 ms
/// on one CTA on the H200), of four from [`QUAD_ROWS`] rows (same shape: layer 7.89-7.90 vs
/// 8.04-8.07 ms on pairs; at 32 and 64 rows an expert quads lost by 1-2%), else 128 x 256,
/// which won at more rows and for the down projection (benches/RESULTS.md). Every choice
/// reads the 128-row map.
fn wgmma_tile(ws: &MoeWorkspace, op: &Operands, n_pairs: usize) -> WgmmaTile {
    let e = ws.shape.n_experts;
    match ws.wgmma_tile.of(op.gate_up) {
        Some(t) => t,
        None if op.gate_up && (QUAD_ROWS * e..PAIR_ROWS * e).contains(&n_pairs) => WgmmaTile::Quads,
        None if op.gate_up && n_pairs < PAIR_ROWS * e => WgmmaTile::Pairs,
        None => WgmmaTile::Rows128,
    }
}

/// What differs between the two grouped GEMMs of the layer.
pub(super) struct Operands {
    pub(super) gate_up: bool,
    /// Rows of A: the tokens (gate/up, gathered by `order` on load or into `ws.y` first on
    /// Hopper) or `ws.act` (down).
    pub(super) a: u64,
    /// Stacked weights, [n_experts * n_total, k].
    pub(super) w: u64,
    /// Output rows in sorted order.
    pub(super) out: u64,
    /// Router weight per pair applied in the epilogue (down), or 0.
    pub(super) pair_weight: u64,
    /// Weight rows per expert and the reduction width.
    pub(super) n_total: usize,
    pub(super) k: usize,
    /// Output columns (the grid's N extent): inter for gate/up (SiLU·up halves), hidden for down.
    pub(super) n_out: usize,
    /// The permutation's outputs the kernels read.
    pub(super) maps: Maps,
}

/// Device addresses of the permutation's outputs: the sorted order, the group offsets and the
/// tile map.
pub(super) struct Maps {
    order: u64,
    offsets: u64,
    tile_offsets: u64,
}

impl Maps {
    fn of(dev: &CudaDevice, ws: &MoeWorkspace) -> Self {
        Self {
            order: raw(dev, &ws.order),
            offsets: raw(dev, &ws.offsets),
            tile_offsets: raw(dev, &ws.tile_offsets),
        }
    }
}

impl Operands {
    /// The widths every kernel takes: experts, weight rows per expert, reduction.
    pub(super) fn dims(&self, s: &MoeShape) -> [i32; 3] {
        [s.n_experts as i32, self.n_total as i32, self.k as i32]
    }

    /// Pushes the arguments every kernel family takes after A and B: the output, the sorted
    /// order, the router weights, the group offsets, the tile map (unless `tile_map` is false:
    /// the cluster-pair kernels find each unit from the group offsets alone), and `dims`.
    pub(super) fn push_args<'a>(
        &'a self,
        b: &mut impl ArgSink<'a>,
        dims: &'a [i32; 3],
        tile_map: bool,
    ) {
        b.push(&self.out);
        b.push(&self.maps.order);
        b.push(&self.pair_weight);
        b.push(&self.maps.offsets);
        if tile_map {
            b.push(&self.maps.tile_offsets);
        }
        for d in dims {
            b.push(d);
        }
    }

    /// What a failed launch was doing.
    pub(super) fn launching(&self) -> &'static str {
        if self.gate_up {
            "launching the gate/up grouped GEMM"
        } else {
            "launching the down grouped GEMM"
        }
    }
}

/// Gate/up (+SiLU·up) into `ws.act` for `n_tokens` tokens; the caller checked the sizes.
pub(super) fn gate_up(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    x: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    n_tokens: usize,
    path: GemmPath,
) -> Result<()> {
    let s = ws.shape;
    let n_pairs = n_tokens * s.top_k;
    let a = if family(dev, path, &s) == Family::Wgmma {
        gather(dev, ws, x, n_pairs)?;
        raw(dev, &ws.y)
    } else {
        raw(dev, x)
    };
    let op = Operands {
        gate_up: true,
        a,
        w: raw(dev, w),
        out: raw(dev, &ws.act),
        pair_weight: 0,
        n_total: 2 * s.inter,
        k: s.hidden,
        n_out: s.inter,
        maps: Maps::of(dev, ws),
    };
    // SAFETY (for grouped): x holds n_tokens x hidden and the weights n_experts x 2·inter x
    // hidden (checked by the caller); act holds n_pairs x inter (workspace capacity); on Hopper
    // ws.y holds the n_pairs gathered rows.
    grouped(dev, ws, &op, n_pairs, path)
}

/// Down projection with the router weights into `ws.y`; the caller checked the sizes.
pub(super) fn down(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    w: &DeviceBuffer<bf16>,
    n_tokens: usize,
    path: GemmPath,
) -> Result<()> {
    let s = ws.shape;
    let op = Operands {
        gate_up: false,
        a: raw(dev, &ws.act),
        w: raw(dev, w),
        out: raw(dev, &ws.y),
        pair_weight: raw(dev, &ws.weights),
        n_total: s.hidden,
        k: s.inter,
        n_out: s.hidden,
        maps: Maps::of(dev, ws),
    };
    // SAFETY (for grouped): act holds n_pairs x inter, the weights n_experts x hidden x inter
    // (checked by the caller), y n_pairs x hidden (workspace capacity).
    grouped(dev, ws, &op, n_tokens * s.top_k, path)
}

/// Launches one grouped GEMM over the tile map of `permute`: rows past each expert's end are
/// not stored; the widths meet the tiles' divisibility (MoeShape::validate, family()).
fn grouped(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    op: &Operands,
    n_pairs: usize,
    path: GemmPath,
) -> Result<()> {
    let s = ws.shape;
    let fam = family(dev, path, &s);
    // Upper bound of tiles over all experts (surplus blocks exit at once).
    let max_tiles = n_pairs.div_ceil(path.bm()) + s.n_experts.min(n_pairs);
    if fam == Family::Wgmma {
        let tile = wgmma_tile(ws, op, n_pairs);
        return wgmma::launch(dev, ws, op, n_pairs, tile, max_tiles);
    }
    let (f, bn, smem) = function(dev, fam, op.gate_up)?;
    let dims = op.dims(&s);
    let tk = s.top_k as i32;
    let cfg = LaunchConfig {
        grid_dim: (max_tiles as u32, (op.n_out / bn) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    // SAFETY (both launches): the operands cover what the callers say; tiles come from the tile
    // map of permute (rows < n_pairs, tokens < n_tokens) and stores stop at each expert's last
    // row. The decode kernels wait for the previous kernel before touching what it writes
    // (kernels/grouped_gemm.cu), so they may overlap it.
    if fam == Family::Stream {
        let mut a = Args::new();
        a.arg(&op.a).arg(&op.w);
        op.push_args(&mut a, &dims, true);
        a.arg(&tk);
        return unsafe { overlap::launch(dev, &f, cfg, &mut a, op.launching()) };
    }
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&op.a).arg(&op.w);
    op.push_args(&mut b, &dims, true);
    b.arg(&tk);
    unsafe { b.launch(cfg) }.map_err(dev_err(op.launching()))?;
    Ok(())
}

/// xs = x[order / top_k] into `ws.y` (the token rows in sorted order, [n_pairs, hidden]),
/// written token by token through `row_of_pair`.
fn gather(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    x: &DeviceBuffer<bf16>,
    n_pairs: usize,
) -> Result<()> {
    if ws.shape.top_k > super::MAX_TOP_K {
        return Err(Error::Shape(format!(
            "top_k {}: the row scatter takes at most {} pairs a token",
            ws.shape.top_k,
            super::MAX_TOP_K
        )));
    }
    let f = dev.function(Kernel::GroupedGemm, "scatter_rows")?;
    let (h, k) = (ws.shape.hidden as i32, ws.shape.top_k as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(&mut ws.y).arg(&ws.row_of_pair).arg(&h).arg(&k);
    // SAFETY: n_pairs / top_k tokens of x, each with top_k entries of row_of_pair (from
    // permute) naming distinct rows < n_pairs; y holds n_pairs x hidden (workspace capacity);
    // hidden % 8 == 0 for the 16-byte copies; top_k <= 32 (MAX_TOP_K) for the kernel's table.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: ((n_pairs / ws.shape.top_k) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching scatter_rows"))?;
    Ok(())
}
