//! Sampling a decode step's logits, [256, 32000] f32 on one GPU, two ways: on the device
//! (`ops::sample_rows`: the draws' parameters up, one launch, the 256 token ids down) and the
//! host path the scheduler took before (the rows gathered on the device and copied to the host,
//! then `backend::cpu::sample::sample` per row on the rayon pool, as `Batcher::complete` does).
//! Median of 20 timed runs after 3 warm-ups, for pure temperature, top-p and top-k + top-p, with
//! how many of the 256 picks agree. Run: `cargo bench --features cuda --bench sample_gpu`, or the
//! built executable. Without a GPU it prints why and exits 0.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use switchyard::backend::cpu::sample::{sample, RowDraw, SamplingParams};
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::Device;
use switchyard::ops;
use switchyard::tensor::Tensor;
use switchyard::Result;

const ROWS: usize = 256;
const VOCAB: usize = 32000;

/// Median seconds of `f` over 20 runs after 3 warm-ups, and its last result.
fn median<T>(mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..20 {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last.expect("20 runs")))
}

fn main() -> Result<()> {
    if let Some(why) = unavailable_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    let device = Device::cuda(0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Logits shaped like a language model's: a few large values over a long tail.
    let v: Vec<f32> = (0..ROWS * VOCAB)
        .map(|_| {
            let g: f32 = rng.random_range(-1.0f32..1.0) + rng.random_range(-1.0f32..1.0);
            3.0 * g
                + if rng.random_range(0..1000) == 0 {
                    10.0
                } else {
                    0.0
                }
        })
        .collect();
    let x = Tensor::from_f32([ROWS, VOCAB], v)?.to_device(&device)?;
    let all: Vec<u32> = (0..ROWS as u32).collect();
    for (name, params) in [
        ("temperature 1", (1.0, 1.0, 0)),
        ("temperature 0.7, top-p 0.9", (0.7, 0.9, 0)),
        ("temperature 0.8, top-k 50, top-p 0.95", (0.8, 0.95, 50)),
    ] {
        let params = SamplingParams {
            temperature: params.0,
            top_p: params.1,
            top_k: params.2,
        };
        let draws: Vec<RowDraw> = (0..ROWS)
            .map(|row| RowDraw {
                row,
                params,
                uniform: rng.random(),
            })
            .collect();
        let (dev_s, dev_picks) = median(|| ops::sample_rows(&x, &draws))?;
        let (host_s, host_picks) = median(|| {
            let rows = ops::gather_rows(&x, &all, 1)?.into_cpu()?;
            Ok(draws
                .par_iter()
                .map(|d| sample(rows.row(d.row), &d.params, d.uniform))
                .collect::<Vec<u32>>())
        })?;
        let agree = dev_picks
            .iter()
            .zip(&host_picks)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "{ROWS} x {VOCAB}, {name}: device {:.3} ms, host path {:.3} ms ({:.1}x), \
             {agree}/{ROWS} picks equal",
            dev_s * 1e3,
            host_s * 1e3,
            host_s / dev_s
        );
    }
    Ok(())
}
