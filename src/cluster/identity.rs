//! `ModelIdentity`: what makes two nodes' models the same, cheap to compute without loading.

use crate::model::ModelSource;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A model's identity: a hash of config.json and the weight files' names and sizes (or the
/// random-weights seed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// FNV-1a 64 of config.json's bytes, in hex.
    pub config_hash: String,
    /// Weight files (`*.safetensors`, the index) and their sizes, by name.
    pub weights: Vec<(String, u64)>,
    /// Seed of `--random-weights`, when the weights are generated.
    pub random_weights: Option<u64>,
}

impl ModelIdentity {
    /// The identity of `source`'s checkpoint.
    pub fn of(source: &ModelSource) -> std::io::Result<Self> {
        let config = std::fs::read(source.dir.join("config.json"))?;
        let weights = match source.random_weights {
            Some(_) => Vec::new(),
            None => weight_files(&source.dir)?,
        };
        Ok(Self {
            config_hash: format!("{:016x}", fnv1a(&config)),
            weights,
            random_weights: source.random_weights,
        })
    }

    /// What differs from `other`, in words (empty when they match).
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        if self.config_hash != other.config_hash {
            out.push(format!(
                "config.json hash {} vs {}",
                self.config_hash, other.config_hash
            ));
        }
        if self.weights != other.weights {
            out.push(format!(
                "weight files {:?} vs {:?}",
                self.weights, other.weights
            ));
        }
        if self.random_weights != other.random_weights {
            out.push(format!(
                "random-weights seed {:?} vs {:?}",
                self.random_weights, other.random_weights
            ));
        }
        out
    }
}

fn weight_files(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            out.push((name, entry.metadata()?.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// FNV-1a, 64 bits: stable across builds and machines (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
