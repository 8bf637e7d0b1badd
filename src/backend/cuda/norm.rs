//! RMSNorm with the residual add fused (kernels/norm.cu).

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::dev_err;
use super::device::{CudaDevice, DeviceBuffer, Kernel};
use crate::error::{Error, Result};

/// `residual += delta` (when given, stored back as bf16), then `out = RMSNorm(residual) · w`,
/// over `rows` rows of `hidden` values.
pub fn add_rms_norm(
    dev: &CudaDevice,
    residual: &mut DeviceBuffer<bf16>,
    delta: Option<&DeviceBuffer<bf16>>,
    w: &DeviceBuffer<bf16>,
    out: &mut DeviceBuffer<bf16>,
    rows: usize,
    hidden: usize,
    eps: f32,
) -> Result<()> {
    let n = rows * hidden;
    if residual.len() < n || out.len() < n || w.len() < hidden || delta.is_some_and(|d| d.len() < n)
    {
        return Err(Error::Shape(format!(
            "add_rms_norm over {rows}x{hidden}: a buffer is too short"
        )));
    }
    let f = dev.function(Kernel::Norm, "add_rms_norm")?;
    let delta_ptr = delta
        .map(|d| cudarc::driver::DevicePtr::device_ptr(d, dev.stream()).0)
        .unwrap_or(0);
    let h = hidden as i32;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(residual)
        .arg(&delta_ptr)
        .arg(w)
        .arg(out)
        .arg(&h)
        .arg(&eps);
    // SAFETY: one block per row reads and writes `hidden` values of each buffer (lengths checked).
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching add_rms_norm"))?;
    Ok(())
}
