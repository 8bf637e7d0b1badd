//! SwiGLU's gate (Shazeer 2020): silu(gate) · up.

/// silu(x) = x · sigmoid(x).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rows of `[gate | up]` (each `2 * inter` wide) to rows of `silu(gate) · up` (`inter` wide).
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * inter) {
        let (gate, up) = row.split_at(inter);
        out.extend(gate.iter().zip(up).map(|(g, u)| silu(*g) * u));
    }
    out
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_of_known_values() {
        let y = silu_mul(&[0.0, 1.0, 5.0, 2.0], 2);
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-7);
    }
}
