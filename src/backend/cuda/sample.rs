//! Picks of logits rows on the GPU (kernels/sample.cu): greedy picks with their margins, and
//! temperature / top-k / top-p draws, so a decode step copies a few numbers per row to the host
//! instead of the whole [rows, vocab] logits.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::dev_err;
use super::device::Kernel;
use super::ops::{gpu, upload_i32};
use super::storage::alloc;
use crate::backend::cpu::sample::RowDraw;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Per row of `x` (f32, on a GPU): the index of the largest value (the first on ties) and the
/// largest minus the second largest value, as `backend::cpu::sample::{argmax, top2_margin}`.
/// Waits for the GPU (the step's one copy to the host).
pub fn argmax_margin_rows(x: &Tensor) -> Result<Vec<(u32, f32)>> {
    let s = gpu(x)?;
    if s.is_bf16() {
        return Err(Error::Device(format!(
            "greedy picks need f32 logits, got a bf16 tensor {}",
            x.shape()
        )));
    }
    let d = x.dims();
    let cols = *d.last().unwrap_or(&0);
    let rows = x.numel().checked_div(cols).unwrap_or(0);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let dev = s.device().clone();
    let mut out = alloc::<i32>(&dev, 2 * rows)?;
    let f = dev.function(Kernel::Sample, "argmax_margin_rows")?;
    let (xp, c) = (s.ptr(), cols as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&xp).arg(&mut out).arg(&c);
    // SAFETY: one block per row reads `cols` values of row `blockIdx.x` of x (rows · cols values,
    // the tensor's size) and writes out[2r], out[2r + 1] (2 · rows values allocated above).
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching argmax_margin_rows"))?;
    Ok(dev
        .download(&out)?
        .chunks_exact(2)
        .take(rows)
        .map(|p| (p[0] as u32, f32::from_bits(p[1] as u32)))
        .collect())
}

/// Threads per block of `sample_rows` (SAMPLE_THREADS in kernels/sample.cu).
const SAMPLE_THREADS: u32 = 512;

/// `backend::cpu::sample::sample` of the rows of `x` ([rows, vocab] f32, on a GPU) that `draws`
/// name, one block per draw: the same order (logit descending, lower id first on ties), top-k,
/// temperature softmax over the kept tokens, top-p nucleus and pick by the draw's uniform, so the
/// token is the host's except where the uniform lies within float rounding of a boundary of the
/// running sum. Rows of -inf or NaN pick what the host picks. The draws' parameters go up in one
/// small copy; only the tokens come back (this waits for the GPU).
pub fn sample_rows(x: &Tensor, draws: &[RowDraw]) -> Result<Vec<u32>> {
    let s = gpu(x)?;
    if s.is_bf16() {
        return Err(Error::Device(format!(
            "sampling needs f32 logits, got a bf16 tensor {}",
            x.shape()
        )));
    }
    if draws.is_empty() {
        return Ok(Vec::new());
    }
    let d = x.dims();
    let cols = *d.last().unwrap_or(&0);
    let rows = x.numel().checked_div(cols).unwrap_or(0);
    // The kernel's keys hold the token id in idbits <= 31 bits next to 32 bits of the value.
    if cols == 0 || cols > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "sampling needs 1 to 2^31 - 1 logits per row, got {}",
            x.shape()
        )));
    }
    let mut packed = Vec::with_capacity(5 * draws.len());
    for dr in draws {
        if dr.row >= rows {
            return Err(Error::Shape(format!(
                "sampling row {} of logits {}",
                dr.row,
                x.shape()
            )));
        }
        let p = &dr.params;
        let kept = if p.top_k > 0 { p.top_k.min(cols) } else { cols };
        packed.extend_from_slice(&[
            dr.row as i32,
            p.temperature.to_bits() as i32,
            kept as i32,
            p.top_p.to_bits() as i32,
            dr.uniform.to_bits() as i32,
        ]);
    }
    let dev = s.device().clone();
    let params = upload_i32(&dev, &packed)?;
    let mut out = alloc::<i32>(&dev, draws.len())?;
    let f = dev.function(Kernel::Sample, "sample_rows")?;
    let (xp, c) = (s.ptr(), cols as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&xp).arg(&params).arg(&mut out).arg(&c);
    // SAFETY: block b reads params[5b..5b + 5] (5 · draws values uploaded above), `cols` values of
    // row params[5b] < rows of x (checked above), and writes out[b] (draws values allocated).
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (draws.len() as u32, 1, 1),
            block_dim: (SAMPLE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching sample_rows"))?;
    Ok(dev
        .download(&out)?
        .into_iter()
        .take(draws.len())
        .map(|t| t as u32)
        .collect())
}
