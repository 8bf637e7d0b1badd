//! Kernels launched to overlap the kernel before them in the stream (programmatic dependent
//! launch, compute capability 9.0 and later). The MoE decode chain is four kernels of 5-120 us
//! each (routing with permutation, gate/up, down, combine); launched the ordinary way each one
//! starts only when the one before has drained, and then ramps up on an idle GPU. Launched this
//! way the next kernel's blocks take the SMs the previous one leaves, do what does not depend on
//! it (down requests its first weights), and wait in `wait_for_previous_grid`
//! (kernels/overlap.cuh) for the rest. Only kernels that call it may be launched here.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::{sys, CudaFunction, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};

use super::dev_err;
use super::device::CudaDevice;
use crate::error::Result;

/// Set (to anything) to launch these kernels the ordinary way: a diagnostic switch for measuring
/// what the overlap gains.
pub const NO_OVERLAP: &str = "SWITCHYARD_NO_OVERLAP";

/// A kernel's arguments, in order: each a pointer to a value of the parameter's type.
pub struct Args<'a> {
    ptrs: Vec<*mut c_void>,
    values: PhantomData<&'a ()>,
}

impl<'a> Args<'a> {
    /// No arguments yet.
    pub fn new() -> Self {
        Self {
            ptrs: Vec::new(),
            values: PhantomData,
        }
    }

    /// Appends a value argument (an int, a float, a device address, a plain struct).
    pub fn arg<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.ptrs.push(v as *const T as *mut c_void);
        self
    }
}

/// Where kernel arguments go: [`Args`] for [`launch`], or cudarc's launch builder, so that one
/// function can push a kernel family's arguments for either.
pub trait ArgSink<'a> {
    /// Appends one value argument.
    fn push<T: DeviceRepr>(&mut self, v: &'a T);
}

impl<'a> ArgSink<'a> for Args<'a> {
    fn push<T: DeviceRepr>(&mut self, v: &'a T) {
        self.arg(v);
    }
}

impl<'a> ArgSink<'a> for LaunchArgs<'a> {
    fn push<T: DeviceRepr>(&mut self, v: &'a T) {
        self.arg(v);
    }
}

impl Default for Args<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Launches `f` on the device's stream, allowed to start before the previous kernel ends where
/// the GPU supports it (else the ordinary way).
///
/// # Safety
/// As for any kernel launch: `args` match the kernel's parameters in number, order and type, and
/// every buffer covers what the kernel touches. In addition the kernel calls
/// `wait_for_previous_grid` before it touches memory the previous kernel writes or reads.
pub unsafe fn launch(
    dev: &CudaDevice,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &mut Args,
    what: &'static str,
) -> Result<()> {
    dev.context().bind_to_thread().map_err(dev_err(what))?;
    // SAFETY: a zeroed union is a valid attribute value; the field set is the one the id reads.
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value: unsafe { std::mem::zeroed() },
    };
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: dev.stream().cu_stream(),
        attrs: &mut attr,
        numAttrs: dev.overlaps_launches() as u32,
    };
    // SAFETY: the caller vouches for the arguments; the config and attribute outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            args.ptrs.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(dev_err(what))
}
