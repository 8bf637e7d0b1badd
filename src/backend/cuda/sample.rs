//! Greedy picks of logits rows on the GPU (kernels/sample.cu): a decode step copies one index and
//! one margin per row to the host instead of the whole [rows, vocab] logits.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::dev_err;
use super::device::Kernel;
use super::ops::gpu;
use super::storage::alloc;
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
            block_dim: (256, 1, 1),
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
