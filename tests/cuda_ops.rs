//! Every CUDA op against its CPU reference on fresh random inputs, with every GPU output poisoned
//! (NaN) before the kernel runs so an unwritten element fails. Skips, saying so, where there is
//! no GPU (CI). Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use common::{close, gpu, rand_t};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard::backend::Device;
use switchyard::config::{RopeConfig, RopeScaling};
use switchyard::ops::{self, Rotary};
use switchyard::tensor::Tensor;

#[test]
fn linear_with_and_without_bias() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (m, k, n) in [(1, 64, 48), (7, 96, 200), (33, 256, 130)] {
        let (x, w, b) = (
            rand_t(&mut rng, &[m, k], 1.0),
            rand_t(&mut rng, &[n, k], 0.1),
            rand_t(&mut rng, &[n], 0.5),
        );
        let (xd, wd, bd) = (
            x.to_device(&d).unwrap(),
            w.to_device_bf16(&d).unwrap(),
            b.to_device(&d).unwrap(),
        );
        close(
            "linear",
            &ops::linear(&xd, &wd, None).unwrap(),
            &ops::linear(&x, &w, None).unwrap(),
            1e-2,
        );
        close(
            "linear+bias",
            &ops::linear(&xd, &wd, Some(&bd)).unwrap(),
            &ops::linear(&x, &w, Some(&b)).unwrap(),
            1e-2,
        );
        let wf = w.to_device(&d).unwrap();
        close(
            "linear f32 weight",
            &ops::linear(&xd, &wf, Some(&bd)).unwrap(),
            &ops::linear(&x, &w, Some(&b)).unwrap(),
            1e-5,
        );
    }
}

/// One linear map per head in one batched call (MLA's W_UKᵀ and W_UV): GPU against the CPU's
/// per-head loop, bf16 and f32 weights, DeepSeek's 128 heads of 128 → 512 and a small odd case.
#[test]
fn linear_heads_batched() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (t, h, k, n) in [(5, 128, 128, 512), (1, 128, 512, 128), (17, 3, 24, 40)] {
        let x = rand_t(&mut rng, &[t, h * k], 1.0);
        let w = rand_t(&mut rng, &[h, n, k], 0.1);
        let want = ops::linear_heads(&x, &w).unwrap();
        let xd = x.to_device(&d).unwrap();
        let what = format!("linear_heads T {t}, {h} heads, {k} -> {n}");
        let got = ops::linear_heads(&xd, &w.to_device_bf16(&d).unwrap()).unwrap();
        close(&what, &got, &want, 1e-2);
        let got = ops::linear_heads(&xd, &w.to_device(&d).unwrap()).unwrap();
        close(&format!("{what}, f32 weights"), &got, &want, 1e-5);
    }
}

/// RMSNorm and RMSNorm with the residual add over `rows` x `cols`, GPU against CPU; returns the
/// input rows and the added rows for further checks.
fn check_norms(d: &Device, rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Tensor, Tensor) {
    let (x, w, delta) = (
        rand_t(rng, &[rows, cols], 2.0),
        rand_t(rng, &[cols], 1.0),
        rand_t(rng, &[rows, cols], 1.0),
    );
    let (xd, wd, dd) = (
        x.to_device(d).unwrap(),
        w.to_device(d).unwrap(),
        delta.to_device(d).unwrap(),
    );
    close(
        &format!("rms_norm over {cols}"),
        &ops::rms_norm(&xd, &wd, 1e-6).unwrap(),
        &ops::rms_norm(&x, &w, 1e-6).unwrap(),
        1e-5,
    );
    let (mut rc, mut rg) = (x.clone(), xd.clone());
    let yc = ops::add_rms_norm(&mut rc, &delta, &w, 1e-6).unwrap();
    let yg = ops::add_rms_norm(&mut rg, &dd, &wd, 1e-6).unwrap();
    close(&format!("add_rms_norm out over {cols}"), &yg, &yc, 1e-5);
    close(
        &format!("add_rms_norm residual over {cols}"),
        &rg,
        &rc,
        1e-6,
    );
    close("clone untouched by the in-place add", &xd, &x, 0.0);
    (x, delta)
}

/// Column slices, concatenation, row gathers and scatters of `rows` rows `x_w` (and `y_w`)
/// wide, GPU against CPU, exactly.
#[allow(clippy::too_many_arguments)]
fn check_copies(
    d: &Device,
    rng: &mut ChaCha8Rng,
    (rows, x_w, y_w): (usize, usize, usize),
    (start, len): (usize, usize),
    order: &[u32],
    slots: &[usize],
    (dst_w, col): (usize, usize),
) {
    let x = rand_t(rng, &[rows, x_w], 1.0);
    let y = rand_t(rng, &[rows, y_w], 1.0);
    let (xd, yd) = (x.to_device(d).unwrap(), y.to_device(d).unwrap());
    close(
        &format!("narrow_cols of {len}"),
        &ops::narrow_cols(&xd, start, len).unwrap(),
        &ops::narrow_cols(&x, start, len).unwrap(),
        0.0,
    );
    close(
        &format!("concat_cols of {x_w} + {y_w} + {x_w}"),
        &ops::concat_cols(&[&xd, &yd, &xd]).unwrap(),
        &ops::concat_cols(&[&x, &y, &x]).unwrap(),
        0.0,
    );
    close(
        &format!("gather_rows of {x_w}"),
        &ops::gather_rows(&xd, order, 2).unwrap(),
        &ops::gather_rows(&x, order, 2).unwrap(),
        0.0,
    );
    let n_slots = slots.iter().max().map_or(0, |m| m + 1);
    let mut c = rand_t(rng, &[n_slots * dst_w], 1.0);
    let mut g = c.to_device(d).unwrap();
    ops::scatter_rows(&mut c, dst_w, col, slots, &x).unwrap();
    ops::scatter_rows(&mut g, dst_w, col, slots, &xd).unwrap();
    close(&format!("scatter_rows of {x_w}"), &g, &c, 0.0);
}

#[test]
fn embedding_norms_add_and_gates() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let table = rand_t(&mut rng, &[50, 40], 1.0);
    let ids = [3u32, 49, 0, 3, 17];
    close(
        "embedding",
        &ops::embedding(&table.to_device_bf16(&d).unwrap(), &ids).unwrap(),
        &ops::embedding(&table, &ids).unwrap(),
        0.0,
    );
    assert!(ops::embedding(&table.to_device_bf16(&d).unwrap(), &[50]).is_err());
    let (x, delta) = check_norms(&d, &mut rng, 6, 40);
    let (xd, dd) = (x.to_device(&d).unwrap(), delta.to_device(&d).unwrap());
    let wh = rand_t(&mut rng, &[8], 1.0);
    let (mut c, mut g) = (x.clone(), xd.clone());
    ops::rms_norm_chunks(&mut c, &wh, 1e-5).unwrap();
    ops::rms_norm_chunks(&mut g, &wh.to_device(&d).unwrap(), 1e-5).unwrap();
    close("rms_norm_chunks", &g, &c, 1e-5);
    let (mut c, mut g) = (x.clone(), xd.clone());
    ops::add_in_place(&mut c, &delta).unwrap();
    ops::add_in_place(&mut g, &dd).unwrap();
    close("add_in_place", &g, &c, 0.0);
    let gate = rand_t(&mut rng, &[6, 1], 3.0);
    let (mut c, mut g) = (x.clone(), xd.clone());
    ops::sigmoid_scale_rows(&mut c, &gate).unwrap();
    ops::sigmoid_scale_rows(&mut g, &gate.to_device(&d).unwrap()).unwrap();
    close("sigmoid_scale_rows", &g, &c, 1e-5);
    let am = ops::argmax_rows(&xd).unwrap();
    assert_eq!(am, ops::argmax_rows(&x).unwrap());
    let big = rand_t(&mut rng, &[3, 5000], 1.0);
    assert_eq!(
        ops::argmax_rows(&big.to_device(&d).unwrap()).unwrap(),
        ops::argmax_rows(&big).unwrap()
    );
}

#[test]
fn rope_half_interleaved_and_yarn() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let yarn = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 64.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: Some(0.707),
        mscale_all_dim: Some(0.707),
        attention_factor: None,
        truncate: true,
    };
    // (dim 128 over 32 heads: several blocks a row)
    for (scaling, interleaved, dim, heads) in [
        (RopeScaling::None, false, 16, 4),
        (RopeScaling::None, true, 16, 4),
        (yarn.clone(), true, 16, 4),
        (yarn, false, 16, 4),
        (RopeScaling::None, false, 128, 32),
        (RopeScaling::None, true, 128, 32),
    ] {
        let r = Rotary::new(
            &RopeConfig {
                theta: 10000.0,
                scaling,
                interleaved,
            },
            dim,
        );
        let x = rand_t(&mut rng, &[5, heads * dim], 1.0);
        let pos = [0usize, 1, 7, 300, 4095];
        let (mut c, mut g) = (x.clone(), x.to_device(&d).unwrap());
        ops::rope(&mut c, &r, &pos).unwrap();
        ops::rope(&mut g, &r, &pos).unwrap();
        close(&format!("rope dim {dim}, {heads} heads"), &g, &c, 1e-6);
    }
}

/// Narrow rows (one block a row) and whole hidden rows (several blocks a row).
#[test]
fn copies_gathers_and_scatters() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let order = [9u32, 0, 4, 4, 1, 8];
    check_copies(
        &d,
        &mut rng,
        (5, 24, 8),
        (7, 9),
        &order,
        &[11, 2, 7, 0, 5],
        (30, 4),
    );
    let order = [5u32, 0, 2, 2];
    check_copies(
        &d,
        &mut rng,
        (3, 5000, 1000),
        (700, 3000),
        &order,
        &[3, 0, 2],
        (5100, 50),
    );
}

/// Norms over rows wider than one block's pass (several values a thread), up to the kernel's
/// limit, and a clear error past it.
#[test]
fn wide_rows_take_several_blocks_a_row() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for cols in [4096, 7168, 16384] {
        check_norms(&d, &mut rng, 3, cols);
    }
    let too_wide = rand_t(&mut rng, &[1, 16385], 1.0).to_device(&d).unwrap();
    let w = rand_t(&mut rng, &[16385], 1.0).to_device(&d).unwrap();
    let err = ops::rms_norm(&too_wide, &w, 1e-6).unwrap_err().to_string();
    assert!(err.contains("16385"), "{err}");
}

/// SiLU(gate) · up on the GPU against the CPU, rows of [gate | up] at decode and prefill counts
/// (a dense MLP's activation between its two GEMMs).
#[test]
fn silu_mul_rows() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (rows, inter) in [(1, 1408), (37, 10944), (3, 5)] {
        let x = rand_t(&mut rng, &[rows, 2 * inter], 4.0);
        close(
            "silu_mul",
            &ops::silu_mul(&x.to_device(&d).unwrap()).unwrap(),
            &ops::silu_mul(&x).unwrap(),
            1e-6,
        );
    }
}

/// A bank of one expert at prefill row counts as `ExpertBank::forward_one` runs it (f32 copies
/// of the bf16 weights, two f32 GEMMs around silu_mul) against the grouped kernel's f32
/// activations: the same numbers up to summation order.
#[test]
fn one_expert_as_two_f32_gemms() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, h, i) = (100, 256, 704);
    let x = rand_t(&mut rng, &[rows, h], 1.0).to_device(&d).unwrap();
    let gu = rand_t(&mut rng, &[1, 2 * i, h], 0.1)
        .to_device_bf16(&d)
        .unwrap();
    let dn = rand_t(&mut rng, &[1, h, i], 0.1)
        .to_device_bf16(&d)
        .unwrap();
    let want = ops::grouped_swiglu(&x, &[0, rows], &gu, &dn, None).unwrap();
    let gu32 = gu
        .clone()
        .reshape([2 * i, h])
        .unwrap()
        .to_device(&d)
        .unwrap();
    let dn32 = dn.clone().reshape([h, i]).unwrap().to_device(&d).unwrap();
    let act = ops::silu_mul(&ops::linear(&x, &gu32, None).unwrap()).unwrap();
    close(
        "one expert, two f32 GEMMs",
        &ops::linear(&act, &dn32, None).unwrap(),
        &want.to_cpu().unwrap(),
        1e-5,
    );
}

#[test]
fn grouped_swiglu_and_combine() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (t, k, e, h, i) = (9, 2, 4, 64, 32);
    let x = rand_t(&mut rng, &[t, h], 1.0);
    let experts: Vec<u32> = (0..t * k).map(|p| [0u32, 2, 3][p % 3]).collect(); // expert 1 gets nothing
    let weights: Vec<f32> = (0..t * k).map(|_| rng.random_range(0.0..1.0)).collect();
    let perm = ops::permute_by_expert(&experts, e);
    let (gu, dn) = (
        rand_t(&mut rng, &[e, 2 * i, h], 0.2),
        rand_t(&mut rng, &[e, h, i], 0.2),
    );
    let (gb, db) = (
        rand_t(&mut rng, &[e, 2 * i], 0.5),
        rand_t(&mut rng, &[e, h], 0.5),
    );
    let xd = x.to_device(&d).unwrap();
    let xs = ops::gather_rows(&x, &perm.order, k).unwrap();
    let xsd = ops::gather_rows(&xd, &perm.order, k).unwrap();
    let (gud, dnd) = (
        gu.to_device_bf16(&d).unwrap(),
        dn.to_device_bf16(&d).unwrap(),
    );
    let (gbd, dbd) = (gb.to_device(&d).unwrap(), db.to_device(&d).unwrap());
    for bias in [false, true] {
        let bc = bias.then_some((&gb, &db));
        let bg = bias.then_some((&gbd, &dbd));
        let yc = ops::grouped_swiglu(&xs, &perm.offsets, &gu, &dn, bc).unwrap();
        let yg = ops::grouped_swiglu(&xsd, &perm.offsets, &gud, &dnd, bg).unwrap();
        close("grouped_swiglu", &yg, &yc, 1e-5);
        close(
            "combine",
            &ops::combine(&yg, &perm.order, &weights, k).unwrap(),
            &ops::combine(&yc, &perm.order, &weights, k).unwrap(),
            1e-5,
        );
    }
}
