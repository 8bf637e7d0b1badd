//! Compute backends. `cpu` is the exact f32 reference every other backend is tested against.
//!
//! The set of devices is closed: [`Device`] is `Cpu` or `Cuda`, and a tensor's
//! [`Storage`](crate::tensor::Storage) has a `Cuda` variant in every build. Without the `cuda`
//! feature [`CudaStorage`] and [`CudaHandle`] are empty enums, so no CUDA tensor can exist and
//! asking for the GPU is a typed [`Error::Device`], never a panic.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::error::Result;

#[cfg(feature = "cuda")]
pub use cuda::attention::StepIndex;
#[cfg(feature = "cuda")]
pub use cuda::moe_block::{FusedMoe, MoeScratch};
#[cfg(feature = "cuda")]
pub use cuda::storage::{CudaHandle, CudaStorage};

#[cfg(not(feature = "cuda"))]
mod no_cuda {
    use crate::backend::cpu::attention::Heads;
    use crate::backend::cpu::rope::Rotary;
    use crate::error::Result;
    use crate::tensor::Tensor;

    /// A GPU tensor's memory: uninhabited in a build without the `cuda` feature.
    #[derive(Debug, Clone, PartialEq)]
    pub enum CudaStorage {}

    /// An open GPU: uninhabited in a build without the `cuda` feature.
    #[derive(Debug, Clone)]
    pub enum CudaHandle {}

    /// A block on the fused GPU MoE kernels: uninhabited without the `cuda` feature.
    #[derive(Debug, Clone)]
    pub enum FusedMoe {}

    impl FusedMoe {
        /// Never called: no value exists.
        pub fn forward(
            &self,
            _x: &crate::tensor::Tensor,
            _scratch: &mut MoeScratch,
        ) -> crate::error::Result<crate::tensor::Tensor> {
            match *self {}
        }
    }

    /// A step's attention indexing on a GPU: uninhabited without the `cuda` feature.
    #[derive(Debug)]
    pub enum StepIndex {}

    impl StepIndex {
        /// Never called: no value exists.
        pub fn serves(&self, _t: &Tensor) -> bool {
            match *self {}
        }

        /// Never called: no value exists.
        pub fn has_rotary(&self, _rotary: &Rotary) -> bool {
            match *self {}
        }

        /// Never called: no value exists.
        pub fn rope(&self, _x: &mut Tensor, _rotary: &Rotary) -> Result<()> {
            match *self {}
        }

        /// Never called: no value exists.
        pub fn write_rows(&self, _: &mut Tensor, _: usize, _: usize, _: &Tensor) -> Result<()> {
            match *self {}
        }

        /// Never called: no value exists.
        pub fn paged_attention(
            &self,
            _q: &Tensor,
            _keys: &Tensor,
            _k_width: usize,
            _values: &Tensor,
            _v_width: usize,
            _h: Heads,
        ) -> Result<Tensor> {
            match *self {}
        }
    }

    /// The fused blocks' shared GPU buffers: uninhabited without the `cuda` feature.
    #[derive(Debug)]
    pub enum MoeScratch {}

    impl MoeScratch {
        /// Never called: no value exists.
        pub fn take_counts(&mut self) -> crate::error::Result<Vec<(usize, Vec<u64>)>> {
            match *self {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use no_cuda::{CudaHandle, CudaStorage, FusedMoe, MoeScratch, StepIndex};

/// GPUs the CUDA driver sees (an error when this build or machine has no CUDA).
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> Result<usize> {
    if let Some(why) = cuda::device::unavailable_reason() {
        return Err(crate::error::Error::Device(why));
    }
    cudarc::driver::CudaContext::device_count()
        .map(|n| n as usize)
        .map_err(|e| crate::error::Error::Device(format!("counting GPUs: {e:?}")))
}

/// GPUs the CUDA driver sees: none in a build without the `cuda` feature (an error).
#[cfg(not(feature = "cuda"))]
pub fn cuda_device_count() -> Result<usize> {
    Device::cuda(0).map(|_| 0)
}

/// Which kind of device to run on (the `--device` flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The f32 CPU reference.
    #[default]
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

/// Where tensors live and ops run.
#[derive(Debug, Clone, Default)]
pub enum Device {
    /// Host memory, the CPU backend.
    #[default]
    Cpu,
    /// One GPU (its context, stream, cuBLAS handle and kernels).
    Cuda(CudaHandle),
}

impl Device {
    /// Opens the device `kind` names: the CPU, or GPU 0 (shared by every caller in the process).
    /// Fails with [`Error::Device`] when this build has no CUDA support or the machine no GPU.
    pub fn open(kind: DeviceKind) -> Result<Self> {
        match kind {
            DeviceKind::Cpu => Ok(Device::Cpu),
            DeviceKind::Cuda => Self::cuda(0),
        }
    }

    /// GPU `ordinal`, opened once per process.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<Self> {
        cuda::storage::shared_device(ordinal).map(Device::Cuda)
    }

    /// A rank's own stream on GPU `ordinal` (ranks may share a GPU; see
    /// [`cuda::CudaDevice::for_rank`]).
    #[cfg(feature = "cuda")]
    pub fn cuda_rank(ordinal: usize) -> Result<Self> {
        cuda::CudaDevice::for_rank(ordinal).map(|d| Device::Cuda(std::sync::Arc::new(d)))
    }

    /// A rank's stream on GPU `ordinal`: not available in a build without the `cuda` feature.
    #[cfg(not(feature = "cuda"))]
    pub fn cuda_rank(ordinal: usize) -> Result<Self> {
        Self::cuda(ordinal)
    }

    /// GPU `ordinal`: not available in a build without the `cuda` feature.
    #[cfg(not(feature = "cuda"))]
    pub fn cuda(_ordinal: usize) -> Result<Self> {
        Err(crate::error::Error::Device(
            "this build of switchyard has no CUDA support (rebuild with `--features cuda`)".into(),
        ))
    }

    /// Whether this is a GPU.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Free and total bytes of a GPU's memory as its driver reports them (None: the CPU, or the
    /// driver would not say).
    pub fn memory(&self) -> Option<(u64, u64)> {
        match self {
            Device::Cpu => None,
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d
                .context()
                .mem_get_info()
                .ok()
                .map(|(free, total)| (free as u64, total as u64)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => match *d {},
        }
    }

    /// A short name ("cpu", or "cuda:0 (NVIDIA H200)").
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => format!("cuda:{} ({})", d.context().ordinal(), d.name()),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => match *d {},
        }
    }
}
