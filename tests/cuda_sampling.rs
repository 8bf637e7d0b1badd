//! Sampling where the logits are: the GPU's greedy picks (`ops::greedy_rows`, the kernel in
//! kernels/sample.cu) against the CPU reference (`backend::cpu::sample::{argmax, top2_margin}`);
//! the GPU's temperature / top-k / top-p draws (`ops::sample_rows`) against
//! `backend::cpu::sample::sample` on the same rows and uniforms, and their frequencies against
//! the exact probabilities; and the scheduler's `StepLogits` over GPU logits against the host
//! sampler reading the same logits on the host — greedy and plain sampled rows picked on the
//! device, penalised / min_tokens / logprob rows gathered to the host and sampled there, with the
//! same seeded generators. Every GPU buffer is poisoned (NaN, -1) before a kernel writes it.
//! Skips, saying so, where there is no GPU.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard::backend::cpu::sample::{argmax, sample, top2_margin, RowDraw, SamplingParams};
use switchyard::backend::Device;
use switchyard::ops;
use switchyard::scheduler::{Need, Pick, Sampler, SamplingConfig, StepLogits};
use switchyard::tensor::Tensor;

/// Random logits with the hard cases planted: ties of the maximum in one thread's columns, in
/// different warps and at the row's ends; a tie for second place; a row of -inf; a row whose
/// only finite value is last; a constant row.
fn logits(rng: &mut ChaCha8Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..rows * vocab)
        .map(|_| rng.random_range(-8.0f32..8.0))
        .collect();
    for r in 0..rows {
        let row = &mut v[r * vocab..][..vocab];
        let top = 9.0 + (r % 3) as f32;
        match r % 8 {
            // Same thread (stride 256), then across warps, then the last column.
            0 if vocab > 600 => [7, 7 + 256, 7 + 512].iter().for_each(|&c| row[c] = top),
            1 => [vocab - 1, vocab / 2, vocab / 3]
                .iter()
                .for_each(|&c| row[c] = top),
            2 => [0, vocab - 1].iter().for_each(|&c| row[c] = top),
            3 => {
                row[vocab / 5] = top;
                row[vocab / 7] = top - 0.5;
                row[vocab - 2] = top - 0.5;
            }
            4 => row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
            5 => {
                row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                row[vocab - 1] = -1.0;
            }
            6 => row.iter_mut().for_each(|x| *x = 0.25),
            _ => {}
        }
    }
    v
}

/// The two margins are the same value (NaN where both are: a row of -inf).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn greedy_rows_equal_the_cpu_argmax_and_margin() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Vocabularies below one block's width, odd, and Mixtral's; up to 257 rows.
    for (rows, vocab) in [(1, 1), (3, 2), (9, 5), (17, 255), (33, 1000), (257, 32000)] {
        let v = logits(&mut rng, rows, vocab);
        let x = Tensor::from_f32([rows, vocab], v.clone()).unwrap();
        let got = ops::greedy_rows(&x.to_device(&d).unwrap()).unwrap();
        assert_eq!(got.len(), rows);
        for (r, (row, &(tok, margin))) in v.chunks_exact(vocab).zip(&got).enumerate() {
            assert_eq!(tok, argmax(row), "{rows}x{vocab}: row {r} token");
            assert!(
                same(margin, top2_margin(row)),
                "{rows}x{vocab}: row {r} margin {margin} vs {}",
                top2_margin(row)
            );
        }
        let cpu = ops::greedy_rows(&x).unwrap();
        assert!(
            got.iter()
                .zip(&cpu)
                .all(|(g, c)| g.0 == c.0 && same(g.1, c.1)),
            "{rows}x{vocab}: the CPU op gives {cpu:?}, the GPU {got:?}"
        );
    }
    let empty = Tensor::from_f32([0, 7], Vec::new()).unwrap();
    assert!(ops::greedy_rows(&empty.to_device(&d).unwrap())
        .unwrap()
        .is_empty());
}

/// What each test sequence asks for: greedy (picked on the device), and the kinds that read the
/// row on the host.
fn configs() -> Vec<SamplingConfig> {
    let sampled = |temperature, top_p, top_k| SamplingParams {
        temperature,
        top_p,
        top_k,
    };
    vec![
        SamplingConfig::default(),
        SamplingConfig {
            params: sampled(0.8, 1.0, 0),
            seed: 5,
            ..Default::default()
        },
        SamplingConfig {
            params: sampled(1.0, 0.9, 40),
            seed: 6,
            ..Default::default()
        },
        SamplingConfig {
            params: sampled(1.3, 0.5, 0),
            seed: 7,
            ..Default::default()
        },
        SamplingConfig {
            frequency_penalty: 0.7,
            presence_penalty: 0.2,
            ..Default::default()
        },
        SamplingConfig {
            logprobs: Some(3),
            ..Default::default()
        },
        SamplingConfig {
            min_tokens: 2,
            ..Default::default()
        },
    ]
}

#[test]
fn step_logits_on_the_gpu_pick_what_the_host_sampler_picks() {
    let Some(d) = gpu() else { return };
    let (rows, vocab, steps) = (56, 32000, 4);
    let eos = [3u32];
    let cfgs: Vec<SamplingConfig> = (0..rows).map(|r| configs()[r % 7].clone()).collect();
    let mut host_samplers: Vec<Sampler> = cfgs.iter().map(|c| Sampler::new(c.seed)).collect();
    let mut gpu_samplers = host_samplers.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (mut on_device, mut drawn, mut on_boundary) = (0, 0, 0);
    for step in 0..steps {
        let mut v = logits(&mut rng, rows, vocab);
        // Make end-of-sequence the greedy pick of some rows, so min_tokens matters.
        for r in (0..rows).step_by(3) {
            v[r * vocab + eos[0] as usize] = 20.0;
        }
        let x = Tensor::from_f32([rows, vocab], v.clone()).unwrap();
        let xd = x.to_device(&d).unwrap();
        let needs: Vec<Need> = cfgs
            .iter()
            .zip(&gpu_samplers)
            .map(|(c, s)| s.need(c, &eos, step))
            .collect();
        let (host, dev) = (
            StepLogits::new(&x, &needs).unwrap(),
            StepLogits::new(&xd, &needs).unwrap(),
        );
        for r in 0..rows {
            let row = &v[r * vocab..][..vocab];
            let Pick::Row(h) = host.pick(r) else {
                panic!("host logits are read in place")
            };
            assert_eq!(h, row);
            let want = host_samplers[r].pick(row, &cfgs[r], &eos, step);
            let got = match dev.pick(r) {
                Pick::Row(g) => {
                    assert_eq!(
                        needs[r],
                        Need::Row,
                        "row {r} came to the host without a need"
                    );
                    assert_eq!(g, row, "row {r}: gathered row differs");
                    gpu_samplers[r].pick(g, &cfgs[r], &eos, step)
                }
                Pick::Token(t) => {
                    assert_ne!(needs[r], Need::Row, "row {r} needs its row");
                    on_device += 1;
                    gpu_samplers[r].take(t)
                }
            };
            drawn += usize::from(matches!(needs[r], Need::Draw(..)));
            if let (Need::Draw(p, u), true) = (needs[r], got.0 != want.0) {
                // A draw may differ only where its uniform or top_p lies within the host's f32
                // rounding of a boundary of the running sum (the device's sums are exact); the
                // generators stay in step either way.
                let (tight, loose) = (exact(row, &p, u, Some(EPS)), exact(row, &p, u, None));
                assert!(
                    loose.pick.is_none()
                        && tight.allowed(got.0)
                        && tight.pick.is_none_or(|t| t == got.0),
                    "step {step}, row {r} ({:?}): device {} host {}",
                    cfgs[r],
                    got.0,
                    want.0
                );
                on_boundary += 1;
                continue;
            }
            assert_eq!(got.0, want.0, "step {step}, row {r} ({:?})", cfgs[r]);
            assert_eq!(got.1, want.1, "step {step}, row {r}: logprobs");
        }
    }
    // The default, the three sampling and (past step 2) the min_tokens sequences are picked on
    // the device.
    assert!(
        on_device >= 4 * steps * rows / 7,
        "{on_device} rows picked on the device"
    );
    // The host's f32 walk through a flat 32000-token row (the constant rows) is off by a token or
    // its top-p cutoff by one: a few draws differ there, each checked above.
    assert!(
        on_boundary * 4 <= drawn,
        "{on_boundary} of {drawn} draws on a boundary"
    );
}

/// Boundaries of the running sum closer to the uniform than this fraction of the mass are ties
/// that the device's rounding may break either way (it sums 64-bit fixed-point weights exactly;
/// its exponentials are off by a few units in the last place).
const EPS: f64 = 1e-5;

/// How far the host sampler's f32 arithmetic may move a boundary, as a fraction of the mass: it
/// sums up to `kept` weights for the total, then walks up to `kept` probabilities one at a time,
/// each step rounding by up to half an f32 ulp of a value <= 1 (so a deep pick in a flat
/// 32000-token row may be off by a few tokens, where the device is not).
fn host_tolerance(kept: usize) -> f64 {
    EPS + 2.0 * kept as f64 * f32::EPSILON as f64 / 2.0
}

/// The host sampler's decision recomputed exactly (f64 probabilities over the full sort).
struct Exact {
    /// Token ids in the sampler's order.
    order: Vec<usize>,
    /// How many tokens of `order` may be picked: the kept set (the larger one where top_p lies
    /// within the tolerance of a boundary).
    kept: usize,
    /// The pick, where no boundary lies within the tolerance of the uniform (or no float is
    /// involved: greedy, NaN weights).
    pick: Option<u32>,
}

impl Exact {
    fn allowed(&self, token: u32) -> bool {
        self.order[..self.kept].contains(&(token as usize))
    }
}

/// [`Exact`] with boundaries within `tol` (a fraction of the mass) of the uniform or of top_p
/// counted as ties; `tol` None: the host's tolerance for this row ([`host_tolerance`]).
fn exact(row: &[f32], p: &SamplingParams, uniform: f32, tol: Option<f64>) -> Exact {
    let n = row.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    if p.temperature <= 0.0 {
        return Exact {
            kept: n,
            pick: Some(argmax(row)),
            order,
        };
    }
    let kept = if p.top_k > 0 { p.top_k.min(n) } else { n };
    let tol = tol.unwrap_or_else(|| host_tolerance(kept));
    let max = row[argmax(row) as usize];
    // Where a kept weight is NaN in f32 (NaN or infinite logits, an all -inf row) every
    // probability is NaN and the host takes the last kept token: no float question.
    if order[..kept]
        .iter()
        .any(|&i| ((row[i] - max) / p.temperature).exp().is_nan())
    {
        return Exact {
            pick: Some(order[kept - 1] as u32),
            order,
            kept,
        };
    }
    let t = p.temperature as f64;
    let mut cum = Vec::with_capacity(kept);
    let mut acc = 0.0f64;
    for &i in &order[..kept] {
        acc += ((row[i] as f64 - max as f64) / t).exp();
        cum.push(acc);
    }
    cum.iter_mut().for_each(|c| *c /= acc);
    let first_reaching = |q: f64| cum.iter().position(|&c| c >= q).map_or(kept, |m| m + 1);
    let (lo, hi) = if p.top_p >= 1.0 || p.top_p.is_nan() {
        (kept, kept)
    } else {
        let q = p.top_p as f64;
        (first_reaching(q - tol), first_reaching(q + tol))
    };
    if lo != hi {
        return Exact {
            order,
            kept: hi,
            pick: None,
        };
    }
    let mass = cum[lo - 1];
    let target = uniform as f64 * mass;
    let pos = cum[..lo].iter().position(|&c| c > target).unwrap_or(lo - 1);
    // The first token has no boundary below it to be confused with.
    let below = if pos == 0 {
        f64::INFINITY
    } else {
        target - cum[pos - 1]
    };
    let margin = below.min(cum[pos] - target) / mass;
    Exact {
        pick: (margin > tol).then_some(order[pos] as u32),
        order,
        kept: lo,
    }
}

/// The device's picks for `draws` over the rows of `x` (uploaded to `d`).
fn device_picks(d: &Device, x: &Tensor, draws: &[RowDraw]) -> Vec<u32> {
    ops::sample_rows(&x.to_device(d).unwrap(), draws).unwrap()
}

/// Rows of one vocabulary size for the draw tests: smooth, on a coarse grid (ties), with -inf
/// entries, all -inf, with NaN or +inf, constant.
fn draw_rows(rng: &mut ChaCha8Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let spread = [1.0f32, 4.0, 12.0][r % 3];
        let mut row: Vec<f32> = (0..vocab)
            .map(|_| rng.random_range(-spread..spread))
            .collect();
        match r % 9 {
            1 | 5 => row.iter_mut().for_each(|x| *x = (*x * 2.0).round() / 2.0),
            2 => row
                .iter_mut()
                .step_by(3)
                .for_each(|x| *x = f32::NEG_INFINITY),
            3 if r % 4 == 3 => row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
            4 => {
                let c = rng.random_range(0..vocab);
                row[c] = if r % 2 == 0 { f32::NAN } else { f32::INFINITY };
            }
            6 => row.iter_mut().for_each(|x| *x = 0.5),
            _ => {}
        }
        v.extend(row);
    }
    v
}

fn random_params(rng: &mut ChaCha8Rng, vocab: usize) -> SamplingParams {
    SamplingParams {
        temperature: [0.0, 0.05, 0.3, 0.7, 1.0, 1.0, 1.5, 3.0][rng.random_range(0..8)],
        top_k: match rng.random_range(0..6) {
            0 | 1 => 0,
            2 => rng.random_range(1..=vocab.min(64)),
            3 => vocab,
            4 => vocab + 5,
            _ => rng.random_range(1..=vocab),
        },
        top_p: [1.0, 1.0, 0.95, 0.9, 0.5, 0.1, 1e-7, 0.0][rng.random_range(0..8)],
    }
}

#[test]
fn device_draws_pick_what_the_host_sampler_picks() {
    let Some(d) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (mut exact_picks, mut boundary, mut equal, mut total) = (0, 0, 0, 0);
    let mut vocabs = vec![1, 2, 3, 5, 17, 100, 511, 512, 513, 2048, 4097, 32000];
    vocabs.extend((0..6).map(|_| rng.random_range(1..=32000)));
    for vocab in vocabs {
        let rows = 18;
        let v = draw_rows(&mut rng, rows, vocab);
        let x = Tensor::from_f32([rows, vocab], v.clone()).unwrap();
        // Every row several times, with different parameters and uniforms (0 and the largest
        // f32 below 1 among them).
        let draws: Vec<RowDraw> = (0..4 * rows)
            .map(|k| RowDraw {
                row: k % rows,
                params: random_params(&mut rng, vocab),
                uniform: match k % 11 {
                    0 => 0.0,
                    1 => 1.0 - f32::EPSILON / 2.0,
                    _ => rng.random(),
                },
            })
            .collect();
        let got = device_picks(&d, &x, &draws);
        assert_eq!(got.len(), draws.len());
        for (dr, &g) in draws.iter().zip(&got) {
            let row = &v[dr.row * vocab..][..vocab];
            let host = sample(row, &dr.params, dr.uniform);
            let (tight, loose) = (
                exact(row, &dr.params, dr.uniform, Some(EPS)),
                exact(row, &dr.params, dr.uniform, None),
            );
            let what = format!("vocab {vocab}, row {}, {dr:?}", dr.row);
            assert!(loose.allowed(host), "{what}: host {host} is not kept");
            assert!(
                tight.allowed(g),
                "{what}: device {g} is not kept (host {host})"
            );
            match tight.pick {
                Some(t) => {
                    assert_eq!(g, t, "{what}: device vs exact (host {host})");
                    exact_picks += 1;
                }
                None => boundary += 1,
            }
            if let Some(t) = loose.pick {
                assert_eq!(host, t, "{what}: host vs exact");
                assert_eq!(g, host, "{what}: device vs host");
            }
            equal += usize::from(g == host);
            total += 1;
        }
    }
    eprintln!(
        "{total} draws: {exact_picks} equal to the exact pick, {boundary} within {EPS} of a \
         boundary; {equal} equal to the host's"
    );
    // A quarter of the draws at most sit on a boundary (the uniforms just below 1 by design, and
    // deep picks in flat rows of many tokens), so most are checked token for token.
    assert!(boundary * 4 < total, "{boundary} boundary cases of {total}");
}

#[test]
fn device_draw_frequencies_match_the_exact_probabilities() {
    let Some(d) = gpu() else { return };
    // Ties (1.5 twice, 0.5 twice), a -inf, and tokens that top-k or top-p drop.
    let row = [
        0.5,
        2.0,
        1.5,
        -1.0,
        f32::NEG_INFINITY,
        1.5,
        0.5,
        -3.0,
        2.25,
        0.0,
        -0.5,
        1.0,
    ];
    let x = Tensor::from_f32([1, row.len()], row.to_vec()).unwrap();
    let n = 20000;
    for params in [
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        },
        SamplingParams {
            temperature: 0.8,
            top_p: 1.0,
            top_k: 6,
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.8,
            top_k: 0,
        },
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 5,
        },
    ] {
        let draws: Vec<RowDraw> = (0..n)
            .map(|i| RowDraw {
                row: 0,
                params,
                uniform: ((i as f64 + 0.5) / n as f64) as f32,
            })
            .collect();
        let got = device_picks(&d, &x, &draws);
        let mut count = vec![0usize; row.len()];
        got.iter().for_each(|&t| count[t as usize] += 1);
        // The exact probabilities over the kept set (no top_p boundary is near).
        let e = exact(&row, &params, 0.5, Some(EPS));
        let keep = &e.order[..e.kept];
        let max = 2.25f64;
        let w = |i: usize| ((row[i] as f64 - max) / params.temperature as f64).exp();
        let mass: f64 = keep.iter().map(|&i| w(i)).sum();
        for (t, &c) in count.iter().enumerate() {
            // u = (i + 0.5) / n is evenly spread: a token of probability q gets n·q draws, one
            // more or fewer at each end of its interval.
            let want = if keep.contains(&t) {
                n as f64 * w(t) / mass
            } else {
                0.0
            };
            assert!(
                (c as f64 - want).abs() <= 2.0,
                "{params:?}: token {t} drawn {c} times, {want:.1} expected ({count:?})"
            );
        }
    }
}

/// `switchyard generate` with `args` on the mixtral fixture; its tokens.
fn generate_tokens(args: &[&str]) -> Vec<u32> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mixtral");
    let mut all = vec![
        "generate",
        "--model",
        dir,
        "--tokens",
        "5,17,42",
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ];
    all.extend_from_slice(args);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(&all)
        .output()
        .expect("running switchyard");
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("generate --json");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("a token id") as u32)
        .collect()
}

/// `generate --device cuda` draws on the device: a seed repeats its tokens, another seed draws
/// others, and top-k 1 is the greedy pick.
#[test]
fn generate_samples_on_the_gpu_repeatably() {
    if gpu().is_none() {
        return;
    }
    let hot = ["--device", "cuda", "--temperature", "1.5"];
    let seeded = |seed: &str| generate_tokens(&[&hot[..], &["--seed", seed]].concat());
    let (a, b, c) = (seeded("7"), seeded("7"), seeded("8"));
    assert_eq!(a, b, "the same seed draws the same tokens");
    assert_ne!(
        a, c,
        "another seed draws other tokens (16 draws at temperature 1.5)"
    );
    let greedy = generate_tokens(&["--device", "cuda", "--temperature", "0"]);
    let top1 = generate_tokens(&[&hot[..], &["--top-k", "1", "--seed", "7"]].concat());
    assert_eq!(top1, greedy, "top-k 1 keeps only the argmax");
}
