//! Every CUDA op against its CPU reference on fresh random inputs, with every GPU output poisoned
//! (NaN) before the kernel runs so an unwritten element fails. Skips, saying so, where there is
//! no GPU (CI). Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard::attention::AttentionStep;
use switchyard::backend::cuda::attention;
use switchyard::backend::Device;
use switchyard::config::{RopeConfig, RopeScaling};
use switchyard::model::StepBatch;
use switchyard::ops::{self, Heads, PagedCache, QueryPos, Rotary};
use switchyard::tensor::Tensor;

/// Random values already representable in bf16, so uploading a weight as bf16 is exact.
fn rand_t(rng: &mut ChaCha8Rng, dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| half::bf16::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect();
    Tensor::from_f32(dims.to_vec(), v).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_cpu().unwrap().into_vec()
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite output (an element was not written?)"
    );
    let d: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let e = rel(&host(got), want.as_slice());
    eprintln!("{what}: relative L2 error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.2e} > {tol:.0e}");
}

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
    let (x, w, delta) = (
        rand_t(&mut rng, &[6, 40], 2.0),
        rand_t(&mut rng, &[40], 1.0),
        rand_t(&mut rng, &[6, 40], 1.0),
    );
    let (xd, wd, dd) = (
        x.to_device(&d).unwrap(),
        w.to_device(&d).unwrap(),
        delta.to_device(&d).unwrap(),
    );
    close(
        "rms_norm",
        &ops::rms_norm(&xd, &wd, 1e-6).unwrap(),
        &ops::rms_norm(&x, &w, 1e-6).unwrap(),
        1e-5,
    );
    let (mut rc, mut rg) = (x.clone(), xd.clone());
    let yc = ops::add_rms_norm(&mut rc, &delta, &w, 1e-6).unwrap();
    let yg = ops::add_rms_norm(&mut rg, &dd, &wd, 1e-6).unwrap();
    close("add_rms_norm out", &yg, &yc, 1e-5);
    close("add_rms_norm residual", &rg, &rc, 1e-6);
    close("clone untouched by the in-place add", &xd, &x, 0.0);
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
    for (scaling, interleaved) in [
        (RopeScaling::None, false),
        (RopeScaling::None, true),
        (yarn.clone(), true),
        (yarn, false),
    ] {
        let r = Rotary::new(
            &RopeConfig {
                theta: 10000.0,
                scaling,
                interleaved,
            },
            16,
        );
        let x = rand_t(&mut rng, &[5, 64], 1.0);
        let pos = [0usize, 1, 7, 300, 4095];
        let (mut c, mut g) = (x.clone(), x.to_device(&d).unwrap());
        ops::rope(&mut c, &r, &pos).unwrap();
        ops::rope(&mut g, &r, &pos).unwrap();
        close("rope", &g, &c, 1e-6);
    }
}

#[test]
fn copies_gathers_and_scatters() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = rand_t(&mut rng, &[5, 24], 1.0);
    let y = rand_t(&mut rng, &[5, 8], 1.0);
    let (xd, yd) = (x.to_device(&d).unwrap(), y.to_device(&d).unwrap());
    close(
        "narrow_cols",
        &ops::narrow_cols(&xd, 7, 9).unwrap(),
        &ops::narrow_cols(&x, 7, 9).unwrap(),
        0.0,
    );
    close(
        "concat_cols",
        &ops::concat_cols(&[&xd, &yd, &xd]).unwrap(),
        &ops::concat_cols(&[&x, &y, &x]).unwrap(),
        0.0,
    );
    let order = [9u32, 0, 4, 4, 1, 8];
    close(
        "gather_rows",
        &ops::gather_rows(&xd, &order, 2).unwrap(),
        &ops::gather_rows(&x, &order, 2).unwrap(),
        0.0,
    );
    let slots = [11usize, 2, 7, 0, 5];
    let mut c = rand_t(&mut rng, &[12 * 30], 1.0);
    let mut g = c.to_device(&d).unwrap();
    ops::scatter_rows(&mut c, 30, 4, &slots, &x).unwrap();
    ops::scatter_rows(&mut g, 30, 4, &slots, &xd).unwrap();
    close("scatter_rows", &g, &c, 0.0);
}

/// Rows wider than one block's pass (several values a thread, several blocks a row): the
/// decode-width norms, RoPE over all heads of a row, and copies of whole hidden rows.
#[test]
fn wide_rows_take_several_blocks_a_row() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for cols in [4096, 7168, 16384] {
        let (x, w, delta) = (
            rand_t(&mut rng, &[3, cols], 2.0),
            rand_t(&mut rng, &[cols], 1.0),
            rand_t(&mut rng, &[3, cols], 1.0),
        );
        let (xd, wd, dd) = (
            x.to_device(&d).unwrap(),
            w.to_device(&d).unwrap(),
            delta.to_device(&d).unwrap(),
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
        close(&format!("add_rms_norm over {cols}"), &yg, &yc, 1e-5);
        close(
            &format!("add_rms_norm residual over {cols}"),
            &rg,
            &rc,
            1e-6,
        );
    }
    let too_wide = rand_t(&mut rng, &[1, 16385], 1.0).to_device(&d).unwrap();
    let w = rand_t(&mut rng, &[16385], 1.0).to_device(&d).unwrap();
    let err = ops::rms_norm(&too_wide, &w, 1e-6).unwrap_err().to_string();
    assert!(err.contains("16385"), "{err}");

    for interleaved in [false, true] {
        let r = Rotary::new(
            &RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::None,
                interleaved,
            },
            128,
        );
        let x = rand_t(&mut rng, &[3, 32 * 128], 1.0);
        let (mut c, mut g) = (x.clone(), x.to_device(&d).unwrap());
        ops::rope(&mut c, &r, &[0, 9, 2000]).unwrap();
        ops::rope(&mut g, &r, &[0, 9, 2000]).unwrap();
        close("rope over 32 heads of 128", &g, &c, 1e-6);
    }

    let x = rand_t(&mut rng, &[3, 5000], 1.0);
    let y = rand_t(&mut rng, &[3, 1000], 1.0);
    let (xd, yd) = (x.to_device(&d).unwrap(), y.to_device(&d).unwrap());
    close(
        "narrow_cols of 3000",
        &ops::narrow_cols(&xd, 700, 3000).unwrap(),
        &ops::narrow_cols(&x, 700, 3000).unwrap(),
        0.0,
    );
    close(
        "concat_cols of 5000 + 1000",
        &ops::concat_cols(&[&xd, &yd]).unwrap(),
        &ops::concat_cols(&[&x, &y]).unwrap(),
        0.0,
    );
    close(
        "gather_rows of 5000",
        &ops::gather_rows(&xd, &[5, 0, 2, 2], 2).unwrap(),
        &ops::gather_rows(&x, &[5, 0, 2, 2], 2).unwrap(),
        0.0,
    );
    let mut c = rand_t(&mut rng, &[4 * 5100], 1.0);
    let mut g = c.to_device(&d).unwrap();
    ops::scatter_rows(&mut c, 5100, 50, &[3, 0, 2], &x).unwrap();
    ops::scatter_rows(&mut g, 5100, 50, &[3, 0, 2], &xd).unwrap();
    close("scatter_rows of 5000", &g, &c, 0.0);
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

fn attention_case(
    d: &Device,
    rng: &mut ChaCha8Rng,
    heads: Heads,
    k_width: usize,
    shared_kv: bool,
    block_size: usize,
    lens: &[usize],
    new: &[usize],
    tol: f64,
) {
    let n_blocks = lens.iter().map(|l| l.div_ceil(block_size)).sum::<usize>() + 8;
    let slots = n_blocks * block_size;
    let keys = rand_t(rng, &[slots * k_width], 1.0);
    let v_width = if shared_kv {
        k_width
    } else {
        heads.n_kv_heads * heads.v_dim
    };
    let values = if shared_kv {
        keys.clone()
    } else {
        rand_t(rng, &[slots * v_width], 1.0)
    };
    // Each sequence gets scattered blocks.
    let mut free: Vec<u32> = (0..n_blocks as u32).collect();
    free.sort_by_key(|b| (b * 37) % n_blocks as u32);
    let tables: Vec<Vec<u32>> = lens
        .iter()
        .map(|&l| {
            (0..l.div_ceil(block_size))
                .map(|_| free.pop().unwrap())
                .collect()
        })
        .collect();
    let mut queries = Vec::new();
    for (seq, (&l, &n)) in lens.iter().zip(new).enumerate() {
        queries.extend((l - n..l).map(|pos| QueryPos { seq, pos }));
    }
    let q = rand_t(rng, &[queries.len(), heads.n_heads * heads.qk_dim], 1.0);
    let refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    let want = ops::paged_attention(
        &q,
        &queries,
        &refs,
        PagedCache {
            data: &keys,
            width: k_width,
            block_size,
        },
        PagedCache {
            data: &values,
            width: v_width,
            block_size,
        },
        heads,
    )
    .unwrap();
    let (kd, vd) = (keys.to_device(d).unwrap(), values.to_device(d).unwrap());
    let got = ops::paged_attention(
        &q.to_device(d).unwrap(),
        &queries,
        &refs,
        PagedCache {
            data: &kd,
            width: k_width,
            block_size,
        },
        PagedCache {
            data: &vd,
            width: v_width,
            block_size,
        },
        heads,
    )
    .unwrap();
    close(
        &format!("paged attention {heads:?} lens {lens:?} new {new:?}"),
        &got,
        &want,
        tol,
    );
}

#[test]
fn paged_attention_gqa_window_and_mla() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // GQA decode + prefill mixed, several sequences, long enough for several 256-key chunks.
    let gqa = Heads {
        n_heads: 8,
        n_kv_heads: 2,
        qk_dim: 32,
        v_dim: 32,
        scale: 0.17,
        window: None,
    };
    attention_case(
        &d,
        &mut rng,
        gqa,
        64,
        false,
        16,
        &[700, 5, 37],
        &[1, 5, 3],
        1e-5,
    );
    attention_case(
        &d,
        &mut rng,
        Heads {
            window: Some(40),
            ..gqa
        },
        64,
        false,
        4,
        &[300, 41],
        &[1, 41],
        1e-5,
    );
    // MLA absorbed: MQA over (latent, rope key) rows, values = the latent part of the same rows.
    let mla = Heads {
        n_heads: 4,
        n_kv_heads: 1,
        qk_dim: 40,
        v_dim: 32,
        scale: 0.2,
        window: None,
    };
    attention_case(&d, &mut rng, mla, 40, true, 4, &[19, 300], &[19, 1], 1e-5);
}

/// `n_heads` query heads over `n_kv_heads` KV heads of `dim` (= qk = v) dims, scale 1/sqrt(dim).
fn square_heads(n_heads: usize, n_kv_heads: usize, dim: usize, window: Option<usize>) -> Heads {
    Heads {
        n_heads,
        n_kv_heads,
        qk_dim: dim,
        v_dim: dim,
        scale: 1.0 / (dim as f32).sqrt(),
        window,
    }
}

/// The flash prefill kernel (head dims 64 and 128, bf16 tensor-core math) against the CPU
/// reference: whole prefills of 37, 300 and 1000 tokens, chunked prefill after a cached prefix,
/// prefill and decode rows in one batch, GQA groups 1/4/8, a sliding window. The 1-token prompt and
/// the decode rows take the per-query kernel in the same call.
#[test]
fn flash_prefill_against_reference() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let tol = 2e-2;
    // (heads, block size, sequence lengths, new queries per sequence)
    let cases: [(Heads, usize, &[usize], &[usize]); 6] = [
        (square_heads(4, 4, 128, None), 16, &[1000], &[1000]),
        (
            square_heads(8, 2, 64, None),
            16,
            &[37, 300, 500],
            &[37, 300, 1],
        ),
        (
            square_heads(8, 1, 128, None),
            16,
            &[700, 1, 64],
            &[200, 1, 1],
        ),
        (
            square_heads(8, 8, 64, Some(100)),
            16,
            &[300, 90, 41],
            &[250, 90, 1],
        ),
        (square_heads(4, 1, 64, Some(40)), 32, &[1000], &[1000]),
        (
            square_heads(8, 2, 128, Some(300)),
            16,
            &[1000, 77],
            &[700, 9],
        ),
    ];
    for (h, block_size, lens, new) in cases {
        let mut queries = Vec::new();
        for (seq, (&l, &n)) in lens.iter().zip(new).enumerate() {
            queries.extend((l - n..l).map(|pos| QueryPos { seq, pos }));
        }
        let p = attention::plan(&queries, true, attention::MIN_FLASH_RUN);
        assert!(!p.tiles.is_empty(), "{lens:?}/{new:?} takes no flash tile");
        let width = h.n_kv_heads * h.qk_dim;
        attention_case(&d, &mut rng, h, width, false, block_size, lens, new, tol);
    }
}

/// The per-query decode kernel (head dims 64 and 128, f32; one block per query and KV head)
/// against the CPU reference: decode rows and runs shorter than a flash tile over contexts of 1
/// to 700 positions in scattered blocks, GQA groups 1, 4 and 8, a sliding window, and a group of
/// 16 (past the kernel's limit: the generic per-query kernel serves it).
#[test]
fn paged_decode_against_reference() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // (heads, block size, sequence lengths, new queries per sequence: all shorter than a tile)
    let cases: [(Heads, usize, &[usize], &[usize]); 5] = [
        (
            square_heads(32, 8, 128, None),
            16,
            &[700, 33, 5, 1],
            &[1, 3, 5, 1],
        ),
        (square_heads(8, 1, 64, None), 4, &[300, 17], &[1, 7]),
        (square_heads(4, 4, 128, None), 16, &[129, 2], &[2, 1]),
        (square_heads(16, 2, 64, Some(50)), 16, &[400, 60], &[1, 4]),
        (square_heads(16, 1, 64, None), 16, &[90], &[1]),
    ];
    for (h, block_size, lens, new) in cases {
        let width = h.n_kv_heads * h.qk_dim;
        attention_case(&d, &mut rng, h, width, false, block_size, lens, new, 1e-5);
    }
}

/// A prefill, a decode row, a short chunk and a long chunk over scattered blocks of `bs` slots
/// (40 blocks in all).
fn mixed_batch(bs: usize) -> StepBatch {
    let mut free: Vec<u32> = (0..40).map(|b| (b * 13) % 40).collect();
    let mut batch = StepBatch::default();
    // (first new position, new tokens)
    for (start, n) in [(0usize, 40usize), (100, 1), (20, 3), (5, 12)] {
        let table = (0..(start + n).div_ceil(bs))
            .map(|_| free.pop().unwrap())
            .collect();
        let tokens = vec![1u32; n];
        batch.push_sequence(&tokens, start, table, false);
    }
    batch
}

/// The GQA step between the QKV projection and attention (split, RoPE of q and k, cache writes)
/// in one launch, for half and interleaved RoPE and 4096-wide q rows (several blocks a row),
/// against the reference ops on the CPU; and through the reference ops on the GPU for a rotary
/// the step index lacks or with per-head norms.
#[test]
fn qkv_rope_cache_in_one_launch() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let bs = 16;
    let batch = mixed_batch(bs);
    let t = batch.tokens.len();
    let rope = |theta, interleaved, dim| {
        Rotary::new(
            &RopeConfig {
                theta,
                scaling: RopeScaling::None,
                interleaved,
            },
            dim,
        )
    };
    let (half, inter, absent) = (
        rope(10000.0, false, 128),
        rope(10000.0, true, 64),
        rope(500.0, false, 64),
    );
    let cpu_step = AttentionStep::new(&batch, bs, &Device::Cpu, &[]).unwrap();
    let gpu_step = AttentionStep::new(&batch, bs, &d, &[&half, &inter]).unwrap();
    let norm_w = rand_t(&mut rng, &[64], 1.0);
    let norm_d = norm_w.to_device(&d).unwrap();
    for (rotary, nh, nkv, norms) in [
        (&half, 32, 8, false),
        (&inter, 8, 2, false),
        (&absent, 8, 2, false),
        (&inter, 8, 2, true),
    ] {
        let dim = rotary.dim();
        let (q_w, kv_w) = (nh * dim, nkv * dim);
        let slots = 40 * bs;
        let (mut kc, mut vc) = (
            rand_t(&mut rng, &[slots * kv_w], 1.0),
            rand_t(&mut rng, &[slots * kv_w], 1.0),
        );
        let (mut kg, mut vg) = (kc.to_device(&d).unwrap(), vc.to_device(&d).unwrap());
        let qkv = rand_t(&mut rng, &[t, q_w + 2 * kv_w], 1.0);
        let (nc, ng) = (
            norms.then_some((&norm_w, &norm_w, 1e-6)),
            norms.then_some((&norm_d, &norm_d, 1e-6)),
        );
        let qc = cpu_step
            .qkv_rope_cache(&qkv, q_w, kv_w, nc, rotary, &mut kc, &mut vc)
            .unwrap();
        let qg = gpu_step
            .qkv_rope_cache(
                &qkv.to_device(&d).unwrap(),
                q_w,
                kv_w,
                ng,
                rotary,
                &mut kg,
                &mut vg,
            )
            .unwrap();
        let what = format!("qkv_rope_cache dim {dim}, {nh} heads, norms {norms}");
        close(&format!("{what}: q"), &qg, &qc, 1e-6);
        close(&format!("{what}: keys"), &kg, &kc, 1e-6);
        close(&format!("{what}: values"), &vg, &vc, 0.0);
    }
    // A rank with no tokens this step (data parallel): nothing to do, an empty q.
    let empty = StepBatch::default();
    let idle = AttentionStep::new(&empty, bs, &d, &[&half]).unwrap();
    let (mut kg, mut vg) = (
        rand_t(&mut rng, &[40 * bs * 1024], 1.0)
            .to_device(&d)
            .unwrap(),
        rand_t(&mut rng, &[40 * bs * 1024], 1.0)
            .to_device(&d)
            .unwrap(),
    );
    let none = Tensor::zeros_on([0, 4096 + 2 * 1024], &d).unwrap();
    let q = idle
        .qkv_rope_cache(&none, 4096, 1024, None, &half, &mut kg, &mut vg)
        .unwrap();
    assert_eq!(q.dims(), [0, 4096]);
    let qkv = rand_t(&mut rng, &[t, 100], 1.0).to_device(&d).unwrap();
    let (mut kg, mut vg) = (
        rand_t(&mut rng, &[40 * bs * 128], 1.0)
            .to_device(&d)
            .unwrap(),
        rand_t(&mut rng, &[40 * bs * 128], 1.0)
            .to_device(&d)
            .unwrap(),
    );
    let err = gpu_step
        .qkv_rope_cache(&qkv, 256, 128, None, &half, &mut kg, &mut vg)
        .unwrap_err();
    assert!(err.to_string().contains("qkv_rope_cache"), "{err}");
}

/// How a step's queries split between the flash tiles and the per-query kernel (no GPU needed).
#[test]
fn attention_plan_cuts_runs_into_tiles() {
    let q = |seq, pos| QueryPos { seq, pos };
    let mut queries: Vec<QueryPos> = (5..135).map(|p| q(0, p)).collect(); // 130 prefill rows
    queries.push(q(1, 40)); // a decode row
    queries.extend((0..3).map(|p| q(2, p))); // a short run
    queries.extend((10..20).map(|p| q(3, p))); // a 10-row chunk
    let p = attention::plan(&queries, true, 8);
    assert_eq!(
        p.tiles,
        vec![0, 64, 0, 5, 64, 64, 0, 69, 128, 2, 0, 133, 134, 10, 3, 10]
    );
    assert_eq!(p.rows, vec![130, 131, 132, 133]);
    let p = attention::plan(&queries, false, 8);
    assert!(p.tiles.is_empty());
    assert_eq!(p.rows, (0..queries.len() as i32).collect::<Vec<_>>());
    // A gap in positions or a new sequence ends a run.
    let p = attention::plan(&[q(0, 0), q(0, 2), q(1, 3), q(1, 4)], true, 2);
    assert_eq!(p.tiles, vec![2, 2, 1, 3]);
    assert_eq!(p.rows, vec![0, 1]);
}

/// One step's index serving several "layers" as a model step does: RoPE from the uploaded tables
/// (and, for a rotary the step lacks, from the host), cache writes at the uploaded slots, and
/// attention through both kernels (head dim 64: flash tiles + per-query rows) and the per-query
/// kernel alone (head dim 32), all against the CPU step on the same inputs.
#[test]
fn step_index_serves_every_layer() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let bs = 16;
    let batch = mixed_batch(bs);
    let t = batch.tokens.len();
    let rope_cfg = |theta| RopeConfig {
        theta,
        scaling: RopeScaling::None,
        interleaved: false,
    };
    let (r1, r2) = (
        Rotary::new(&rope_cfg(10000.0), 64),
        Rotary::new(&rope_cfg(500.0), 32),
    );
    let cpu_step = AttentionStep::new(&batch, bs, &Device::Cpu, &[&r1]).unwrap();
    let gpu_step = AttentionStep::new(&batch, bs, &d, &[&r1]).unwrap();
    for (dim, rotary) in [(64, &r1), (32, &r2)] {
        let (nh, nkv) = (8, 2);
        let kv_w = nkv * dim;
        let slots = 40 * bs;
        let (mut kc, mut vc) = (
            rand_t(&mut rng, &[slots * kv_w], 1.0),
            rand_t(&mut rng, &[slots * kv_w], 1.0),
        );
        let (mut kg, mut vg) = (kc.to_device(&d).unwrap(), vc.to_device(&d).unwrap());
        let q = rand_t(&mut rng, &[t, nh * dim], 1.0);
        let k = rand_t(&mut rng, &[t, kv_w], 1.0);
        let v = rand_t(&mut rng, &[t, kv_w], 1.0);
        let (mut qc, mut qg) = (q.clone(), q.to_device(&d).unwrap());
        let (mut kk, mut kd) = (k.clone(), k.to_device(&d).unwrap());
        cpu_step.rope(&mut qc, rotary).unwrap();
        gpu_step.rope(&mut qg, rotary).unwrap();
        cpu_step.rope(&mut kk, rotary).unwrap();
        gpu_step.rope(&mut kd, rotary).unwrap();
        close(&format!("step rope dim {dim}"), &qg, &qc, 1e-6);
        close(&format!("step rope k dim {dim}"), &kd, &kk, 1e-6);
        // Exact on the GPU side: write the CPU-roped keys so both caches hold the same rows.
        let kh = kk.to_device(&d).unwrap();
        cpu_step.write_rows(&mut kc, kv_w, 0, &kk).unwrap();
        gpu_step.write_rows(&mut kg, kv_w, 0, &kh).unwrap();
        cpu_step.write_rows(&mut vc, kv_w, 0, &v).unwrap();
        gpu_step
            .write_rows(&mut vg, kv_w, 0, &v.to_device(&d).unwrap())
            .unwrap();
        close("step cache write (keys)", &kg, &kc, 0.0);
        close("step cache write (values)", &vg, &vc, 0.0);
        let heads = Heads {
            n_heads: nh,
            n_kv_heads: nkv,
            qk_dim: dim,
            v_dim: dim,
            scale: 1.0 / (dim as f32).sqrt(),
            window: None,
        };
        let cache = |data| PagedCache {
            data,
            width: kv_w,
            block_size: bs,
        };
        let want = cpu_step
            .paged_attention(&qc, cache(&kc), cache(&vc), heads)
            .unwrap();
        let qh = qc.to_device(&d).unwrap();
        let got = gpu_step
            .paged_attention(&qh, cache(&kg), cache(&vg), heads)
            .unwrap();
        close(&format!("step attention dim {dim}"), &got, &want, 1e-2);
    }
    // A position past its table is an error on both devices, not a panic.
    let mut bad = mixed_batch(bs);
    bad.queries[0].pos = 10_000;
    assert!(AttentionStep::new(&bad, bs, &Device::Cpu, &[]).is_err());
    assert!(AttentionStep::new(&bad, bs, &d, &[]).is_err());
}
