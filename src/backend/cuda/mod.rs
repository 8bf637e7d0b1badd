//! The CUDA backend: one [`CudaDevice`] per GPU (context, stream, cuBLAS handle, kernels compiled
//! by NVRTC from `kernels/*.cu` for the device's architecture and cached on disk), device buffers,
//! and the MoE layer's kernels (fused routing, permutation, grouped GEMMs on the tensor cores,
//! combine) plus RMSNorm with the residual add.
//!
//! cudarc loads the driver, NVRTC and cuBLAS at run time, so this module builds on machines without
//! CUDA; every entry point checks that the libraries are present first and returns
//! [`Error::Device`](crate::error::Error::Device) when they are not (cudarc would panic).

pub mod attention;
pub mod blas;
pub mod compile;
pub mod device;
pub mod measure;
pub mod moe;
pub mod moe_block;
pub mod norm;
pub mod ops;
pub mod overlap;
pub mod sample;
pub mod storage;
pub mod weights;

pub use device::{CudaDevice, DeviceBuffer, Kernel};
pub use moe::{ForcedTiles, GemmPath, MoeLayer, MoeShape, MoeWorkspace, RouterParams, WgmmaTile};
pub use moe_block::{FusedMoe, FusedParts, MoeScratch};

use crate::error::Error;

/// Turns a cudarc (or any debuggable) failure into a device error that says what was being done.
pub(crate) fn dev_err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Device(format!("{what}: {e:?}"))
}
