//! Rotary position embedding parameters (RoFormer, arXiv:2104.09864) and their scaled variants:
//! linear interpolation, Llama 3's frequency-dependent scaling, and YaRN (arXiv:2309.00071).
//! Reads both the hub's `rope_theta` + `rope_scaling` and transformers-5's `rope_parameters`.

use serde_json::Value;
use std::f64::consts::PI;

/// How the rotary frequencies are scaled for longer contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (all frequencies divided by it).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high kept, a smooth ramp between.
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f64,
        /// Wavelengths longer than original/low_freq_factor are scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than original/high_freq_factor are kept.
        high_freq_factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: f64,
    },
    /// YaRN: ramp between interpolated and extrapolated frequencies, attention scaled by mscale.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: f64,
        /// Rotations above which frequencies are extrapolated.
        beta_fast: f64,
        /// Rotations below which frequencies are interpolated.
        beta_slow: f64,
        /// DeepSeek's mscale (numerator of the attention factor).
        mscale: Option<f64>,
        /// DeepSeek's mscale_all_dim (denominator of the attention factor; also scales softmax).
        mscale_all_dim: Option<f64>,
        /// An explicit attention factor, when the config gives one.
        attention_factor: Option<f64>,
        /// Whether the ramp's bounds are floored/ceiled (transformers' `truncate`, default true).
        truncate: bool,
    },
}

/// RoPE as a model uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// The base of the geometric frequencies.
    pub theta: f64,
    /// The scaling variant.
    pub scaling: RopeScaling,
    /// Rotate adjacent pairs (x[2i], x[2i+1]) instead of halves (x[i], x[i + d/2]).
    pub interleaved: bool,
}

/// A rope type that switchyard does not implement, or a missing field of one it does.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParseError {
    /// The field (e.g. `rope_scaling.factor`).
    pub field: String,
    /// What was found or missing.
    pub message: String,
}

fn num(obj: &Value, key: &str) -> Option<f64> {
    obj.get(key).and_then(Value::as_f64)
}

fn need(obj: &Value, key: &str, section: &str) -> Result<f64, RopeParseError> {
    num(obj, key).ok_or_else(|| RopeParseError {
        field: format!("{section}.{key}"),
        message: "missing or not a number".into(),
    })
}

impl RopeConfig {
    /// Parses the rope fields of a config: `rope_parameters` (transformers 5) wins over
    /// `rope_theta`/`rope_scaling` (hub form). `max_positions` is the config's context length,
    /// YaRN's fallback for `original_max_position_embeddings`.
    pub fn parse(
        rope_theta: Option<f64>,
        rope_scaling: Option<&Value>,
        rope_parameters: Option<&Value>,
        default_theta: f64,
        max_positions: usize,
    ) -> Result<Self, RopeParseError> {
        let (section, params) = match (rope_parameters, rope_scaling) {
            (Some(p), _) if p.is_object() => ("rope_parameters", Some(p)),
            (_, Some(s)) if s.is_object() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        let theta = params
            .and_then(|p| num(p, "rope_theta"))
            .or(rope_theta)
            .unwrap_or(default_theta);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let scaling = match (kind, params) {
            ("default", _) | (_, None) => RopeScaling::None,
            ("linear", Some(p)) => RopeScaling::Linear {
                factor: need(p, "factor", section)?,
            },
            ("llama3", Some(p)) => RopeScaling::Llama3 {
                factor: need(p, "factor", section)?,
                low_freq_factor: need(p, "low_freq_factor", section)?,
                high_freq_factor: need(p, "high_freq_factor", section)?,
                original_max_position_embeddings: need(
                    p,
                    "original_max_position_embeddings",
                    section,
                )?,
            },
            ("yarn", Some(p)) => RopeScaling::Yarn {
                factor: need(p, "factor", section)?,
                original_max_position_embeddings: num(p, "original_max_position_embeddings")
                    .unwrap_or(max_positions as f64),
                beta_fast: num(p, "beta_fast").unwrap_or(32.0),
                beta_slow: num(p, "beta_slow").unwrap_or(1.0),
                mscale: num(p, "mscale"),
                mscale_all_dim: num(p, "mscale_all_dim"),
                attention_factor: num(p, "attention_factor"),
                truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            },
            (other, _) => {
                return Err(RopeParseError {
                    field: format!("{section}.rope_type"),
                    message: format!(
                        "{other:?} is not supported (default, linear, llama3, yarn are)"
                    ),
                })
            }
        };
        Ok(Self {
            theta,
            scaling,
            interleaved: false,
        })
    }

    /// The inverse frequencies for a rotary dimension `dim` (dim/2 values) and the factor that
    /// multiplies cos and sin (YaRN's attention factor, 1 otherwise).
    pub fn inv_freq(&self, dim: usize) -> (Vec<f64>, f64) {
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::None => (base, 1.0),
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let scaled = base
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (scaled, 1.0)
            }
            RopeScaling::Yarn { .. } => self.yarn_inv_freq(dim, base),
        }
    }

    fn yarn_inv_freq(&self, dim: usize, base: Vec<f64>) -> (Vec<f64>, f64) {
        let RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: old,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        } = &self.scaling
        else {
            return (base, 1.0);
        };
        let correction_dim = |rotations: f64| {
            (dim as f64 * (old / (rotations * 2.0 * PI)).ln()) / (2.0 * self.theta.ln())
        };
        let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
        if *truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let high = high.min(dim as f64 - 1.0);
        let high = if low == high { high + 0.001 } else { high };
        let inv_freq = base
            .iter()
            .enumerate()
            .map(|(i, &extrapolated)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_weight = 1.0 - ramp;
                let interpolated = extrapolated / factor;
                interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
            })
            .collect();
        let factor_attn = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
            (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                yarn_mscale(*factor, *m) / yarn_mscale(*factor, *a)
            }
            _ => yarn_mscale(*factor, 1.0),
        });
        (inv_freq, factor_attn)
    }

    /// DeepSeek's extra softmax scale: mscale(factor, mscale_all_dim)^2 under YaRN, else 1.
    pub fn softmax_mscale(&self) -> f64 {
        match &self.scaling {
            RopeScaling::Yarn {
                factor,
                mscale_all_dim: Some(a),
                ..
            } if *a != 0.0 => {
                let m = yarn_mscale(*factor, *a);
                m * m
            }
            _ => 1.0,
        }
    }
}

/// YaRN's magnitude correction: 0.1 * m * ln(scale) + 1 for scale > 1.
pub fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_config_forms_give_the_same_rope() {
        let hub = RopeConfig::parse(
            Some(500000.0),
            Some(&json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
            None,
            10000.0,
            131072,
        )
        .unwrap();
        let t5 = RopeConfig::parse(
            None,
            None,
            Some(&json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
            10000.0,
            131072,
        )
        .unwrap();
        assert_eq!(hub, t5);
    }

    #[test]
    fn linear_divides_every_frequency() {
        let plain = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::None,
            interleaved: false,
        };
        let lin = RopeConfig {
            scaling: RopeScaling::Linear { factor: 4.0 },
            ..plain.clone()
        };
        let (a, _) = plain.inv_freq(8);
        let (b, _) = lin.inv_freq(8);
        assert_eq!(a[0], 1.0);
        assert!((a[1] - 0.1).abs() < 1e-12, "10000^(-2/8) = 0.1");
        for (x, y) in a.iter().zip(&b) {
            assert!((x / 4.0 - y).abs() < 1e-15);
        }
    }

    #[test]
    fn unknown_rope_type_names_the_field() {
        let err = RopeConfig::parse(
            None,
            Some(&json!({"type": "dynamic2", "factor": 2.0})),
            None,
            1e4,
            10,
        )
        .unwrap_err();
        assert_eq!(err.field, "rope_scaling.rope_type");
        assert!(err.message.contains("dynamic2"));
    }

    #[test]
    fn yarn_mscale_matches_the_formula() {
        assert_eq!(yarn_mscale(1.0, 1.0), 1.0);
        assert!((yarn_mscale(40.0, 1.0) - (0.1 * 40f64.ln() + 1.0)).abs() < 1e-12);
    }
}
