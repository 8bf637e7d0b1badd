//! Rotary position embedding applied in place, in f32 as transformers computes it.

use crate::config::RopeConfig;

/// Precomputed inverse frequencies of one rotary dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    attention_factor: f32,
    interleaved: bool,
}

impl Rotary {
    /// The rotary for chunks of `dim` values under `cfg`.
    pub fn new(cfg: &RopeConfig, dim: usize) -> Self {
        let (inv, factor) = cfg.inv_freq(dim);
        Self {
            inv_freq: inv.into_iter().map(|f| f as f32).collect(),
            attention_factor: factor as f32,
            interleaved: cfg.interleaved,
        }
    }

    /// The rotated dimension.
    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// Whether pairs are (2i, 2i+1) rather than (i, i + dim/2).
    pub fn interleaved(&self) -> bool {
        self.interleaved
    }

    /// cos then sin of every frequency at `pos`, times the attention factor, exactly as
    /// [`Self::apply`] uses them (a GPU kernel rotates with these values).
    pub fn cos_sin(&self, pos: usize) -> Vec<f32> {
        let angles = self.inv_freq.iter().map(|f| pos as f32 * f);
        let cos = angles.clone().map(|a| a.cos() * self.attention_factor);
        let sin = angles.map(|a| a.sin() * self.attention_factor);
        cos.chain(sin).collect()
    }

    /// Rotates every `dim`-wide chunk of `x` (one token's heads) to position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.inv_freq.len();
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inv_freq
            .iter()
            .map(|f| {
                let angle = pos as f32 * f;
                (
                    angle.cos() * self.attention_factor,
                    angle.sin() * self.attention_factor,
                )
            })
            .unzip();
        for chunk in x.chunks_exact_mut(2 * half) {
            for i in 0..half {
                let (a, b) = if self.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x1, x2) = (chunk[a], chunk[b]);
                chunk[a] = x1 * cos[i] - x2 * sin[i];
                chunk[b] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeScaling;

    fn cfg(interleaved: bool) -> RopeConfig {
        RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::None,
            interleaved,
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for inter in [false, true] {
            let r = Rotary::new(&cfg(inter), 8);
            let x: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
            let mut y = x.clone();
            r.apply(&mut y, 0);
            assert_eq!(x, y);
            r.apply(&mut y, 13);
            let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((n(&x) - n(&y)).abs() < 1e-3);
        }
    }

    #[test]
    fn dot_products_depend_on_relative_position_only() {
        let r = Rotary::new(&cfg(false), 4);
        let q = [0.3, -1.2, 0.7, 2.0];
        let k = [1.1, 0.4, -0.5, 0.9];
        let dot = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q, k);
            r.apply(&mut a, pq);
            r.apply(&mut b, pk);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot(5, 2) - dot(13, 10)).abs() < 1e-4);
    }

    #[test]
    fn half_layout_rotates_pairs_i_and_i_plus_half() {
        let r = Rotary::new(&cfg(false), 4);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        r.apply(&mut x, 1);
        // freq 0 is 1 rad per position: (cos 1, 0, sin 1, 0).
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
    }
}
