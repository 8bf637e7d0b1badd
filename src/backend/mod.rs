//! Compute backends. `cpu` is the exact f32 reference every other backend is tested against.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
