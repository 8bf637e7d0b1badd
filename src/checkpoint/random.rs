//! [`RandomWeights`]: deterministic stand-in weights, to build any model shape without files
//! (`--random-weights`, tests, benchmarks).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{CheckpointError, WeightSource};
use crate::tensor::{DType, Tensor};

/// Elements per parallel chunk; each chunk draws from its own ChaCha stream, so the values do not
/// depend on the number of threads.
const CHUNK: usize = 1 << 16;

/// Random weights, a pure function of (seed, tensor name, shape).
///
/// Norm weights are 1, biases 0, everything else N(0, 1/last_dim) rounded through bf16 (so a
/// random model behaves like a stored bf16 one); the recorded dtype is BF16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    /// Weights drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// What a tensor is filled with, from its name (shared with the GPU's random weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fill {
    /// Every value the same (norm weights 1, biases 0).
    Constant(f32),
    /// N(0, std²), std = 1/√fan_in.
    Normal { std: f32 },
}

/// The fill of tensor `name` of `shape`.
pub(crate) fn fill_for(name: &str, shape: &[usize]) -> Fill {
    let last_module = name
        .strip_suffix(".weight")
        .map(|m| m.rsplit('.').next().unwrap_or(m));
    if last_module.is_some_and(|m| m.contains("norm")) {
        Fill::Constant(1.0)
    } else if name.ends_with(".bias") || name.ends_with("e_score_correction_bias") {
        Fill::Constant(0.0)
    } else {
        let fan_in = shape.last().copied().unwrap_or(1).max(1);
        Fill::Normal {
            std: 1.0 / (fan_in as f32).sqrt(),
        }
    }
}

/// 64-bit FNV-1a (the per-tensor part of a random weight's seed).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Two uniform draws from one 64-bit word: the first in (0, 1] (safe for `ln`), the second in
/// [0, 1), 24 bits each.
fn unit_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    let w = rng.next_u64();
    let hi = (w >> 40) as u32;
    let lo = ((w >> 8) & 0xff_ffff) as u32;
    ((hi + 1) as f32 * SCALE, lo as f32 * SCALE)
}

/// Fills `out` with N(0, std) values (Box-Muller), rounded through bf16.
fn fill_normal(out: &mut [f32], rng: &mut ChaCha8Rng, std: f32) {
    for pair in out.chunks_mut(2) {
        let (u1, u2) = unit_pair(rng);
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f32::consts::TAU * u2;
        let (s, c) = theta.sin_cos();
        pair[0] = half::bf16::from_f32(r * c).to_f32();
        if let Some(second) = pair.get_mut(1) {
            *second = half::bf16::from_f32(r * s).to_f32();
        }
    }
}

impl WeightSource for RandomWeights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError> {
        let numel: usize = shape.iter().product();
        let data = match fill_for(name, shape) {
            Fill::Constant(v) => vec![v; numel],
            Fill::Normal { std } => {
                let seed = self.seed ^ fnv1a(name.as_bytes());
                let mut data = vec![0.0f32; numel];
                data.par_chunks_mut(CHUNK)
                    .enumerate()
                    .for_each(|(i, chunk)| {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        fill_normal(chunk, &mut rng, std);
                    });
                data
            }
        };
        Tensor::from_f32_stored_as(shape, data, DType::BF16).map_err(|e| CheckpointError::Tensor {
            tensor: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        format!("random weights, seed {}", self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_by_name() {
        let s = [8, 16];
        assert_eq!(fill_for("model.norm.weight", &s), Fill::Constant(1.0));
        assert_eq!(
            fill_for("model.layers.3.input_layernorm.weight", &s),
            Fill::Constant(1.0)
        );
        assert_eq!(
            fill_for("model.layers.3.post_attention_layernorm.weight", &s),
            Fill::Constant(1.0)
        );
        assert_eq!(
            fill_for("model.layers.0.self_attn.kv_a_layernorm.weight", &s),
            Fill::Constant(1.0)
        );
        assert_eq!(
            fill_for("model.layers.0.self_attn.q_norm.weight", &s),
            Fill::Constant(1.0)
        );
        assert_eq!(
            fill_for("model.layers.0.self_attn.q_proj.bias", &s),
            Fill::Constant(0.0)
        );
        assert_eq!(
            fill_for("model.layers.1.mlp.gate.e_score_correction_bias", &s),
            Fill::Constant(0.0)
        );
        assert_eq!(
            fill_for("model.layers.1.mlp.gate.weight", &s),
            Fill::Normal { std: 0.25 }
        );
        assert_eq!(
            fill_for("model.embed_tokens.weight", &s),
            Fill::Normal { std: 0.25 }
        );
        // "norm" in an earlier component does not make a projection a norm.
        assert_eq!(
            fill_for("model.norm_stuff.proj.weight", &s),
            Fill::Normal { std: 0.25 }
        );
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn values_do_not_depend_on_the_thread_count() {
        let w = RandomWeights::new(3);
        let shape = [3 * CHUNK + 5];
        let many = w.load("w.weight", &shape).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let one = pool.install(|| w.load("w.weight", &shape).unwrap());
        assert_eq!(many, one);
    }

    #[test]
    fn odd_lengths_and_empty_shapes() {
        let w = RandomWeights::new(1);
        assert_eq!(w.load("x.weight", &[3, 5]).unwrap().as_slice().len(), 15);
        assert_eq!(w.load("x.weight", &[0, 5]).unwrap().as_slice().len(), 0);
        assert_eq!(w.load("x.weight", &[]).unwrap().as_slice().len(), 1);
    }
}
