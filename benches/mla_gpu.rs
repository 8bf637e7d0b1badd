//! Multi-head latent attention decode on one GPU at DeepSeek-V3's widths (128 heads, 512 latent
//! and 64 rope dims a cached row, the weight-absorbed form): the step's attention alone, at batch
//! 1, 16 and 64 over contexts of 1024 and 4096 positions in scattered cache blocks. Two ways in
//! the same run: the tensor-core kernel (`mla_decode_h32`, kernels/mla.cu: each latent row read
//! once for 32 heads) over the bf16 latent cache a GPU model keeps at these widths, and the
//! per-query kernel (`paged_attention_f32`, the path MLA took before the tensor-core kernel:
//! each row read once per head) over f32 rows, which it takes at any width. Against the floors
//! measured here: the bf16 latent rows' bytes over the copy rate, the two products' flops over
//! the cuBLAS bf16 rate; then a whole prompt's prefill (`mla_prefill_r4`, rows in units of
//! four) at 128 and 16 heads against its flops floor. Median of 20 runs after 3 warm-ups.
//! Run: `cargo bench --features cuda --bench mla_gpu` or the built executable. Without a GPU it
//! prints why and exits 0.

use std::time::Instant;

use switchyard::backend::cuda::attention::StepIndex;
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::cuda::measure::Ceilings;
use switchyard::backend::Device;
use switchyard::ops::{Heads, QueryPos};
use switchyard::tensor::Tensor;
use switchyard::Result;

const HEADS: usize = 128;
const LATENT: usize = 512;
const ROW: usize = 576;
const BLOCK: usize = 64;

/// Median seconds of `f` over 20 runs after 3 warm-ups.
fn median(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Values in [-1, 1) from a fixed sequence (no generator needed for timing).
fn filled(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 2654435761 + salt * 40503) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn main() -> Result<()> {
    if let Some(why) = unavailable_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    let device = Device::cuda(0)?;
    let Device::Cuda(dev) = &device else {
        unreachable!("Device::cuda opens a GPU")
    };
    let ceilings = Ceilings::measure(dev)?;
    println!("{}: {}", dev.name(), ceilings.describe());
    let (copy_bps, gemm_fps) = (ceilings.burst_copy_bps, ceilings.burst_gemm_fps);
    let heads = Heads {
        n_heads: HEADS,
        n_kv_heads: 1,
        qk_dim: ROW,
        v_dim: LATENT,
        scale: 1.0 / (192f32).sqrt(),
        window: None,
    };
    println!("\n| batch | context | tensor-core, bf16 cache ms | % of floor | per-query, f32 cache ms | speedup |");
    println!("|---|---|---|---|---|---|");
    for context in [1024usize, 4096] {
        for batch in [1usize, 16, 64] {
            let per_seq = context.div_ceil(BLOCK);
            let blocks = batch * per_seq;
            // Sequence s takes every batch-th block: scattered, as a busy pool leaves them.
            let tables: Vec<Vec<u32>> = (0..batch)
                .map(|s| (0..per_seq).map(|b| (b * batch + s) as u32).collect())
                .collect();
            let refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
            let queries: Vec<QueryPos> = (0..batch)
                .map(|seq| QueryPos {
                    seq,
                    pos: context - 1,
                })
                .collect();
            let rows = Tensor::from_f32([blocks * BLOCK * ROW], filled(blocks * BLOCK * ROW, 1))?;
            let q = Tensor::from_f32([batch, HEADS * ROW], filled(batch * HEADS * ROW, 2))?
                .to_device(&device)?;
            let step = StepIndex::new(dev, &queries, &refs, BLOCK, &[])?;
            let bf16 = rows.to_device_bf16(&device)?;
            let tc = median(|| {
                step.paged_attention(&q, &bf16, ROW, &bf16, ROW, heads)?;
                dev.synchronize()
            })?;
            drop(bf16);
            let f32_rows = rows.to_device(&device)?;
            let old = median(|| {
                step.paged_attention(&q, &f32_rows, ROW, &f32_rows, ROW, heads)?;
                dev.synchronize()
            })?;
            let bytes = (batch * context * ROW * 2) as f64;
            let flops = (2 * batch * HEADS * context * (ROW + LATENT)) as f64;
            let floor = (bytes / copy_bps).max(flops / gemm_fps);
            println!(
                "| {batch} | {context} | {:.3} | {:.0} | {:.3} | {:.1}x |",
                tc * 1e3,
                100.0 * floor / tc,
                old * 1e3,
                old / tc
            );
        }
    }
    prefill(dev, &device, heads, gemm_fps)?;
    Ok(())
}

/// Prefill of one sequence's whole prompt at 128 and 16 heads (DeepSeek-V3, and V2-Lite or V3
/// under 8-way tensor parallelism): every row attends to its prefix, the rows in units of four
/// (`mla_prefill_r4`). The floor is the absorbed products' flops (576 + 512 a position a head,
/// causal) at the cuBLAS rate; the cache's bytes are a small part.
fn prefill(
    dev: &std::sync::Arc<switchyard::backend::cuda::device::CudaDevice>,
    device: &Device,
    heads: Heads,
    gemm_fps: f64,
) -> Result<()> {
    println!(
        "\n| prefill tokens | heads | tensor-core, bf16 cache ms | TFLOP/s | % of flops floor |"
    );
    println!("|---|---|---|---|---|");
    for context in [1024usize, 4096] {
        for n_heads in [HEADS, 16] {
            let h = Heads { n_heads, ..heads };
            let blocks = context.div_ceil(BLOCK);
            let table: Vec<u32> = (0..blocks as u32).rev().collect();
            let queries: Vec<QueryPos> = (0..context).map(|pos| QueryPos { seq: 0, pos }).collect();
            let rows = Tensor::from_f32([blocks * BLOCK * ROW], filled(blocks * BLOCK * ROW, 3))?
                .to_device_bf16(device)?;
            let q = Tensor::from_f32([context, n_heads * ROW], filled(context * n_heads * ROW, 4))?
                .to_device(device)?;
            let step = StepIndex::new(dev, &queries, &[&table], BLOCK, &[])?;
            let t = median(|| {
                step.paged_attention(&q, &rows, ROW, &rows, ROW, h)?;
                dev.synchronize()
            })?;
            let flops = (n_heads * context * (context + 1) * (ROW + LATENT)) as f64;
            println!(
                "| {context} | {n_heads} | {:.3} | {:.1} | {:.0} |",
                t * 1e3,
                flops / t / 1e12,
                100.0 * flops / gemm_fps / t
            );
        }
    }
    Ok(())
}
