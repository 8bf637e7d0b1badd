//! The CUDA versions of [`crate::ops`]: each takes and returns [`Tensor`]s whose storage is on one
//! GPU, queues its kernel (kernels/ops.cu) or cuBLAS call on the device's stream and returns
//! without waiting. Activations are f32; weight matrices are bf16 and go through cuBLAS with f32
//! accumulation (the input rows are rounded to bf16 for the product).

use std::sync::Arc;

use half::bf16;

use super::storage::{alloc, CudaHandle, CudaStorage, DevBuf};
use super::CudaDevice;
use crate::backend::cpu::rope::Rotary;

pub use super::attention::paged_attention;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Storage, Tensor};

/// Launches `kernels/ops.cu`'s `$name` over `$grid` blocks of `$block` threads; the arguments are
/// bound to locals first so they outlive the launch.
macro_rules! launch {
    ($dev:expr, $name:literal, $grid:expr, $block:expr, $smem:expr; $($a:ident = $v:expr),* $(,)?) => {
        launch!(@go $dev, $name, concat!("launching ", $name), $grid, $block, $smem; $($a = $v),*)
    };
    // A kernel chosen at run time (`$name` a &'static str, which also names it in errors).
    ($dev:expr, dyn $name:expr, $grid:expr, $block:expr, $smem:expr; $($a:ident = $v:expr),* $(,)?) => {
        launch!(@go $dev, $name, $name, $grid, $block, $smem; $($a = $v),*)
    };
    (@go $dev:expr, $name:expr, $what:expr, $grid:expr, $block:expr, $smem:expr; $($a:ident = $v:expr),*) => {{
        $(let $a = $v;)*
        let f = $dev.function($crate::backend::cuda::Kernel::Ops, $name)?;
        let mut b = $crate::backend::cuda::overlap::Args::new();
        $(b.arg(&$a);)*
        let cfg = ::cudarc::driver::LaunchConfig { grid_dim: (($grid) as u32, 1, 1), block_dim: (($block) as u32, 1, 1), shared_mem_bytes: ($smem) as u32 };
        // SAFETY: every pointer argument is a live buffer of this device whose length the caller
        // checked against the sizes passed beside it; the kernel touches nothing beyond them, and
        // nothing at all before the previous kernel ends (after_previous_grid, kernels/ops.cu).
        unsafe { $crate::backend::cuda::overlap::launch(&$dev, &f, cfg, &mut b, $what) }?;
    }};
}

mod rows;
pub(crate) use rows::scatter_rows_at;
pub use rows::{concat_cols, gather_rows, narrow_cols, scatter_rows};

pub(crate) fn gpu(t: &Tensor) -> Result<&CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s),
        Storage::Cpu(_) => Err(Error::Device(format!(
            "a CPU tensor {} met GPU tensors in one op",
            t.shape()
        ))),
    }
}

pub(crate) fn gpu_mut(t: &mut Tensor) -> Result<&mut CudaStorage> {
    match t.storage_mut() {
        Storage::Cuda(s) => {
            s.make_unique()?;
            Ok(s)
        }
        Storage::Cpu(_) => Err(Error::Device(
            "a CPU tensor met GPU tensors in one op".into(),
        )),
    }
}

pub(crate) fn f32_ptr(t: &Tensor) -> Result<u64> {
    let s = gpu(t)?;
    if s.is_bf16() {
        return Err(Error::Device(format!(
            "an f32 activation was expected, got a bf16 tensor {}",
            t.shape()
        )));
    }
    Ok(s.ptr())
}

/// The device addresses of a key and a value cache and whether their elements are bf16 (the
/// cache a GPU model allocates) or f32; both must be alike, since one kernel reads both.
pub(crate) fn cache_ptrs(keys: &Tensor, values: &Tensor) -> Result<(u64, u64, bool)> {
    let (k, v) = (gpu(keys)?, gpu(values)?);
    if k.is_bf16() != v.is_bf16() {
        return Err(Error::Device(format!(
            "key and value caches of different element types ({} and {} values)",
            keys.numel(),
            values.numel()
        )));
    }
    Ok((k.ptr(), v.ptr(), k.is_bf16()))
}

fn rows_of(x: &Tensor) -> (usize, usize) {
    let d = x.dims();
    let cols = *d.last().unwrap_or(&0);
    (x.numel().checked_div(cols).unwrap_or(0), cols)
}

pub(crate) fn wrap(dev: &CudaHandle, shape: impl Into<Shape>, dtype: DType, buf: DevBuf) -> Tensor {
    Tensor::from_storage(
        shape,
        dtype,
        Storage::Cuda(CudaStorage {
            dev: dev.clone(),
            buf: Arc::new(buf),
        }),
    )
}

/// A new f32 tensor of `shape` on `dev`, uninitialised (NaN under poisoning).
pub(crate) fn empty(dev: &CudaHandle, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    let buf = alloc::<f32>(dev, shape.numel())?;
    Ok(wrap(dev, shape, DType::F32, DevBuf::F32(buf)))
}

pub(crate) fn upload_i32(dev: &CudaDevice, v: &[i32]) -> Result<cudarc::driver::CudaSlice<i32>> {
    if v.is_empty() {
        return alloc::<i32>(dev, 1);
    }
    dev.upload(v)
}

pub(crate) fn raw<T>(dev: &CudaDevice, s: &cudarc::driver::CudaSlice<T>) -> u64 {
    cudarc::driver::DevicePtr::device_ptr(s, dev.stream()).0
}

pub(crate) const THREADS: usize = 256;

pub(crate) fn grid_for(n: usize) -> usize {
    n.div_ceil(THREADS).clamp(1, 65_535)
}

/// `host` (a CPU tensor) on `dev`: bf16 when `as_bf16`, else f32.
pub fn upload(host: &Tensor, dev: &CudaHandle, as_bf16: bool) -> Result<Tensor> {
    let v = host.as_slice();
    let buf = if as_bf16 {
        let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        DevBuf::Bf16(if b.is_empty() {
            alloc(dev, 1)?
        } else {
            dev.upload(&b)?
        })
    } else {
        DevBuf::F32(if v.is_empty() {
            alloc(dev, 1)?
        } else {
            dev.upload(v)?
        })
    };
    Ok(wrap(dev, host.shape().clone(), host.dtype(), buf))
}

/// Zeros of `shape`, f32.
pub fn zeros(dev: &CudaHandle, shape: Shape) -> Result<Tensor> {
    let buf = dev.zeros::<f32>(shape.numel().max(1))?;
    Ok(wrap(dev, shape, DType::F32, DevBuf::F32(buf)))
}

/// Zeros of `shape` stored as bf16 (a KV cache: half the bytes of f32).
pub fn zeros_bf16(dev: &CudaHandle, shape: Shape) -> Result<Tensor> {
    let buf = dev.zeros::<bf16>(shape.numel().max(1))?;
    Ok(wrap(dev, shape, DType::BF16, DevBuf::Bf16(buf)))
}

/// `x · wᵀ (+ b)` over the last dim of `x`: cuBLAS bf16 × bf16 with f32 accumulation and output
/// for a bf16 weight; all in f32 for an f32 weight (the routers, as transformers computes them).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dev = gpu(x)?.device().clone();
    let (m, k) = rows_of(x);
    let (n, wk) = (w.dims()[0], w.dims()[1]);
    if k != wk || b.is_some_and(|b| b.numel() != n) {
        return Err(Error::Shape(format!(
            "linear: input {} against weight {}",
            x.shape(),
            w.shape()
        )));
    }
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("x has a last dim") = n;
    let out = empty(&dev, out_dims)?;
    if m == 0 {
        return Ok(out);
    }
    if !gpu(w)?.is_bf16() {
        use cudarc::cublas::sys::cudaDataType;
        super::blas::linear_raw_typed(
            &dev,
            f32_ptr(x)?,
            gpu(w)?.ptr(),
            gpu(&out)?.ptr(),
            m,
            k,
            n,
            cudaDataType::CUDA_R_32F,
        )?;
        if let Some(b) = b {
            let (yp, bp, rows, cols) = (gpu(&out)?.ptr(), f32_ptr(b)?, m as i64, n as i32);
            launch!(dev, "add_bias", grid_for(m * n), THREADS, 0; a = yp, b2 = bp, c = rows, d = cols);
        }
        return Ok(out);
    }
    // Inputs rounded to bf16 for the tensor cores.
    let xb = bf16_copy(&dev, f32_ptr(x)?, m * k)?;
    let ws = gpu(w)?;
    let wb_owned;
    let wbp = if ws.is_bf16() {
        ws.ptr()
    } else {
        wb_owned = bf16_copy(&dev, ws.ptr(), n * k)?;
        raw(&dev, &wb_owned)
    };
    super::blas::linear_raw(&dev, raw(&dev, &xb), wbp, gpu(&out)?.ptr(), m, k, n)?;
    if let Some(b) = b {
        let (yp, bp, rows, cols) = (gpu(&out)?.ptr(), f32_ptr(b)?, m as i64, n as i32);
        launch!(dev, "add_bias", grid_for(m * n), THREADS, 0; a = yp, b2 = bp, c = rows, d = cols);
    }
    drop(xb);
    Ok(out)
}

/// `n` f32 values at device address `src` as a new bf16 buffer (rounded to nearest even): the
/// tensor cores' operands.
pub(crate) fn bf16_copy(
    dev: &CudaHandle,
    src: u64,
    n: usize,
) -> Result<cudarc::driver::CudaSlice<bf16>> {
    let out = alloc::<bf16>(dev, n)?;
    let (dst, nel) = (raw(dev, &out), n as i64);
    launch!(dev, "cast_f32_bf16", grid_for(n), THREADS, 0; a = src, b2 = dst, c = nel);
    Ok(out)
}

/// [`crate::ops::linear_heads`] on the GPU: every head in one batched cuBLAS call, bf16 inputs
/// (x rounded for the tensor cores) when the weights are bf16, f32 otherwise.
pub fn linear_heads(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    use cudarc::cublas::sys::cudaDataType;
    let dev = gpu(x)?.device().clone();
    let (h, n, k) = crate::ops::heads_of(x, w)?;
    let m = rows_of(x).0;
    let out = empty(&dev, [m, h * n])?;
    if m == 0 || h == 0 {
        return Ok(out);
    }
    let (ws, op) = (gpu(w)?, gpu(&out)?.ptr());
    // bf16 weights take x rounded to bf16 (a copy kept until the GEMM is queued); f32 take x.
    let (xb, xp, input) = if ws.is_bf16() {
        let xb = bf16_copy(&dev, f32_ptr(x)?, m * h * k)?;
        let xp = raw(&dev, &xb);
        (Some(xb), xp, cudaDataType::CUDA_R_16BF)
    } else {
        (None, f32_ptr(x)?, cudaDataType::CUDA_R_32F)
    };
    super::blas::linear_heads_raw(&dev, xp, ws.ptr(), op, (m, h, k, n), (h * n, n), input)?;
    drop(xb);
    Ok(out)
}

/// Rows of the embedding table (bf16 or f32) for `ids`.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let ts = gpu(table)?;
    let dev = ts.device().clone();
    let (vocab, hidden) = (table.dims()[0], table.dims()[1]);
    crate::ops::check_token_ids(ids, vocab)?;
    let out = empty(&dev, [ids.len(), hidden])?;
    if ids.is_empty() {
        return Ok(out);
    }
    let idv: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let idb = upload_i32(&dev, &idv)?;
    let (tp, ip, op, h) = (ts.ptr(), raw(&dev, &idb), gpu(&out)?.ptr(), hidden as i32);
    if ts.is_bf16() {
        launch!(dev, "embedding_bf16", ids.len(), THREADS, 0; a = tp, b = ip, c = op, d = h);
    } else {
        launch!(dev, "embedding_f32", ids.len(), THREADS, 0; a = tp, b = ip, c = op, d = h);
    }
    drop(idb);
    Ok(out)
}

fn norm_launch(
    dev: &CudaHandle,
    res: u64,
    delta: u64,
    w: &Tensor,
    y: u64,
    rows: usize,
    eps: f32,
) -> Result<()> {
    let (wp, cols) = (f32_ptr(w)?, w.numel());
    // The kernel keeps a row in registers, NORM_V = 16 values a thread (kernels/ops.cu).
    if cols > 16 * 1024 {
        return Err(Error::Shape(format!(
            "RMSNorm over rows of {cols}: the GPU kernel takes at most 16384"
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let threads = cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024);
    let c = cols as i32;
    launch!(dev, "rms_norm_f32", rows, threads, 0; a = res, b = delta, cw = wp, d = y, e = c, g = eps);
    Ok(())
}

/// RMSNorm of every `w.numel()`-wide row.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let dev = gpu(x)?.device().clone();
    let out = empty(&dev, x.dims().to_vec())?;
    let rows = x.numel() / w.numel().max(1);
    norm_launch(&dev, f32_ptr(x)?, 0, w, gpu(&out)?.ptr(), rows, eps)?;
    Ok(out)
}

/// `residual += delta`, then RMSNorm(residual).
pub fn add_rms_norm(residual: &mut Tensor, delta: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if residual.numel() != delta.numel() {
        return Err(Error::Shape(format!(
            "add_rms_norm: residual {} and delta {}",
            residual.shape(),
            delta.shape()
        )));
    }
    let dp = f32_ptr(delta)?;
    let dev = gpu(residual)?.device().clone();
    let out = empty(&dev, residual.dims().to_vec())?;
    let rows = residual.numel() / w.numel().max(1);
    let rp = gpu_mut(residual)?.ptr();
    norm_launch(&dev, rp, dp, w, gpu(&out)?.ptr(), rows, eps)?;
    Ok(out)
}

/// RMSNorm in place over `w.numel()`-wide chunks.
pub fn rms_norm_chunks(x: &mut Tensor, w: &Tensor, eps: f32) -> Result<()> {
    let rows = x.numel() / w.numel().max(1);
    let s = gpu_mut(x)?;
    let (dev, p) = (s.device().clone(), s.ptr());
    norm_launch(&dev, p, 0, w, p, rows, eps)
}

/// `x += y`.
pub fn add_in_place(x: &mut Tensor, y: &Tensor) -> Result<()> {
    if x.numel() != y.numel() {
        return Err(Error::Shape(format!(
            "add: {} and {}",
            x.shape(),
            y.shape()
        )));
    }
    let yp = f32_ptr(y)?;
    let n = x.numel();
    let s = gpu_mut(x)?;
    let (dev, xp) = (s.device().clone(), s.ptr());
    if n > 0 {
        let nn = n as i64;
        launch!(dev, "add_in_place", grid_for(n), THREADS, 0; a = xp, b = yp, c = nn);
    }
    Ok(())
}

/// silu(gate) · up over rows of `[gate | up]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_of(gate_up);
    let dev = gpu(gate_up)?.device().clone();
    let out = empty(&dev, [rows, cols / 2])?;
    let (gp, op, r, inter) = (
        f32_ptr(gate_up)?,
        gpu(&out)?.ptr(),
        rows as i64,
        (cols / 2) as i32,
    );
    if rows * cols > 0 {
        launch!(dev, "silu_mul_f32", grid_for(rows * cols / 2), THREADS, 0; a = gp, b = op, c = r, d = inter);
    }
    Ok(out)
}

/// RoPE on every row of `x` at that row's position; cos and sin are computed on the host exactly
/// as the CPU reference computes them.
pub fn rope(x: &mut Tensor, rotary: &Rotary, positions: &[usize]) -> Result<()> {
    let cs: Vec<f32> = positions.iter().flat_map(|&p| rotary.cos_sin(p)).collect();
    let dev = gpu(x)?.device().clone();
    let csb = if cs.is_empty() {
        None
    } else {
        Some(dev.upload(&cs)?)
    };
    rope_with(
        x,
        rotary,
        positions.len(),
        csb.as_ref().map_or(0, |b| raw(&dev, b)),
    )
}

/// RoPE with the cos/sin table at `cs` on the device: one row (cos then sin) for each of the
/// `n_pos` rows of `x`.
pub(crate) fn rope_with(x: &mut Tensor, rotary: &Rotary, n_pos: usize, cs: u64) -> Result<()> {
    let (rows, cols) = rows_of(x);
    let half = rotary.dim() / 2;
    if rows != n_pos || half == 0 || cols % (2 * half) != 0 {
        return Err(Error::Shape(format!(
            "rope over {} with {n_pos} positions and dim {}",
            x.shape(),
            rotary.dim()
        )));
    }
    let s = gpu_mut(x)?;
    let (dev, xp) = (s.device().clone(), s.ptr());
    if rows == 0 {
        return Ok(());
    }
    let per_row = (cols / 2).div_ceil(256);
    let (c, h, il, pr) = (
        cols as i32,
        half as i32,
        rotary.interleaved() as i32,
        per_row as i32,
    );
    launch!(dev, "rope_f32", rows * per_row, 256, 0; a = xp, b = cs, cc = c, d = h, e = il, f = pr);
    Ok(())
}

/// Grouped SwiGLU: rows `offsets[e]..offsets[e+1]` of `x` through expert e (naive kernels, one
/// warp per output).
pub fn grouped_swiglu(
    x: &Tensor,
    offsets: &[usize],
    gate_up: &Tensor,
    down: &Tensor,
    biases: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (rows, hidden) = rows_of(x);
    let inter = down.dims()[2];
    let n_exp = down.dims()[0];
    if offsets.len() != n_exp + 1
        || offsets[n_exp] != rows
        || gate_up.dims() != [n_exp, 2 * inter, hidden]
    {
        return Err(Error::Shape(format!(
            "grouped_swiglu: x {} offsets {offsets:?} gate_up {} down {}",
            x.shape(),
            gate_up.shape(),
            down.shape()
        )));
    }
    let dev = gpu(x)?.device().clone();
    let y = empty(&dev, [rows, hidden])?;
    if rows == 0 {
        return Ok(y);
    }
    let expert: Vec<i32> = (0..n_exp)
        .flat_map(|e| std::iter::repeat_n(e as i32, offsets[e + 1] - offsets[e]))
        .collect();
    let eb = upload_i32(&dev, &expert)?;
    let act = empty(&dev, [rows, inter])?;
    let (xp, gs, ds) = (f32_ptr(x)?, gpu(gate_up)?, gpu(down)?);
    let (gp, dp, ep, ap, yp) = (
        gs.ptr(),
        ds.ptr(),
        raw(&dev, &eb),
        gpu(&act)?.ptr(),
        gpu(&y)?.ptr(),
    );
    let (gbp, dbp) = match biases {
        Some((gb, db)) => (f32_ptr(gb)?, f32_ptr(db)?),
        None => (0, 0),
    };
    let (r, hd, it) = (rows as i32, hidden as i32, inter as i32);
    let warps_per_block = THREADS / 32;
    let g1 = (rows * inter).div_ceil(warps_per_block);
    if gs.is_bf16() {
        launch!(dev, "grouped_gate_up_bf16", g1, THREADS, 0; a = xp, b = gp, c = gbp, d = ep, e = ap, f2 = r, g = hd, h = it);
    } else {
        launch!(dev, "grouped_gate_up_f32", g1, THREADS, 0; a = xp, b = gp, c = gbp, d = ep, e = ap, f2 = r, g = hd, h = it);
    }
    let g2 = (rows * hidden).div_ceil(warps_per_block);
    if ds.is_bf16() {
        launch!(dev, "grouped_down_bf16", g2, THREADS, 0; a = ap, b = dp, c = dbp, d = ep, e = yp, f2 = r, g = hd, h = it);
    } else {
        launch!(dev, "grouped_down_f32", g2, THREADS, 0; a = ap, b = dp, c = dbp, d = ep, e = yp, f2 = r, g = hd, h = it);
    }
    drop((eb, act));
    Ok(y)
}

/// Unpermute and sum with the router weights, in j order per token.
pub fn combine(y: &Tensor, order: &[u32], weights: &[f32], top_k: usize) -> Result<Tensor> {
    let (_, h) = rows_of(y);
    let n_tokens = weights.len() / top_k.max(1);
    let dev = gpu(y)?.device().clone();
    let out = empty(&dev, [n_tokens, h])?;
    if n_tokens == 0 {
        return Ok(out);
    }
    let mut row_of_pair = vec![0i32; order.len()];
    for (row, &pair) in order.iter().enumerate() {
        row_of_pair[pair as usize] = row as i32;
    }
    let (rb, wb) = (upload_i32(&dev, &row_of_pair)?, dev.upload(weights)?);
    let (yp, rp, wp, op, hh, k) = (
        f32_ptr(y)?,
        raw(&dev, &rb),
        raw(&dev, &wb),
        gpu(&out)?.ptr(),
        h as i32,
        top_k as i32,
    );
    launch!(dev, "combine_f32", n_tokens, THREADS, 0; a = yp, b = rp, c = wp, d = op, e = hh, f2 = k);
    drop((rb, wb));
    Ok(out)
}

/// Row t of `s` times sigmoid(gate[t]).
pub fn sigmoid_scale_rows(s: &mut Tensor, gate: &Tensor) -> Result<()> {
    let (rows, cols) = rows_of(s);
    if gate.numel() != rows {
        return Err(Error::Shape(format!(
            "sigmoid_scale_rows: {} rows, {} gates",
            rows,
            gate.numel()
        )));
    }
    let gp = f32_ptr(gate)?;
    let st = gpu_mut(s)?;
    let (dev, sp) = (st.device().clone(), st.ptr());
    if rows > 0 {
        let c = cols as i32;
        launch!(dev, "sigmoid_scale_rows", rows, THREADS, 0; a = sp, b = gp, cc = c);
    }
    Ok(())
}

/// The index of the largest value of every row (the first on ties); waits for the GPU.
pub fn argmax_rows(x: &Tensor) -> Result<Vec<u32>> {
    let (rows, cols) = rows_of(x);
    let dev = gpu(x)?.device().clone();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let out = alloc::<i32>(&dev, rows)?;
    let (xp, op, c) = (f32_ptr(x)?, raw(&dev, &out), cols as i32);
    launch!(dev, "argmax_rows", rows, 1024, 0; a = xp, b = op, cc = c);
    Ok(dev
        .download(&out)?
        .into_iter()
        .take(rows)
        .map(|i| i as u32)
        .collect())
}
