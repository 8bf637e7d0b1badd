//! One GPU: its context, the stream every op of this backend runs on, a cuBLAS handle, and the
//! kernels of `kernels/*.cu`, compiled once per process (and cached on disk) for its architecture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::{compile, dev_err};
use crate::error::{Error, Result};

/// Device memory of `T` elements (a cudarc slice owned by the device's stream).
pub type DeviceBuffer<T> = CudaSlice<T>;

/// The kernel sources, each compiled as one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Fused top-k routing and the counting sort of (token, expert) pairs by expert, one program
    /// so that decode batches can do both in one launch (`kernels/route.cu`, `kernels/permute.cu`).
    Route,
    /// Grouped GEMMs gate/up (+SiLU·up) and down on mma.sync, the decode streaming kernels and
    /// the row gather (`kernels/grouped_gemm.cu`).
    GroupedGemm,
    /// The Hopper grouped GEMMs: TMA + wgmma, warp-specialised and persistent, one CTA or a
    /// cluster of two or four a unit (`kernels/wgmma.cuh`, `kernels/grouped_gemm_sm90.cu`,
    /// `kernels/grouped_gemm_sm90_clusters.cu`; sm_90a only, loaded only there).
    GroupedGemmSm90,
    /// Unpermute and weighted combine (`kernels/combine.cu`).
    Combine,
    /// RMSNorm with the residual add (`kernels/norm.cu`).
    Norm,
    /// Seeded random fills for tests and benchmarks (`kernels/fill.cu`).
    Fill,
    /// The model's glue ops on f32 activations: embedding, norms, RoPE, paged attention, row and
    /// column copies, naive grouped SwiGLU, combine, argmax (`kernels/ops.cu`).
    Ops,
    /// Flash-attention prefill over the paged cache on the tensor cores (`kernels/attention.cu`).
    Attention,
    /// Greedy picks of the step's logits rows: argmax and top-2 margin (`kernels/sample.cu`).
    Sample,
}

impl Kernel {
    /// Every kernel module.
    pub const ALL: [Kernel; 9] = [
        Kernel::Route,
        Kernel::GroupedGemm,
        Kernel::GroupedGemmSm90,
        Kernel::Combine,
        Kernel::Norm,
        Kernel::Fill,
        Kernel::Ops,
        Kernel::Attention,
        Kernel::Sample,
    ];

    /// The file stem under `kernels/`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Route => "route",
            Kernel::GroupedGemm => "grouped_gemm",
            Kernel::GroupedGemmSm90 => "grouped_gemm_sm90",
            Kernel::Combine => "combine",
            Kernel::Norm => "norm",
            Kernel::Fill => "fill",
            Kernel::Ops => "ops",
            Kernel::Attention => "attention",
            Kernel::Sample => "sample",
        }
    }

    /// The CUDA C++ source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Route => concat!(
                include_str!("../../../kernels/overlap.cuh"),
                include_str!("../../../kernels/route.cu"),
                include_str!("../../../kernels/permute.cu")
            ),
            Kernel::GroupedGemm => concat!(
                include_str!("../../../kernels/overlap.cuh"),
                include_str!("../../../kernels/grouped_common.cuh"),
                include_str!("../../../kernels/cp_async.cuh"),
                include_str!("../../../kernels/mma_sync.cuh"),
                include_str!("../../../kernels/grouped_gemm.cu")
            ),
            // One program: the building blocks, the one-CTA kernels, the cluster kernels.
            Kernel::GroupedGemmSm90 => concat!(
                include_str!("../../../kernels/grouped_common.cuh"),
                include_str!("../../../kernels/wgmma_shapes.cuh"),
                include_str!("../../../kernels/wgmma.cuh"),
                include_str!("../../../kernels/grouped_gemm_sm90.cu"),
                include_str!("../../../kernels/grouped_gemm_sm90_clusters.cu")
            ),
            Kernel::Combine => concat!(
                include_str!("../../../kernels/overlap.cuh"),
                include_str!("../../../kernels/combine.cu")
            ),
            Kernel::Norm => include_str!("../../../kernels/norm.cu"),
            Kernel::Fill => include_str!("../../../kernels/fill.cu"),
            Kernel::Ops => concat!(
                include_str!("../../../kernels/overlap.cuh"),
                include_str!("../../../kernels/elem.cuh"),
                include_str!("../../../kernels/ops.cu")
            ),
            Kernel::Attention => concat!(
                include_str!("../../../kernels/overlap.cuh"),
                include_str!("../../../kernels/elem.cuh"),
                include_str!("../../../kernels/cp_async.cuh"),
                include_str!("../../../kernels/mma_sync.cuh"),
                include_str!("../../../kernels/attention.cu"),
                include_str!("../../../kernels/mla.cu")
            ),
            Kernel::Sample => include_str!("../../../kernels/sample.cu"),
        }
    }
}

/// One GPU with its stream, cuBLAS handle and loaded kernel modules.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: String,
    name: String,
    /// Kernels may be launched to overlap the one before them ([`super::overlap`]).
    overlap: bool,
    /// Shared by every rank's handle on this GPU (one context, one set of loaded modules).
    modules: Arc<Mutex<HashMap<Kernel, Arc<CudaModule>>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

/// Why CUDA cannot be used here, or `None` when the driver is present and sees a GPU.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only probes whether the driver library can be loaded; calls no CUDA function.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda.so) on this machine".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the CUDA driver sees no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the CUDA driver failed to start: {e:?}")),
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: context, stream and cuBLAS. Fails with [`Error::Device`] when there is
    /// no driver, no such GPU, or no cuBLAS.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(why) = unavailable_reason() {
            return Err(Error::Device(why));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err("opening the GPU"))?;
        let stream = ctx.default_stream();
        // SAFETY: only probes whether the cuBLAS library can be loaded.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device("cuBLAS (libcublas.so) was not found".into()));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err("creating the cuBLAS handle"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev_err("reading the compute capability"))?;
        // Hopper gets the `a` target so that wgmma/setmaxnreg are available to the kernels.
        let arch = if major == 9 {
            format!("sm_{major}{minor}a")
        } else {
            format!("sm_{major}{minor}")
        };
        let name = ctx.name().map_err(dev_err("reading the GPU name"))?;
        let overlap = major >= 9 && std::env::var_os(super::overlap::NO_OVERLAP).is_none();
        Ok(Self {
            ctx,
            stream,
            blas,
            arch,
            name,
            overlap,
            modules: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// A rank's own handle on GPU `ordinal`: the GPU's context and loaded kernels with a new
    /// stream and cuBLAS handle, so that ranks sharing a GPU queue their work independently.
    /// Every access of one rank's memory by another is ordered by the communicators with
    /// explicit events (see `comm::gpu`), so cudarc's automatic per-buffer event tracking is
    /// turned off for the context: it would record events around every kernel argument.
    pub fn for_rank(ordinal: usize) -> Result<Self> {
        let base = super::storage::shared_device(ordinal)?;
        let ctx = base.ctx.clone();
        // SAFETY: this backend orders every cross-stream use itself: a rank's buffers are used
        // on its own stream only, except by the communicators, which make the reader wait on
        // an event recorded after the writer and the owner wait on the reader before reuse.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev_err("creating a stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err("creating the cuBLAS handle"))?;
        Ok(Self {
            ctx,
            stream,
            blas,
            arch: base.arch.clone(),
            name: base.name.clone(),
            overlap: base.overlap,
            modules: base.modules.clone(),
        })
    }

    /// Whether kernels launched by [`super::overlap::launch`] may start before the previous
    /// kernel ends (compute capability 9.0 and later, unless turned off).
    pub fn overlaps_launches(&self) -> bool {
        self.overlap
    }

    /// The GPU's name (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture kernels are compiled for (e.g. `sm_90a`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op of this backend is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle (bound to [`Self::stream`]).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> Result<usize> {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        self.ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n as usize)
            .map_err(dev_err("reading the SM count"))
    }

    /// A kernel function, compiling and loading its module on first use.
    pub fn function(&self, kernel: Kernel, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(&kernel) {
                Some(m) => m.clone(),
                None => {
                    let bin = compile::cubin(kernel.name(), kernel.source(), &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_binary(bin))
                        .map_err(dev_err("loading a kernel module"))?;
                    modules.insert(kernel, m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(|e| Error::Device(format!("kernel {name} in {}.cu: {e:?}", kernel.name())))
    }

    /// A kernel function allowed `smem` bytes of dynamic shared memory (above the 48 KiB default).
    pub fn function_with_smem(
        &self,
        kernel: Kernel,
        name: &str,
        smem: usize,
    ) -> Result<CudaFunction> {
        use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let f = self.function(kernel, name)?;
        if smem > 48 * 1024 {
            f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                .map_err(dev_err("raising the shared-memory limit"))?;
        }
        Ok(f)
    }

    /// Copies host values to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        self.stream
            .clone_htod(host)
            .map_err(dev_err("copying to the GPU"))
    }

    /// Copies a device buffer (or view) back to the host (synchronises the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuffer<T>,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(buf)
            .map_err(dev_err("copying from the GPU"))
    }

    /// A zeroed device buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(dev_err("allocating GPU memory"))
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(dev_err("synchronising the stream"))
    }
}
