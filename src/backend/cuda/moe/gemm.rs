//! The grouped-GEMM launches behind [`MoeWorkspace::gate_up`] and [`MoeWorkspace::down`]: which
//! kernel runs for a [`GemmPath`] on this device, and its grid.
//!
//! - [`GemmPath::Small`] (decode): `gate_up_stream32` / `down_stream32` (kernels/grouped_gemm.cu)
//!   stream each touched expert's weights once, 32 weight rows per block, K split over 8 warps.
//! - [`GemmPath::Large`] on Hopper (sm_90a) when the N tiles divide the shape: `gate_up_wgmma` /
//!   `down_wgmma` (kernels/grouped_gemm_sm90.cu), TMA + wgmma, persistent, 128 x 256 tiles (64 x
//!   256, `*_wgmma64`, while experts average at most 48 rows); the
//!   token rows are first gathered into sorted order (`gather_rows`, into [`MoeWorkspace::y`],
//!   which is free until the down projection writes it).
//! - [`GemmPath::Large`] elsewhere: the mma.sync 128 x 128 kernels (`gate_up_large` / `down_large`).

use std::ffi::c_void;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{GemmPath, MoeShape, MoeWorkspace};
use crate::backend::cuda::dev_err;
use crate::backend::cuda::device::{CudaDevice, DeviceBuffer, Kernel};
use crate::error::{Error, Result};

/// Shared memory of the wgmma kernels with `bm`-row tiles: 4 stages (bm 128) or 5 (bm 64) of a
/// bm x 64 A tile and a 256 x 64 B tile (bf16), their mbarriers, and 1 KiB of slack to align the
/// tiles to the 128B swizzle's 1024 bytes, and a copy of the tile map and group offsets (up to
/// 1025 entries each).
fn wgmma_smem(bm: usize) -> usize {
    let stages = if bm == 128 { 4 } else { 5 };
    stages * ((bm * 64 + 256 * 64) * 2 + 16) + 2 * 1025 * 4 + 1024
}

/// Set to 64 or 128 to force the wgmma tile height: a diagnostic switch for the benchmark.
const WGMMA_BM: &str = "SWITCHYARD_WGMMA_BM";

/// Rows of the wgmma M tile: 64 while experts average at most 48 rows (weight-bound: less of
/// each expert's ragged tile is computed), else 128 (arithmetic-bound: the 64-row tiles measured
/// up to 1.75x slower there on the H200, see benches/RESULTS.md).
fn wgmma_bm(n_pairs: usize, n_experts: usize) -> usize {
    match std::env::var(WGMMA_BM).ok().as_deref() {
        Some("64") => 64,
        Some("128") => 128,
        _ if n_pairs <= 48 * n_experts => 64,
        _ => 128,
    }
}

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

fn ptr<T>(dev: &CudaDevice, b: &DeviceBuffer<T>) -> u64 {
    // Single stream: dropping the guard at once keeps the ordering (see moe.rs `addr`).
    b.device_ptr(dev.stream()).0
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

/// Set to 16 to run the decode kernels on 16-row weight slabs instead of 32: a diagnostic switch
/// for the benchmark.
const STREAM_ROWS: &str = "SWITCHYARD_STREAM_ROWS";

/// Weight rows per block of the decode kernels: 32 (each lane owns two row pairs, so a token
/// row loaded once feeds twice the weights, and a block streams twice as long after its start).
fn stream_rows() -> usize {
    match std::env::var(STREAM_ROWS).ok().as_deref() {
        Some("16") => 16,
        _ => 32,
    }
}

/// Persistent grid of the wgmma kernels: one CTA per SM, fewer when there are fewer tiles.
fn wgmma_grid(dev: &CudaDevice, max_tiles: usize, bm: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (dev.sm_count()?.min(max_tiles).max(1) as u32, 1, 1),
        block_dim: (384, 1, 1),
        shared_mem_bytes: wgmma_smem(bm) as u32,
    })
}

fn function(
    dev: &CudaDevice,
    fam: Family,
    gate_up: bool,
    bm: usize,
    bn: &mut usize,
    smem_bytes: &mut usize,
) -> Result<CudaFunction> {
    let wg = wgmma_smem(bm);
    let wide = stream_rows() == 32;
    let (kernel, name, smem) = match (fam, gate_up) {
        (Family::Stream, true) if wide => (Kernel::GroupedGemm, "gate_up_stream32", 0),
        (Family::Stream, false) if wide => (Kernel::GroupedGemm, "down_stream32", 0),
        (Family::Stream, true) => (Kernel::GroupedGemm, "gate_up_stream", 0),
        (Family::Stream, false) => (Kernel::GroupedGemm, "down_stream", 0),
        (Family::MmaLarge, true) => (Kernel::GroupedGemm, "gate_up_large", 4 * 256 * 4 * 16),
        (Family::MmaLarge, false) => (Kernel::GroupedGemm, "down_large", 4 * 256 * 4 * 16),
        (Family::Wgmma, true) if bm == 64 => (Kernel::GroupedGemmSm90, "gate_up_wgmma64", wg),
        (Family::Wgmma, false) if bm == 64 => (Kernel::GroupedGemmSm90, "down_wgmma64", wg),
        (Family::Wgmma, true) => (Kernel::GroupedGemmSm90, "gate_up_wgmma", wg),
        (Family::Wgmma, false) => (Kernel::GroupedGemmSm90, "down_wgmma", wg),
    };
    // N extent of one block: weight rows (stream), or output columns (tiles).
    *bn = match (fam, gate_up) {
        (Family::Stream, true) => stream_rows() / 2,
        (Family::Stream, false) => stream_rows(),
        (Family::MmaLarge, true) => 64,
        (Family::MmaLarge, false) => 128,
        (Family::Wgmma, true) => 128,
        (Family::Wgmma, false) => 256,
    };
    *smem_bytes = smem;
    dev.function_with_smem(kernel, name, smem)
}

/// What differs between the two grouped GEMMs of the layer.
struct Operands {
    gate_up: bool,
    /// Rows of A: the tokens (gate/up, gathered by `order` on load or into `ws.y` first on
    /// Hopper) or `ws.act` (down).
    a: u64,
    /// Stacked weights, [n_experts * n_total, k].
    w: u64,
    /// Output rows in sorted order.
    out: u64,
    /// Router weight per pair applied in the epilogue (down), or 0.
    pair_weight: u64,
    /// Weight rows per expert and the reduction width.
    n_total: usize,
    k: usize,
    /// Output columns (the grid's N extent): inter for gate/up (SiLU·up halves), hidden for down.
    n_out: usize,
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
        ptr(dev, &ws.y)
    } else {
        ptr(dev, x)
    };
    let op = Operands {
        gate_up: true,
        a,
        w: ptr(dev, w),
        out: ptr(dev, &ws.act),
        pair_weight: 0,
        n_total: 2 * s.inter,
        k: s.hidden,
        n_out: s.inter,
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
        a: ptr(dev, &ws.act),
        w: ptr(dev, w),
        out: ptr(dev, &ws.y),
        pair_weight: ptr(dev, &ws.weights),
        n_total: s.hidden,
        k: s.inter,
        n_out: s.hidden,
    };
    // SAFETY (for grouped): act holds n_pairs x inter, the weights n_experts x hidden x inter
    // (checked by the caller), y n_pairs x hidden (workspace capacity).
    grouped(dev, ws, &op, n_tokens * s.top_k, path)
}

/// Launches one grouped GEMM over the tile map of `permute`: rows past each expert's end are
/// not stored; the widths meet the tiles' divisibility (MoeShape::validate, family()).
fn grouped(
    dev: &CudaDevice,
    ws: &MoeWorkspace,
    op: &Operands,
    n_pairs: usize,
    path: GemmPath,
) -> Result<()> {
    let s = ws.shape;
    let fam = family(dev, path, &s);
    let bm = wgmma_bm(n_pairs, s.n_experts);
    let (mut bn, mut smem) = (0, 0);
    let f = function(dev, fam, op.gate_up, bm, &mut bn, &mut smem)?;
    let max_tiles = path.max_tiles(n_pairs, s.n_experts);
    let (ne, nt, k, tk) = (
        s.n_experts as i32,
        op.n_total as i32,
        op.k as i32,
        s.top_k as i32,
    );
    let mut b = dev.stream().launch_builder(&f);
    let (ta, tb);
    let cfg = if fam == Family::Wgmma {
        ta = tensor_map(op.a, n_pairs, op.k)?;
        tb = tensor_map(op.w, s.n_experts * op.n_total, op.k)?;
        b.arg(&ta).arg(&tb);
        wgmma_grid(dev, max_tiles * (128 / bm) * (op.n_out / bn), bm)?
    } else {
        b.arg(&op.a).arg(&op.w);
        LaunchConfig {
            grid_dim: (max_tiles as u32, (op.n_out / bn) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        }
    };
    b.arg(&op.out)
        .arg(&ws.order)
        .arg(&op.pair_weight)
        .arg(&ws.offsets)
        .arg(&ws.tile_offsets)
        .arg(&ne)
        .arg(&nt)
        .arg(&k);
    if fam != Family::Wgmma {
        b.arg(&tk);
    }
    // SAFETY: the operands cover what the callers say; tiles come from the tile map of permute
    // (rows < n_pairs, tokens < n_tokens) and stores stop at each expert's last row.
    unsafe { b.launch(cfg) }.map_err(dev_err(if op.gate_up {
        "launching the gate/up grouped GEMM"
    } else {
        "launching the down grouped GEMM"
    }))?;
    Ok(())
}

/// xs = x[order / top_k] into `ws.y` (the token rows in sorted order, [n_pairs, hidden]).
fn gather(
    dev: &CudaDevice,
    ws: &mut MoeWorkspace,
    x: &DeviceBuffer<bf16>,
    n_pairs: usize,
) -> Result<()> {
    let f = dev.function(Kernel::GroupedGemm, "gather_rows")?;
    let (h, k) = (ws.shape.hidden as i32, ws.shape.top_k as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(&mut ws.y).arg(&ws.order).arg(&h).arg(&k);
    // SAFETY: n_pairs rows of order (from permute) index tokens < n_tokens of x; y holds
    // n_pairs x hidden (workspace capacity); hidden % 8 == 0 for the 16-byte copies.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (n_pairs as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching gather_rows"))?;
    Ok(())
}
