//! `Tensor`: a shape, a dtype and storage on a device.
//!
//! The CPU backend computes in f32 whatever the stored dtype was (the reference must be exact
//! and simple); `dtype` records what the checkpoint stored so memory plans and the CUDA backend
//! can keep the narrow type.

mod dtype;
mod shape;

pub use dtype::DType;
pub use shape::Shape;

use crate::backend::{CudaStorage, Device};
use crate::error::{Error, Result};

/// Where a tensor's elements live.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// Host memory, f32 elements (the CPU reference computes in f32).
    Cpu(Vec<f32>),
    /// GPU memory, f32 or bf16 elements (cannot exist in a build without the `cuda` feature).
    Cuda(CudaStorage),
}

fn on_gpu(what: &str) -> ! {
    panic!("{what} of a tensor on the GPU: copy it to the host with Tensor::to_cpu first")
}

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Shape,
    dtype: DType,
    storage: Storage,
}

impl Tensor {
    /// A CPU tensor from f32 values; fails when the element count does not match the shape.
    pub fn from_f32(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Self> {
        Self::from_f32_stored_as(shape, data, DType::F32)
    }

    /// A CPU tensor of f32 values that were stored as `dtype` (e.g. bf16 weights widened).
    pub fn from_f32_stored_as(
        shape: impl Into<Shape>,
        data: Vec<f32>,
        dtype: DType,
    ) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::Shape(format!(
                "{} values do not fill shape {shape} ({} elements)",
                data.len(),
                shape.numel()
            )));
        }
        Ok(Self {
            shape,
            dtype,
            storage: Storage::Cpu(data),
        })
    }

    /// A CPU tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let data = vec![0.0; shape.numel()];
        Self {
            shape,
            dtype: DType::F32,
            storage: Storage::Cpu(data),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dims as a slice.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The dtype the values were stored as.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Bytes the tensor takes in its stored dtype (what a GPU copy would hold).
    pub fn stored_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    /// Bytes one value takes where it lives: 4 (f32) on the CPU, 2 or 4 on a GPU.
    pub fn element_bytes(&self) -> usize {
        match &self.storage {
            Storage::Cpu(_) => 4,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) if s.is_bf16() => 2,
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => 4,
        }
    }

    /// Where the values live.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The storage, mutable (for a backend's in-place ops).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// A tensor over existing storage (a backend's op output).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn from_storage(shape: impl Into<Shape>, dtype: DType, storage: Storage) -> Self {
        Self {
            shape: shape.into(),
            dtype,
            storage,
        }
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Device::Cuda(s.device().clone()),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(s) => match *s {},
        }
    }

    /// Whether the tensor lives on a GPU.
    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda(_))
    }

    /// The values of a CPU tensor. Panics for a GPU tensor (a bug: ops dispatch on storage).
    pub fn as_slice(&self) -> &[f32] {
        match &self.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => on_gpu("as_slice"),
        }
    }

    /// The values of a CPU tensor, mutable. Panics for a GPU tensor.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => on_gpu("as_mut_slice"),
        }
    }

    /// Consumes the tensor, returning its CPU values. Panics for a GPU tensor.
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => on_gpu("into_vec"),
        }
    }

    /// The tensor on the host (a GPU tensor is copied back, bf16 widened; waits for the GPU).
    pub fn into_cpu(self) -> Result<Self> {
        match self.storage {
            Storage::Cpu(_) => Ok(self),
            #[cfg(feature = "cuda")]
            Storage::Cuda(ref s) => {
                // An empty tensor's buffer still holds one element (allocations are never empty).
                let mut v = s.to_host()?;
                v.truncate(self.numel());
                Ok(Self {
                    shape: self.shape,
                    dtype: self.dtype,
                    storage: Storage::Cpu(v),
                })
            }
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(ref s) => match *s {},
        }
    }

    /// A copy on the host.
    pub fn to_cpu(&self) -> Result<Self> {
        self.clone().into_cpu()
    }

    /// A copy on `device` with f32 elements (activations, vectors; the KV cache).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.upload(device, false)
    }

    /// A copy on `device` for a weight matrix: bf16 elements on a GPU (f32 on the CPU).
    pub fn to_device_bf16(&self, device: &Device) -> Result<Self> {
        self.upload(device, true)
    }

    fn upload(&self, device: &Device, bf16: bool) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let (Storage::Cuda(_), Device::Cuda(dev)) = (&self.storage, device) {
            // Already on a GPU (weights built there): a cast at most, no trip through the host.
            return crate::backend::cuda::weights::convert(self, dev, bf16);
        }
        let host = self.to_cpu()?;
        match device {
            Device::Cpu => Ok(host),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => crate::backend::cuda::ops::upload(&host, dev, bf16),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => {
                let _ = bf16;
                match *d {}
            }
        }
    }

    /// `parts` (on one device, one element type) back to back under `shape`: stacking along a
    /// new first dim or joining along the first dim, without leaving the device.
    pub fn concat(parts: &[&Tensor], shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let total: usize = parts.iter().map(|p| p.numel()).sum();
        if parts.is_empty() || total != shape.numel() {
            return Err(Error::Shape(format!(
                "{} parts of {total} values do not fill shape {shape}",
                parts.len()
            )));
        }
        let dtype = parts[0].dtype;
        if parts.iter().all(|p| !p.is_cuda()) {
            let mut v = Vec::with_capacity(total);
            for p in parts {
                v.extend_from_slice(p.as_slice());
            }
            return Self::from_f32_stored_as(shape, v, dtype);
        }
        #[cfg(feature = "cuda")]
        return crate::backend::cuda::weights::concat(parts, shape, dtype);
        #[cfg(not(feature = "cuda"))]
        unreachable!("no GPU tensor exists without the cuda feature")
    }

    /// Zeros of `shape` (f32) on `device`.
    pub fn zeros_on(shape: impl Into<Shape>, device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::zeros(shape)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => crate::backend::cuda::ops::zeros(dev, shape.into()),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => match *d {},
        }
    }

    /// Zeros of `shape` on `device`, stored as bf16 on a GPU (f32 on the CPU): a KV cache.
    pub fn zeros_bf16_on(shape: impl Into<Shape>, device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::zeros(shape)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => crate::backend::cuda::ops::zeros_bf16(dev, shape.into()),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => match *d {},
        }
    }

    /// Same values under another shape with the same element count.
    pub fn reshape(mut self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::Shape(format!(
                "cannot reshape {} into {shape}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f32] {
        let cols = self.dims()[self.dims().len() - 1];
        &self.as_slice()[i * cols..(i + 1) * cols]
    }

    /// Columns `start..start + len` of a 2-D tensor (a row-parallel weight's shard).
    pub fn narrow_cols(&self, start: usize, len: usize) -> Result<Self> {
        let (rows, cols) = (self.dims()[0], self.dims()[1]);
        if start == 0 && len == cols {
            return Ok(self.clone());
        }
        if start + len > cols {
            return Err(Error::Shape(format!(
                "columns {start}..{} out of {cols}",
                start + len
            )));
        }
        let mut data = Vec::with_capacity(rows * len);
        for r in 0..rows {
            data.extend_from_slice(&self.as_slice()[r * cols + start..][..len]);
        }
        Self::from_f32_stored_as([rows, len], data, self.dtype)
    }

    /// Rows `range` of a tensor viewed as [rows, last dim], as a new tensor (used to split
    /// weights among ranks or experts).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Self> {
        let dims = self.dims();
        let rows = dims[0];
        if start == 0 && len == rows {
            return Ok(self.clone());
        }
        if start + len > rows {
            return Err(Error::Shape(format!(
                "rows {start}..{} out of {rows}",
                start + len
            )));
        }
        let inner: usize = dims[1..].iter().product();
        let mut new_dims = dims.to_vec();
        new_dims[0] = len;
        let data = self.as_slice()[start * inner..(start + len) * inner].to_vec();
        Self::from_f32_stored_as(new_dims, data, self.dtype)
    }
}
