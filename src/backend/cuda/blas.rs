//! Dense GEMMs through cuBLAS, bf16 operands with f32 accumulation, in the row-major "linear"
//! form the model uses: `out[m, n] = x[m, k] · w[n, k]ᵀ`.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::dev_err;
use super::device::{CudaDevice, DeviceBuffer};
use crate::error::{Error, Result};

/// Element types cuBLAS writes for [`linear`].
pub trait GemmOut: cudarc::driver::DeviceRepr {
    /// cuBLAS's name of the type.
    const CUDA_TYPE: cudaDataType;
}
impl GemmOut for f32 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_32F;
}
impl GemmOut for bf16 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with bf16 inputs, f32 accumulation, output bf16 or f32.
pub fn linear<O: GemmOut>(
    dev: &CudaDevice,
    x: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    out: &mut DeviceBuffer<O>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    if x.len() < m * k || w.len() < n * k || out.len() < m * n {
        return Err(Error::Shape(format!(
            "linear {m}x{k} by {n}x{k}: a buffer is too short"
        )));
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = dev.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let (op, _go) = out.device_ptr_mut(stream);
    // Column-major view: outᵀ[n, m] = w[n, k] · xᵀ[k, m], i.e. op(A)=Aᵀ with A = w as k x n.
    // SAFETY: the three buffers hold at least n·k, m·k and m·n elements (checked above); alpha and
    // beta are f32 as CUBLAS_COMPUTE_32F requires; the handle is bound to the device's stream.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *dev.blas().handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            wp as *const _,
            cudaDataType::CUDA_R_16BF,
            k as i32,
            xp as *const _,
            cudaDataType::CUDA_R_16BF,
            k as i32,
            &beta as *const f32 as *const _,
            op as *mut _,
            O::CUDA_TYPE,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(dev_err("cuBLAS GemmEx"))
}

/// [`linear`] on raw device addresses: `x` [m, k] bf16, `w` [n, k] bf16, `out` [m, n] f32.
pub fn linear_raw(
    dev: &CudaDevice,
    x: u64,
    w: u64,
    out: u64,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    linear_raw_typed(dev, x, w, out, m, k, n, cudaDataType::CUDA_R_16BF)
}

/// [`linear`] on raw device addresses, `x` and `w` of type `input` (bf16 or f32), `out` f32.
#[allow(clippy::too_many_arguments)]
pub fn linear_raw_typed(
    dev: &CudaDevice,
    x: u64,
    w: u64,
    out: u64,
    m: usize,
    k: usize,
    n: usize,
    input: cudaDataType,
) -> Result<()> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the caller passes live buffers of at least m·k, n·k (bf16) and m·n (f32) elements
    // of this device; alpha and beta are f32 as CUBLAS_COMPUTE_32F requires.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *dev.blas().handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            input,
            k as i32,
            x as *const _,
            input,
            k as i32,
            &beta as *const f32 as *const _,
            out as *mut _,
            cudaDataType::CUDA_R_32F,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(dev_err("cuBLAS GemmEx"))
}

/// [`linear_raw_typed`] once per head in one strided batched call: head h maps columns
/// `h·k..` of each row of `x` [m, heads·k] through `w[h]` [n, k] into the n columns from
/// `h·head_off` of each row of `out` (f32, rows of `row_w`; [m, heads·n] with (heads·n, n));
/// `x` and `w` of type `input` (bf16 or f32).
pub fn linear_heads_raw(
    dev: &CudaDevice,
    x: u64,
    w: u64,
    out: u64,
    (m, heads, k, n): (usize, usize, usize, usize),
    (row_w, head_off): (usize, usize),
    input: cudaDataType,
) -> Result<()> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // Column-major per head, as in `linear`: outᵀ_h [n, m] (ld row_w, head offset head_off) =
    // w_hᵀ ([k, n], ld k, head stride n·k) · xᵀ_h ([k, m], ld heads·k, head offset k).
    // SAFETY: the caller passes live buffers of at least m·heads·k, heads·n·k and m·row_w
    // elements of this device, row_w >= heads·head_off and head_off >= n, so every head's view
    // stays inside them; alpha and beta are f32.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *dev.blas().handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            input,
            k as i32,
            (n * k) as i64,
            x as *const _,
            input,
            (heads * k) as i32,
            k as i64,
            &beta as *const f32 as *const _,
            out as *mut _,
            cudaDataType::CUDA_R_32F,
            row_w as i32,
            head_off as i64,
            heads as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(dev_err("cuBLAS GemmStridedBatchedEx"))
}
