//! The CUDA attention paths against the CPU reference: the paged per-query and decode kernels,
//! flash prefill, the step index every layer of a step shares, and the GQA split + RoPE + cache
//! write in one launch. GPU outputs are poisoned (NaN) before the kernels run, so an unwritten
//! element fails. Skips, saying so, where there is no GPU (CI).
#![cfg(feature = "cuda")]

mod common;

use common::{close, gpu, rand_t};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use switchyard::attention::AttentionStep;
use switchyard::backend::cuda::attention;
use switchyard::backend::Device;
use switchyard::config::{RopeConfig, RopeScaling};
use switchyard::model::StepBatch;
use switchyard::ops::{self, Heads, PagedCache, QueryPos, Rotary};
use switchyard::tensor::Tensor;

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
    // The cache a GPU model allocates (bf16) and f32 rows: rand_t's values are bf16 numbers,
    // so both hold exactly the reference's rows.
    let qd = q.to_device(d).unwrap();
    for bf16 in [true, false] {
        let up = |t: &Tensor| {
            if bf16 {
                t.to_device_bf16(d).unwrap()
            } else {
                t.to_device(d).unwrap()
            }
        };
        // Shared rows stay one buffer on the GPU, as MLA's cache is (the MLA kernel needs it).
        let kd = up(&keys);
        let vd = if shared_kv { kd.clone() } else { up(&values) };
        let got = ops::paged_attention(
            &qd,
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
            &format!("paged attention {heads:?} lens {lens:?} new {new:?}, bf16 cache {bf16}"),
            &got,
            &want,
            tol,
        );
    }
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
    // At DeepSeek's widths (512 latent + 64 rope dims, 32 heads): the tensor-core MLA kernels
    // over bf16 rows (queries, rows and probabilities rounded to bf16, as flash prefill's), the
    // per-query kernel over f32 rows. A 70-token prefill in units of four rows (every row its
    // own prefix); a decode row past several 64-key tiles and a one-token prompt, 32 heads a
    // block: two blocks, so each row's positions are cut in two chunks (the short row's second
    // chunk empty) and merged.
    let deepseek = Heads {
        n_heads: 32,
        n_kv_heads: 1,
        qk_dim: 576,
        v_dim: 512,
        scale: 0.07,
        window: None,
    };
    attention_case(
        &d,
        &mut rng,
        deepseek,
        576,
        true,
        16,
        &[300, 70, 1],
        &[1, 70, 1],
        1e-2,
    );
    // One decode row of 2000 positions: one block, so eight chunks of 256.
    attention_case(&d, &mut rng, deepseek, 576, true, 16, &[2000], &[1], 1e-2);
    // 16 heads (DeepSeek-V2-Lite, or V3 under 8-way tensor parallelism): the decode kernel's
    // 16-head form, a decode row in three chunks; a 40-token prefill, and a 37-row chunk after
    // 113 cached positions (its last unit one row).
    let lite = Heads {
        n_heads: 16,
        ..deepseek
    };
    attention_case(
        &d,
        &mut rng,
        lite,
        576,
        true,
        16,
        &[700, 40, 150],
        &[1, 40, 37],
        1e-2,
    );
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
        let p = attention::plan(&queries, true, attention::MIN_FLASH_RUN, 64);
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

/// Unscaled RoPE of base `theta` over `dim` dims.
fn rotary(theta: f64, interleaved: bool, dim: usize) -> Rotary {
    let cfg = RopeConfig {
        theta,
        scaling: RopeScaling::None,
        interleaved,
    };
    Rotary::new(&cfg, dim)
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
    let (half, inter, absent) = (
        rotary(10000.0, false, 128),
        rotary(10000.0, true, 64),
        rotary(500.0, false, 64),
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
        let (mut kb, mut vb) = (
            kc.to_device_bf16(&d).unwrap(),
            vc.to_device_bf16(&d).unwrap(),
        );
        let qkv = rand_t(&mut rng, &[t, q_w + 2 * kv_w], 1.0);
        let (nc, ng) = (
            norms.then_some((&norm_w, &norm_w, 1e-6)),
            norms.then_some((&norm_d, &norm_d, 1e-6)),
        );
        let qc = cpu_step
            .qkv_rope_cache(&qkv, q_w, kv_w, nc, rotary, &mut kc, &mut vc)
            .unwrap();
        let qkv_d = qkv.to_device(&d).unwrap();
        let qg = gpu_step
            .qkv_rope_cache(&qkv_d, q_w, kv_w, ng, rotary, &mut kg, &mut vg)
            .unwrap();
        let what = format!("qkv_rope_cache dim {dim}, {nh} heads, norms {norms}");
        close(&format!("{what}: q"), &qg, &qc, 1e-6);
        close(&format!("{what}: keys"), &kg, &kc, 1e-6);
        close(&format!("{what}: values"), &vg, &vc, 0.0);
        // Into bf16 caches (a GPU model's): the roped keys rounded to bf16 (relative error at
        // most 2^-9 an element), the values (bf16 numbers already) exact.
        let qb = gpu_step
            .qkv_rope_cache(&qkv_d, q_w, kv_w, ng, rotary, &mut kb, &mut vb)
            .unwrap();
        close(&format!("{what}: q, bf16 caches"), &qb, &qc, 1e-6);
        close(&format!("{what}: keys, bf16 cache"), &kb, &kc, 2e-3);
        close(&format!("{what}: values, bf16 cache"), &vb, &vc, 0.0);
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
    let p = attention::plan(&queries, true, 8, 64);
    assert_eq!(
        p.tiles,
        vec![0, 64, 0, 5, 64, 64, 0, 69, 128, 2, 0, 133, 134, 10, 3, 10]
    );
    assert_eq!(p.rows, vec![130, 131, 132, 133]);
    let p = attention::plan(&queries, false, 8, 64);
    assert!(p.tiles.is_empty());
    assert_eq!(p.rows, (0..queries.len() as i32).collect::<Vec<_>>());
    // A gap in positions or a new sequence ends a run.
    let p = attention::plan(&[q(0, 0), q(0, 2), q(1, 3), q(1, 4)], true, 2, 64);
    assert_eq!(p.tiles, vec![2, 2, 1, 3]);
    assert_eq!(p.rows, vec![0, 1]);
    // MLA's prefill units: runs of two or more in tiles of four rows, the decode row alone.
    let p = attention::plan(&queries, true, 2, 4);
    assert_eq!(p.tiles.len() / 4, 33 + 1 + 3);
    assert_eq!(&p.tiles[..8], &[0, 4, 0, 5, 4, 4, 0, 9]);
    assert_eq!(&p.tiles[4 * 32..4 * 34], &[128, 2, 0, 133, 131, 3, 2, 0]);
    assert_eq!(
        &p.tiles[4 * 34..],
        &[134, 4, 3, 10, 138, 4, 3, 14, 142, 2, 3, 18]
    );
    assert_eq!(p.rows, vec![130]);
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
    let (r1, r2) = (rotary(10000.0, false, 64), rotary(500.0, false, 32));
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
        // The same writes into a bf16 cache: the roped keys rounded, the values exact.
        let mut kb = rand_t(&mut rng, &[slots * kv_w], 1.0)
            .to_device_bf16(&d)
            .unwrap();
        let mut vb = rand_t(&mut rng, &[slots * kv_w], 1.0)
            .to_device_bf16(&d)
            .unwrap();
        let (mut kw, mut vw) = (kb.to_cpu().unwrap(), vb.to_cpu().unwrap());
        gpu_step.write_rows(&mut kb, kv_w, 0, &kh).unwrap();
        cpu_step.write_rows(&mut kw, kv_w, 0, &kk).unwrap();
        gpu_step
            .write_rows(&mut vb, kv_w, 0, &v.to_device(&d).unwrap())
            .unwrap();
        cpu_step.write_rows(&mut vw, kv_w, 0, &v).unwrap();
        close("step cache write (keys), bf16 cache", &kb, &kw, 2e-3);
        close("step cache write (values), bf16 cache", &vb, &vw, 0.0);
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
