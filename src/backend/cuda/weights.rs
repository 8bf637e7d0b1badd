//! Building weights on the GPU without a trip through the host: dtype conversion of tensors
//! already there, concatenation (stacking experts, fusing QKV), and [`GpuRandomWeights`], the
//! `--random-weights` source that fills every tensor by a kernel.
//!
//! The random values follow the rules of [`crate::checkpoint::RandomWeights`] (norms 1, biases 0,
//! everything else N(0, 1/fan_in) rounded to bf16) and are a pure function of (seed, tensor name,
//! index), but they are not the CPU generator's numbers: the CPU draws from ChaCha8 streams, the
//! GPU from a counter-based hash (kernels/fill.cu), so a random model on `--device cuda` is a
//! different (equally deterministic) model than the same seed on the CPU.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::ops::{gpu, wrap};
use super::storage::{alloc, CudaHandle, DevBuf};
use super::{dev_err, Kernel};
use crate::checkpoint::{fill_for, fnv1a, CheckpointError, Fill, WeightSource};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// Launches `$name` of `$kernel` over `$blocks` blocks of 256 threads with the given arguments.
macro_rules! launch {
    ($dev:expr, $kernel:expr, $name:expr, $blocks:expr; $($arg:expr),*) => {{
        let f = $dev.function($kernel, $name)?;
        let mut b = $dev.stream().launch_builder(&f);
        $(b.arg($arg);)*
        let cfg = LaunchConfig {
            grid_dim: (($blocks) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every caller passes a buffer of this device with at least the element count
        // it passes beside it; the grid-stride kernels touch elements below that count only.
        unsafe { b.launch(cfg) }.map_err(dev_err("launching a weight kernel"))?;
    }};
}

/// `t` (on a GPU) on `dev` as bf16 (`as_bf16`) or f32: shared when it already is, cast on the
/// device when only the element type differs, through the host when the GPU differs.
pub fn convert(t: &Tensor, dev: &CudaHandle, as_bf16: bool) -> Result<Tensor> {
    let s = gpu(t)?;
    if !std::sync::Arc::ptr_eq(s.device(), dev) {
        return super::ops::upload(&t.to_cpu()?, dev, as_bf16);
    }
    if s.is_bf16() == as_bf16 {
        return Ok(t.clone());
    }
    let n = t.numel();
    let (name, buf) = if as_bf16 {
        ("cast_f32_bf16", DevBuf::Bf16(alloc::<bf16>(dev, n)?))
    } else {
        ("cast_bf16_f32", DevBuf::F32(alloc::<f32>(dev, n)?))
    };
    let out = wrap(dev, t.shape().clone(), t.dtype(), buf);
    let (src, dst, nn) = (s.ptr(), gpu(&out)?.ptr(), n as i64);
    launch!(dev, Kernel::Ops, name, n.div_ceil(256).clamp(1, 65_535); &src, &dst, &nn);
    Ok(out)
}

/// `parts` (GPU tensors of one element type) back to back as one tensor of `shape`.
pub fn concat(parts: &[&Tensor], shape: Shape, dtype: DType) -> Result<Tensor> {
    let first = gpu(parts[0])?;
    let dev = first.device().clone();
    let bf = first.is_bf16();
    let mut storages = Vec::with_capacity(parts.len());
    for p in parts {
        let s = gpu(p)?;
        if s.is_bf16() != bf || !std::sync::Arc::ptr_eq(s.device(), &dev) {
            return Err(Error::Device(
                "concatenating tensors of different GPUs or element types".into(),
            ));
        }
        storages.push(s);
    }
    let n = shape.numel();
    let stream = dev.stream();
    let buf = if bf {
        let mut out = alloc::<bf16>(&dev, n)?;
        let mut at = 0;
        for s in &storages {
            let src = s.bf16_slice().expect("checked bf16");
            let len = src.len().min(n - at);
            stream
                .memcpy_dtod(&src.slice(..len), &mut out.slice_mut(at..at + len))
                .map_err(dev_err("concatenating on the GPU"))?;
            at += len;
        }
        DevBuf::Bf16(out)
    } else {
        let mut out = alloc::<f32>(&dev, n)?;
        let mut at = 0;
        for s in &storages {
            let src = s.f32_slice().expect("checked f32");
            let len = src.len().min(n - at);
            stream
                .memcpy_dtod(&src.slice(..len), &mut out.slice_mut(at..at + len))
                .map_err(dev_err("concatenating on the GPU"))?;
            at += len;
        }
        DevBuf::F32(out)
    };
    Ok(wrap(&dev, shape, dtype, buf))
}

/// `--random-weights` built on the GPU: matrices as bf16, vectors as f32, each filled by one
/// kernel launch from (seed, name). See the module doc for how the values relate to the CPU's.
#[derive(Debug, Clone)]
pub struct GpuRandomWeights {
    seed: u64,
    dev: CudaHandle,
}

impl GpuRandomWeights {
    /// Weights drawn from `seed` on `dev`.
    pub fn new(seed: u64, dev: CudaHandle) -> Self {
        Self { seed, dev }
    }

    fn build(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let dev = &self.dev;
        let n: usize = shape.iter().product();
        let shape = Shape::from(shape.to_vec());
        match fill_for(name, shape.dims()) {
            Fill::Constant(v) => {
                let buf = dev.upload(&vec![v; n.max(1)])?;
                Ok(wrap(dev, shape, DType::BF16, DevBuf::F32(buf)))
            }
            Fill::Normal { std } => {
                let key = self.seed ^ fnv1a(name.as_bytes());
                let matrix = shape.dims().len() >= 2;
                let buf = if matrix {
                    DevBuf::Bf16(alloc::<bf16>(dev, n)?)
                } else {
                    DevBuf::F32(alloc::<f32>(dev, n)?)
                };
                let out = wrap(dev, shape, DType::BF16, buf);
                let (p, nn) = (gpu(&out)?.ptr(), n as u64);
                let kernel = if matrix {
                    "fill_normal_bf16"
                } else {
                    "fill_normal_f32"
                };
                let blocks = n.div_ceil(2 * 256).clamp(1, 16 * 1024);
                launch!(dev, Kernel::Fill, kernel, blocks; &p, &nn, &key, &std);
                Ok(out)
            }
        }
    }
}

impl WeightSource for GpuRandomWeights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError> {
        self.build(name, shape)
            .map_err(|e| CheckpointError::Tensor {
                tensor: name.to_string(),
                reason: e.to_string(),
            })
    }

    fn describe(&self) -> String {
        format!("random weights on {}, seed {}", self.dev.name(), self.seed)
    }
}
