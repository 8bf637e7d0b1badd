//! RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) · w.

/// RMSNorm of each row of `x` (rows of `w.len()` values).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, r) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        normalize_row(o, r, w, eps);
    }
    out
}

/// The fused residual step: `residual += delta`, then returns RMSNorm(residual).
pub fn add_rms_norm(residual: &mut [f32], delta: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    for (r, d) in residual.iter_mut().zip(delta) {
        *r += d;
    }
    rms_norm(residual, w, eps)
}

/// RMSNorm in place over rows of `w.len()` (per-head q/k norm).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for r in x.chunks_exact_mut(w.len()) {
        let copy = r.to_vec();
        normalize_row(r, &copy, w, eps);
    }
}

fn normalize_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), wi) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * wi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rms_rows_are_scaled_by_the_weight_only() {
        let y = rms_norm(&[1.0, -1.0, 1.0, -1.0], &[2.0, 3.0, 4.0, 5.0], 0.0);
        assert_eq!(y, vec![2.0, -3.0, 4.0, -5.0]);
    }

    #[test]
    fn fused_residual_equals_add_then_norm() {
        let mut res = vec![1.0, 2.0, 3.0, 4.0];
        let y = add_rms_norm(&mut res, &[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0], 1e-6);
        assert_eq!(res, vec![2.0, 3.0, 4.0, 5.0]);
        let want = rms_norm(&[2.0, 3.0, 4.0, 5.0], &[1.0, 1.0], 1e-6);
        assert_eq!(y, want);
        let r0 = (((4.0 + 9.0) / 2.0f32) + 1e-6).sqrt();
        assert!((y[0] - 2.0 / r0).abs() < 1e-6);
    }
}
