//! The Hopper grouped GEMMs (kernels/grouped_gemm_sm90.cu, kernels/grouped_gemm_sm90_clusters.cu):
//! which tile runs for a load, their TMA descriptors, and the persistent launch.

use std::ffi::c_void;

use cudarc::driver::{sys, CudaFunction, LaunchConfig, PushKernelArg};

use super::gemm::Operands;
use super::MoeWorkspace;
use crate::backend::cuda::dev_err;
use crate::backend::cuda::device::{CudaDevice, Kernel};
use crate::backend::cuda::ops::raw;
use crate::error::{Error, Result};

/// The tile shape of the Hopper kernels (kernels/grouped_gemm_sm90.cu and
/// kernels/grouped_gemm_sm90_clusters.cu). Which runs by default for a projection and load:
/// `gemm::wgmma_tile`; [`Self::Rows64`] is kept to compare against on new shapes and GPUs (it
/// lost at every load of the benchmark on the H200, benches/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgmmaTile {
    /// 64 x 256 units, halves of the 128-row tile map (both consumers on the same 64 rows, each
    /// on half the columns).
    Rows64,
    /// 128 x 256 (two consumers of 64 rows; the second idles on an expert's last 64 rows or
    /// fewer).
    Rows128,
    /// 128 x 256 a CTA, run by clusters of two CTAs that take each unit together and share
    /// one operand by TMA multicast: the weights when an expert's 256-row super tile holds more
    /// than 128 rows (each CTA takes 128 of them), else the token rows (each CTA takes one of
    /// two N tiles). Needs an even number of N tiles and room for a cluster of two (else
    /// [`Self::Rows128`] runs).
    Pairs,
    /// [`Self::Pairs`] on clusters of four CTAs: in M mode two N tiles at once, the CTAs of one
    /// M half also sharing its token rows; in N mode four N tiles on the same rows. Needs a
    /// number of N tiles that four divides and room for a cluster of four (else
    /// [`Self::Pairs`] runs).
    Quads,
}

/// Bytes of the kernels' unit ring (TS = 4 slots: two mbarriers and an int each).
const TILE_RING: usize = 4 * (8 + 8 + 4);

impl WgmmaTile {
    /// Set to 64, 128, `pairs` or `quads` to force the tile of both projections, or to `G,D`
    /// to force gate/up's and down's: a diagnostic switch for the benchmark.
    const ENV: &'static str = "SWITCHYARD_WGMMA_BM";

    fn parse(v: &str) -> Option<Self> {
        match v {
            "64" => Some(Self::Rows64),
            "128" => Some(Self::Rows128),
            "pairs" => Some(Self::Pairs),
            "quads" => Some(Self::Quads),
            _ => None,
        }
    }

    /// The forced tiles of [`Self::ENV`], if any: (gate/up, down).
    pub fn from_env() -> ForcedTiles {
        let v = std::env::var(Self::ENV).unwrap_or_default();
        match v.split_once(',') {
            Some((g, d)) => ForcedTiles {
                gate_up: Self::parse(g),
                down: Self::parse(d),
            },
            None => ForcedTiles::both(Self::parse(&v)),
        }
    }

    /// Units the kernel walks for `op` over at most `max_tiles` tiles of the 128-row tile map.
    fn units(self, op: &Operands, max_tiles: usize) -> usize {
        let n_tiles = n_tiles(op);
        match self {
            Self::Rows64 => 2 * max_tiles * n_tiles,
            Self::Rows128 | Self::Pairs => max_tiles * n_tiles,
            Self::Quads => max_tiles * n_tiles / 2,
        }
    }

    /// Shared memory: the pipeline stages of an A tile (the unit's rows x 64) and a B tile (the
    /// B rows x 64, bf16), their mbarriers, the ring of units handed to the consumers, a copy
    /// of the tile map (pairs: units per expert) and group offsets (up to 1025 entries each),
    /// and 1 KiB of slack to align the tiles to the 128B swizzle's 1024 bytes. Stages and sizes
    /// as in kernels/grouped_gemm_sm90.cu and kernels/grouped_gemm_sm90_clusters.cu.
    fn smem(self) -> usize {
        let (stages, a_rows) = match self {
            Self::Rows64 => (5, 64),
            Self::Rows128 | Self::Pairs | Self::Quads => (4, 128),
        };
        stages * ((a_rows * 64 + 256 * 64) * 2 + 16) + TILE_RING + 2 * 1025 * 4 + 1024
    }

    /// CTAs of a cluster.
    fn cluster(self) -> usize {
        match self {
            Self::Pairs => 2,
            Self::Quads => 4,
            Self::Rows64 | Self::Rows128 => 1,
        }
    }

    /// Whether the N tiles of `op` come in the groups a cluster unit takes (one per CTA).
    fn fits_shape(self, op: &Operands) -> bool {
        n_tiles(op).is_multiple_of(self.cluster())
    }

    /// The tile that runs in place of a cluster tile that cannot.
    fn smaller(self) -> Self {
        match self {
            Self::Quads => Self::Pairs,
            Self::Pairs => Self::Rows128,
            t => t,
        }
    }

    fn kernel(self, gate_up: bool) -> &'static str {
        match (self, gate_up) {
            (Self::Rows64, true) => "gate_up_wgmma64",
            (Self::Rows64, false) => "down_wgmma64",
            (Self::Rows128, true) => "gate_up_wgmma",
            (Self::Rows128, false) => "down_wgmma",
            (Self::Pairs, true) => "gate_up_wgmma_pairs",
            (Self::Pairs, false) => "down_wgmma_pairs",
            (Self::Quads, true) => "gate_up_wgmma_quads",
            (Self::Quads, false) => "down_wgmma_quads",
        }
    }
}

/// N tiles of every Hopper kernel for `op`: each covers 256 B rows, i.e. 128 act columns
/// (gate/up, gate and up rows of the same features) or 256 output columns (down).
fn n_tiles(op: &Operands) -> usize {
    op.n_out / if op.gate_up { 128 } else { 256 }
}

/// Tiles forced for each projection (None: chosen per load, `gemm::wgmma_tile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForcedTiles {
    /// The gate/up projection's tile.
    pub gate_up: Option<WgmmaTile>,
    /// The down projection's tile.
    pub down: Option<WgmmaTile>,
}

impl ForcedTiles {
    /// The same forced tile (or none) for both projections.
    pub fn both(tile: Option<WgmmaTile>) -> Self {
        Self {
            gate_up: tile,
            down: tile,
        }
    }

    /// The forced tile of the projection (`gate_up` or down).
    pub fn of(&self, gate_up: bool) -> Option<WgmmaTile> {
        if gate_up {
            self.gate_up
        } else {
            self.down
        }
    }
}

/// `SWITCHYARD_MULTICAST` (0 to 3: which operands the cluster kernels multicast, see
/// [`MoeWorkspace::wgmma_multicast`]), else 3: a diagnostic switch for the benchmark.
pub fn multicast_from_env() -> i32 {
    std::env::var("SWITCHYARD_MULTICAST")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|m| (0..=3).contains(m))
        .unwrap_or(3)
}

/// A TMA descriptor of a row-major bf16 matrix [rows, k] in 64 x 64 boxes with the 128-byte
/// swizzle the wgmma descriptors expect; rows past the end read as zeros.
fn tensor_map(base: u64, rows: usize, k: usize) -> Result<[u64; 16]> {
    use sys::{
        CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
        CUtensorMapL2promotion, CUtensorMapSwizzle,
    };
    // SAFETY: only probes for the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device("no CUDA driver".into()));
    }
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let dims = [k as u64, rows as u64];
    let strides = [(k * 2) as u64];
    let boxes = [64u32, 64];
    let elem = [1u32, 1];
    // SAFETY: every pointer is to a live local array of the length the rank (2) requires; the
    // driver only encodes the descriptor (it does not touch device memory).
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            base as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Device(format!(
            "cuTensorMapEncodeTiled ({rows} x {k} bf16): {r:?}"
        )));
    }
    Ok(map.opaque)
}

/// `SWITCHYARD_BAND`: M units a band of the one-CTA kernels' raster (default 8; the pairs take
/// half as many 256-row super tiles), a diagnostic switch for the benchmark.
fn band() -> i32 {
    std::env::var("SWITCHYARD_BAND")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b: &i32| b > 0)
        .unwrap_or(8)
}

/// `SWITCHYARD_RASTER=global` walks the one-CTA kernels' units in one banded raster over all
/// experts' tiles instead of expert by expert (see [`MoeWorkspace::wgmma_expert_raster`]): a
/// diagnostic switch for the benchmark.
pub fn expert_raster_from_env() -> bool {
    std::env::var("SWITCHYARD_RASTER").as_deref() != Ok("global")
}

/// Threads of every Hopper kernel's CTA: a producer warpgroup and two consumers.
const THREADS: u32 = 384;

/// The tile that can run: a cluster tile needs N tiles in groups of its CTAs (`fits_shape`)
/// and room on the GPU for a cluster of them (a small MIG slice may have none); otherwise the
/// next smaller tile runs (quads, pairs, one CTA 128 x 256). With it, the kernel and its grid:
/// persistent, one CTA per SM (fewer when there are fewer units); clusters only as many as fit
/// at once (all their units come from the counter). `fits` caches the driver's counts of
/// clusters that fit, of two then of four CTAs.
fn runnable(
    dev: &CudaDevice,
    op: &Operands,
    mut tile: WgmmaTile,
    max_tiles: usize,
    fits: &mut [Option<usize>; 2],
) -> Result<(WgmmaTile, CudaFunction, u32)> {
    let load = |t: WgmmaTile| {
        dev.function_with_smem(Kernel::GroupedGemmSm90, t.kernel(op.gate_up), t.smem())
    };
    while tile.cluster() > 1 {
        if tile.fits_shape(op) {
            let f = load(tile)?;
            let size = tile.cluster();
            let cfg = LaunchConfig {
                // (The occupancy query wants a grid the kernel's cluster divides.)
                grid_dim: (size as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: tile.smem() as u32,
            };
            let cached = &mut fits[usize::from(size == 4)];
            let fit = match *cached {
                Some(n) => n,
                None => *cached.insert(
                    f.occupancy_max_active_clusters(cfg, dev.stream())
                        .map_err(dev_err("sizing the cluster grid"))? as usize,
                ),
            };
            if fit > 0 {
                let grid = size * fit.min(tile.units(op, max_tiles)).max(1);
                return Ok((tile, f, grid as u32));
            }
        }
        tile = tile.smaller();
    }
    let grid = dev.sm_count()?.min(tile.units(op, max_tiles)).max(1);
    Ok((tile, load(tile)?, grid as u32))
}

/// Launches the wgmma kernel of `tile` for `op` over `n_pairs` sorted rows and at most
/// `max_tiles` tiles of the tile map.
pub(super) fn launch(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    op: &Operands,
    n_pairs: usize,
    tile: WgmmaTile,
    max_tiles: usize,
) -> Result<()> {
    let s = ws.shape;
    let fits = &mut ws.cluster_fits[usize::from(op.gate_up)];
    let (tile, f, grid) = runnable(dev, op, tile, max_tiles, fits)?;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: tile.smem() as u32,
    };
    let ta = tensor_map(op.a, n_pairs, op.k)?;
    let tb = tensor_map(op.w, s.n_experts * op.n_total, op.k)?;
    let dims = op.dims(&s);
    let (band, expert_major) = (band(), i32::from(ws.wgmma_expert_raster));
    // Units past the first wave (clusters: all units) are taken in the order CTAs come free, from
    // a counter zeroed here; `SWITCHYARD_STATIC_TILES` (a diagnostic switch) walks the one-CTA
    // kernels' units by a fixed stride instead.
    let clustered = tile.cluster() > 1;
    let counter = if !clustered && std::env::var_os("SWITCHYARD_STATIC_TILES").is_some() {
        0u64
    } else {
        dev.stream()
            .memset_zeros(&mut ws.tile_counter)
            .map_err(dev_err("zeroing the tile counter"))?;
        raw(dev, &ws.tile_counter)
    };
    let ws: &MoeWorkspace = ws;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&ta).arg(&tb);
    op.push_args(&mut b, &dims, !clustered);
    // The one int after the band: what the clusters multicast, or the one-CTA kernels' raster.
    let mode = if clustered {
        ws.wgmma_multicast
    } else {
        expert_major
    };
    b.arg(&band).arg(&mode).arg(&counter);
    // SAFETY: the arguments match the kernel's signature (WG_ARGS or PAIR_ARGS); the operands
    // cover what the callers say; units come from the group offsets of permute (rows <
    // n_pairs) and stores stop at each expert's last row; the pair grid is even (its clusters).
    unsafe { b.launch(cfg) }.map_err(dev_err(op.launching()))?;
    Ok(())
}
