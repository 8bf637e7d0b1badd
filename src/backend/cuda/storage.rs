//! A tensor's memory on a GPU: f32 (activations, norm weights, biases, the KV cache) or bf16
//! (weight matrices), shared by clones of the tensor, plus the per-process registry of open GPUs.
//!
//! Outputs of ops are allocated uninitialised; tests switch on [`set_poison`] so that every new
//! buffer is filled with NaN first and an element a kernel forgot to write fails the comparison.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use half::bf16;

use super::{dev_err, CudaDevice};
use crate::error::Result;

/// An open GPU, shared by every tensor on it.
pub type CudaHandle = Arc<CudaDevice>;

/// The elements of a GPU tensor.
#[derive(Debug)]
pub enum DevBuf {
    /// f32 elements.
    F32(CudaSlice<f32>),
    /// bf16 elements.
    Bf16(CudaSlice<bf16>),
}

/// A GPU tensor's storage: the device and its (shared) buffer.
#[derive(Clone)]
pub struct CudaStorage {
    pub(crate) dev: CudaHandle,
    pub(crate) buf: Arc<DevBuf>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ty, len) = match &*self.buf {
            DevBuf::F32(s) => ("f32", s.len()),
            DevBuf::Bf16(s) => ("bf16", s.len()),
        };
        write!(f, "CudaStorage({ty} x {len} on {})", self.dev.name())
    }
}

impl PartialEq for CudaStorage {
    /// The same buffer (device memory is not compared element-wise; copy to the host for that).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

impl CudaStorage {
    /// The device.
    pub fn device(&self) -> &CudaHandle {
        &self.dev
    }

    /// Whether the elements are bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(&*self.buf, DevBuf::Bf16(_))
    }

    /// The f32 buffer, if the elements are f32.
    pub fn f32_slice(&self) -> Option<&CudaSlice<f32>> {
        match &*self.buf {
            DevBuf::F32(s) => Some(s),
            DevBuf::Bf16(_) => None,
        }
    }

    /// The bf16 buffer, if the elements are bf16.
    pub fn bf16_slice(&self) -> Option<&CudaSlice<bf16>> {
        match &*self.buf {
            DevBuf::Bf16(s) => Some(s),
            DevBuf::F32(_) => None,
        }
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        match &*self.buf {
            DevBuf::F32(s) => s.len(),
            DevBuf::Bf16(s) => s.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw device address (a kernel argument). Everything runs on the device's one stream,
    /// so no event needs to be recorded for the access.
    pub fn ptr(&self) -> u64 {
        match &*self.buf {
            DevBuf::F32(s) => s.device_ptr(self.dev.stream()).0,
            DevBuf::Bf16(s) => s.device_ptr(self.dev.stream()).0,
        }
    }

    /// Makes the buffer this storage's alone (copying it if a clone shares it), before an
    /// in-place op writes it.
    pub fn make_unique(&mut self) -> Result<()> {
        if Arc::get_mut(&mut self.buf).is_some() {
            return Ok(());
        }
        let stream = self.dev.stream();
        let copy = match &*self.buf {
            DevBuf::F32(s) => DevBuf::F32(
                stream
                    .clone_dtod(s)
                    .map_err(dev_err("copying a GPU buffer"))?,
            ),
            DevBuf::Bf16(s) => DevBuf::Bf16(
                stream
                    .clone_dtod(s)
                    .map_err(dev_err("copying a GPU buffer"))?,
            ),
        };
        self.buf = Arc::new(copy);
        Ok(())
    }

    /// The values as f32 on the host (waits for the stream).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let stream = self.dev.stream();
        Ok(match &*self.buf {
            DevBuf::F32(s) => stream
                .clone_dtoh(s)
                .map_err(dev_err("copying from the GPU"))?,
            DevBuf::Bf16(s) => stream
                .clone_dtoh(s)
                .map_err(dev_err("copying from the GPU"))?
                .into_iter()
                .map(f32::from)
                .collect(),
        })
    }
}

impl CudaStorage {
    /// Elements `offset..offset + len` as f32 on the host (bf16 widened; waits for the stream).
    pub fn read_range(&self, offset: usize, len: usize) -> Result<Vec<f32>> {
        self.check_range(offset, len)?;
        let stream = self.dev.stream();
        let e = dev_err("copying from the GPU");
        Ok(match &*self.buf {
            DevBuf::F32(s) => stream
                .clone_dtoh(&s.slice(offset..offset + len))
                .map_err(e)?,
            DevBuf::Bf16(s) => stream
                .clone_dtoh(&s.slice(offset..offset + len))
                .map_err(e)?
                .into_iter()
                .map(f32::from)
                .collect(),
        })
    }

    /// Overwrites elements `offset..offset + values.len()` with `values` (rounded to bf16 in a
    /// bf16 buffer), copying the buffer first if a clone shares it.
    pub fn write_range(&mut self, offset: usize, values: &[f32]) -> Result<()> {
        self.check_range(offset, values.len())?;
        self.make_unique()?;
        let stream = self.dev.stream().clone();
        let e = dev_err("copying to the GPU");
        let end = offset + values.len();
        match Arc::get_mut(&mut self.buf).expect("made unique above") {
            DevBuf::F32(s) => stream
                .memcpy_htod(values, &mut s.slice_mut(offset..end))
                .map_err(e)?,
            DevBuf::Bf16(s) => {
                let narrow: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                stream
                    .memcpy_htod(&narrow, &mut s.slice_mut(offset..end))
                    .map_err(e)?
            }
        }
        // The host values may be freed when this returns: wait for the copy.
        stream
            .synchronize()
            .map_err(dev_err("synchronising the stream"))
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        if offset + len > self.len() {
            return Err(crate::error::Error::Shape(format!(
                "elements {offset}..{} of a GPU buffer of {}",
                offset + len,
                self.len()
            )));
        }
        Ok(())
    }
}

static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every buffer [`alloc`] hands out is first filled with 0xFF bytes (NaN for f32 and
/// bf16, -1 for i32), so tests catch outputs a kernel did not write.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// An uninitialised (or, under [`set_poison`], NaN-filled) buffer of `len` elements (at least one).
pub fn alloc<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    let len = len.max(1);
    // SAFETY: the buffer is only read by kernels after an op wrote it (or poisoned below).
    let buf: CudaSlice<T> =
        unsafe { dev.stream().alloc(len) }.map_err(dev_err("allocating GPU memory"))?;
    if POISON.load(Ordering::SeqCst) {
        let ptr = buf.device_ptr(dev.stream()).0;
        // SAFETY: ptr is the fresh allocation of len·size_of::<T>() bytes on this stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                ptr,
                0xFF,
                len * std::mem::size_of::<T>(),
                dev.stream().cu_stream(),
            )
        }
        .map_err(dev_err("poisoning GPU memory"))?;
    }
    Ok(buf)
}

/// GPU `ordinal`, opened on first use and shared by the whole process (one context, stream and
/// set of compiled kernels per GPU).
pub fn shared_device(ordinal: usize) -> Result<CudaHandle> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, CudaHandle>>> = OnceLock::new();
    let mut map = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(CudaDevice::new(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}
