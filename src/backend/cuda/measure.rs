//! What the GPU benchmarks share: seeded uniform fills, CUDA-event timing, and the physical
//! ceilings their floors use (the device-to-device copy rate and the cuBLAS bf16 GEMM rate,
//! measured on the GPU in use).
//!
//! Each ceiling is measured twice: as a short burst from whatever state the GPU is in, and
//! sustained, after half a second of the same work back to back. Under a sustained load the GPU
//! meets its power cap (on the H200: 700 W, the SM clock falling from 1980 MHz to 1.2–1.5 GHz,
//! nvidia-smi's throttle reason "SW power cap"), which a burst of a few milliseconds never does;
//! a benchmark that keeps the GPU busy for long runs in the sustained state, so that is the
//! ceiling its floor should be reached against. Both are reported.

use std::time::Instant;

use cudarc::driver::{sys::CUevent_flags, LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::{CudaDevice, DeviceBuffer, Kernel};
use super::{blas, dev_err};
use crate::error::Result;

/// Fills `buf` with `scale` x uniform(-1, 1) values from a counter-based hash of `seed`.
pub fn fill_uniform(
    dev: &CudaDevice,
    buf: &mut DeviceBuffer<bf16>,
    seed: u64,
    scale: f32,
) -> Result<()> {
    let f = dev.function(Kernel::Fill, "fill_uniform_bf16")?;
    let n = buf.len() as u64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(buf).arg(&n).arg(&seed).arg(&scale);
    // SAFETY: a grid-stride loop over exactly n elements of buf.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (1024, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(dev_err("launching fill_uniform_bf16"))?;
    Ok(())
}

/// Milliseconds of one run of `f`, between a pair of CUDA events on the device's stream.
pub fn event_ms(dev: &CudaDevice, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let ctx = dev.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev_err("creating a CUDA event"))
    };
    let (a, b) = (event()?, event()?);
    a.record(dev.stream())
        .map_err(dev_err("recording an event"))?;
    f()?;
    b.record(dev.stream())
        .map_err(dev_err("recording an event"))?;
    b.synchronize().map_err(dev_err("waiting for an event"))?;
    Ok(a.elapsed_ms(&b).map_err(dev_err("reading an event pair"))? as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `reps` runs of `f` (each between its own pair of events) after
/// `warmup` untimed runs.
pub fn median_ms(
    dev: &CudaDevice,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let times = (0..reps.max(1))
        .map(|_| event_ms(dev, &mut f))
        .collect::<Result<Vec<_>>>()?;
    Ok(median(times))
}

/// Median milliseconds of `f` once it has run back to back for `secs` seconds: the runs of the
/// second half of a `2 * secs` window.
pub fn sustained_ms(dev: &CudaDevice, secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut late = Vec::new();
    while start.elapsed().as_secs_f64() < 2.0 * secs {
        let ms = event_ms(dev, &mut f)?;
        if start.elapsed().as_secs_f64() >= secs {
            late.push(ms);
        }
    }
    if late.is_empty() {
        late.push(event_ms(dev, &mut f)?);
    }
    Ok(median(late))
}

/// The rates a GPU benchmark's floor divides by, measured on `dev`.
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    /// Device-to-device copy of 2 GiB, bytes read + written per second, sustained.
    pub copy_bps: f64,
    /// The same copy as a burst.
    pub burst_copy_bps: f64,
    /// cuBLAS bf16 GEMM 8192³ (f32 accumulation), flop/s, sustained.
    pub gemm_fps: f64,
    /// The same GEMM as a burst.
    pub burst_gemm_fps: f64,
}

impl Ceilings {
    /// Seconds of back-to-back work before the sustained runs are timed (as long again).
    const SUSTAIN_S: f64 = 0.5;

    /// Measures both rates, each first as a burst (median of 10 runs after 2 warm-ups), then
    /// sustained; about 2 s and 4.5 GB of device memory.
    pub fn measure(dev: &CudaDevice) -> Result<Self> {
        let n = 1usize << 30;
        let mut src: DeviceBuffer<bf16> = dev.zeros(n)?;
        fill_uniform(dev, &mut src, 7, 1.0)?;
        let mut dst: DeviceBuffer<bf16> = dev.zeros(n)?;
        let mut copy = || {
            dev.stream()
                .memcpy_dtod(&src, &mut dst)
                .map_err(dev_err("copying on the device"))
        };
        let copy_bytes = 2.0 * (n * 2) as f64;
        let burst_copy = median_ms(dev, 2, 10, &mut copy)?;
        let copy = sustained_ms(dev, Self::SUSTAIN_S, &mut copy)?;
        drop((src, dst));
        let s = 8192;
        let mut a: DeviceBuffer<bf16> = dev.zeros(s * s)?;
        let mut b: DeviceBuffer<bf16> = dev.zeros(s * s)?;
        fill_uniform(dev, &mut a, 8, 1.0)?;
        fill_uniform(dev, &mut b, 9, 1.0)?;
        let mut c: DeviceBuffer<bf16> = dev.zeros(s * s)?;
        let mut gemm = || blas::linear(dev, &a, &b, &mut c, s, s, s);
        let flops = 2.0 * (s as f64).powi(3);
        let burst_gemm = median_ms(dev, 2, 10, &mut gemm)?;
        let gemm = sustained_ms(dev, Self::SUSTAIN_S, &mut gemm)?;
        Ok(Self {
            copy_bps: copy_bytes / (copy * 1e-3),
            burst_copy_bps: copy_bytes / (burst_copy * 1e-3),
            gemm_fps: flops / (gemm * 1e-3),
            burst_gemm_fps: flops / (burst_gemm * 1e-3),
        })
    }

    /// One line for a benchmark's header.
    pub fn describe(&self) -> String {
        format!(
            "copy {:.2} TB/s sustained ({:.2} burst), read + written; cuBLAS bf16 GEMM 8192^3 {:.0} TFLOP/s sustained ({:.0} burst)",
            self.copy_bps / 1e12,
            self.burst_copy_bps / 1e12,
            self.gemm_fps / 1e12,
            self.burst_gemm_fps / 1e12
        )
    }
}
