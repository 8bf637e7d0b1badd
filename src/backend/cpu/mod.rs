//! The CPU reference kernels: plain f32 loops over slices (row-major), multithreaded where it
//! pays. Each one is the definition the CUDA kernel of the same name must match.

pub mod activation;
pub mod attention;
pub mod matmul;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod sample;
