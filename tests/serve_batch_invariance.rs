//! Greedy answers must not depend on what else is in the batch: every kernel that mixes rows
//! (the dense products) gives each row bit-identical results whatever the row count.

use switchyard::backend::cpu::matmul::linear;

fn data(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 2654435761 + salt) % 1000) as f32 - 500.0) / 250.0)
        .collect()
}

#[test]
fn linear_rows_do_not_depend_on_the_row_count() {
    for &(k, n) in &[
        (64, 128),
        (64, 512),
        (128, 64),
        (256, 1024),
        (1024, 64),
        (512, 2048),
    ] {
        let w = data(n * k, 7);
        let x = data(300 * k, 3);
        let solo: Vec<Vec<f32>> = (0..300)
            .map(|r| linear(&x[r * k..][..k], 1, k, &w, n, None))
            .collect();
        for m in [2usize, 3, 4, 7, 8, 9, 16, 17, 31, 33, 64, 100, 300] {
            let all = linear(&x[..m * k], m, k, &w, n, None);
            for r in 0..m {
                assert!(
                    all[r * n..][..n] == solo[r][..],
                    "k={k} n={n} m={m} row {r} differs from the row alone"
                );
            }
        }
    }
}
