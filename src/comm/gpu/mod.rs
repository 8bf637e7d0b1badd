//! Communicators whose tensor collectives stay on the GPU.
//!
//! [`GpuLocalComm`]: ranks as threads of one process on one or several GPUs, each rank on its
//! own stream, exchanging rows by device-to-device (or peer) copies ordered by CUDA events.
//! [`NcclComm`]: one rank of an NCCL communicator (one rank per GPU, in one process or across
//! nodes), its unique id handed out over a host communicator. Both implement every slice
//! collective of [`super::Communicator`] too (the in-process one over [`super::LocalComm`],
//! NCCL by staging the slice through the device), so a rank holds one communicator per group.

mod device_links;
mod local;
mod nccl;

pub use device_links::DeviceLinks;
pub use local::GpuLocalComm;
pub use nccl::{nccl_unavailable_reason, NcclComm};

use crate::backend::cuda::storage::{CudaHandle, CudaStorage};
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{Storage, Tensor};

/// The f32 device storage of `t`, which must live on a GPU.
fn f32_storage<'a>(t: &'a Tensor, what: &str) -> Result<&'a CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) if !s.is_bf16() => Ok(s),
        Storage::Cuda(_) => Err(Error::Device(format!(
            "{what}: a GPU communicator moves f32 rows, got a bf16 tensor {}",
            t.shape()
        ))),
        Storage::Cpu(_) => Err(Error::Device(format!(
            "{what}: a GPU communicator got a CPU tensor {}",
            t.shape()
        ))),
    }
}

/// The sum, in source order, of the `parts` consecutive blocks of `rows` rows in `stacked`
/// ([parts · rows, cols]): the same additions in the same order as the host collectives, so the
/// result is bit-identical to theirs.
fn sum_parts(stacked: &Tensor, parts: usize, rows: usize, cols: usize) -> Result<Tensor> {
    let block = |p: usize| -> Vec<u32> { (p * rows..(p + 1) * rows).map(|r| r as u32).collect() };
    let mut acc = ops::gather_rows(stacked, &block(0), 1)?;
    for p in 1..parts {
        let next = ops::gather_rows(stacked, &block(p), 1)?;
        ops::add_in_place(&mut acc, &next)?;
    }
    acc.reshape([rows, cols])
}

/// A new f32 tensor of `rows` x `cols` on `dev` (written by the caller before it is read).
fn empty_rows(dev: &CudaHandle, rows: usize, cols: usize) -> Result<Tensor> {
    crate::backend::cuda::ops::empty(dev, [rows, cols])
}
