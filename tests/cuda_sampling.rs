//! Sampling where the logits are: the GPU's greedy picks (`ops::greedy_rows`, the kernel in
//! kernels/sample.cu) against the CPU reference (`backend::cpu::sample::{argmax, top2_margin}`),
//! and the scheduler's `StepLogits` over GPU logits against the host sampler reading the same
//! logits on the host — greedy rows picked on the device, sampled / penalised / logprob rows
//! gathered to the host and sampled there with the same seeded generator. Every GPU buffer is
//! poisoned (NaN, -1) before a kernel writes it. Skips, saying so, where there is no GPU.
#![cfg(feature = "cuda")]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard::backend::cpu::sample::{argmax, top2_margin, SamplingParams};
use switchyard::backend::cuda::storage::set_poison;
use switchyard::backend::Device;
use switchyard::ops;
use switchyard::scheduler::{Pick, Sampler, SamplingConfig, StepLogits};
use switchyard::tensor::Tensor;

fn gpu() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => {
            set_poison(true);
            Some(d)
        }
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            None
        }
    }
}

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
    let mut on_device = 0;
    for step in 0..steps {
        let mut v = logits(&mut rng, rows, vocab);
        // Make end-of-sequence the greedy pick of some rows, so min_tokens matters.
        for r in (0..rows).step_by(3) {
            v[r * vocab + eos[0] as usize] = 20.0;
        }
        let x = Tensor::from_f32([rows, vocab], v.clone()).unwrap();
        let xd = x.to_device(&d).unwrap();
        let needs: Vec<bool> = cfgs
            .iter()
            .map(|c| Sampler::needs_row(c, &eos, step))
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
                    assert!(needs[r], "row {r} came to the host without a need");
                    assert_eq!(g, row, "row {r}: gathered row differs");
                    gpu_samplers[r].pick(g, &cfgs[r], &eos, step)
                }
                Pick::Greedy(t) => {
                    assert!(!needs[r], "row {r} needs its row");
                    on_device += 1;
                    gpu_samplers[r].take_greedy(t)
                }
            };
            assert_eq!(got.0, want.0, "step {step}, row {r} ({:?})", cfgs[r]);
            assert_eq!(got.1, want.1, "step {step}, row {r}: logprobs");
        }
    }
    // The default and (past step 2) the min_tokens sequences are greedy on the device.
    assert!(
        on_device >= steps * rows / 7,
        "{on_device} rows picked on the device"
    );
}
