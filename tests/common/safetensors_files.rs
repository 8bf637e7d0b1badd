//! Small safetensors checkpoints written with the `safetensors` crate, for the loader's tests.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};

/// One tensor to write: name, dtype, shape, raw little-endian bytes.
pub struct Spec {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32s(name: &'static str, shape: &[usize], vals: &[f32]) -> Spec {
    let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    Spec {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes,
    }
}

pub fn bf16s(name: &'static str, shape: &[usize], vals: &[f32]) -> Spec {
    let bytes = vals
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    Spec {
        name,
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        bytes,
    }
}

pub fn f16s(name: &'static str, shape: &[usize], vals: &[f32]) -> Spec {
    let bytes = vals
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    Spec {
        name,
        dtype: Dtype::F16,
        shape: shape.to_vec(),
        bytes,
    }
}

pub fn serialize(specs: &[Spec]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = specs
        .iter()
        .map(|s| {
            (
                s.name,
                TensorView::new(s.dtype, s.shape.clone(), &s.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

pub fn write(dir: &Path, file: &str, specs: &[Spec]) {
    std::fs::write(dir.join(file), serialize(specs)).unwrap();
}

pub fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let weight_map: BTreeMap<&str, &str> = map.iter().copied().collect();
    let json = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), json.to_string()).unwrap();
}

pub fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.37).collect()
}

/// A small "model": two projections and a norm.
pub fn small_model() -> Vec<Spec> {
    vec![
        bf16s("model.layers.0.self_attn.q_proj.weight", &[4, 6], &ramp(24)),
        bf16s("model.layers.0.self_attn.k_proj.weight", &[2, 6], &ramp(12)),
        f32s("model.norm.weight", &[6], &[1.0; 6]),
    ]
}

pub fn fp8s(name: &'static str, shape: &[usize]) -> Spec {
    Spec {
        name,
        dtype: Dtype::F8_E4M3,
        shape: shape.to_vec(),
        bytes: vec![0x38; shape.iter().product()], // 1.0
    }
}
