//! The expert-parallel dispatch path on in-process CPU ranks: route → plan → All-to-All →
//! grouped experts → All-to-All back → combine, for 4096 tokens over 8 ranks (512 each),
//! 64 experts, top-8. Reports tokens per second and the bytes the All-to-All moved, so later
//! changes show their effect.
//!
//! cargo bench --bench dispatch

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use switchyard::comm::{Communicator, RankGrid, World};
use switchyard::moe::{dispatch_combine, EpRank, ExpertBank};
use switchyard::tensor::Tensor;
use switchyard_experts::{route, Placement, RouterConfig};

const TOKENS: usize = 4096;
const RANKS: usize = 8;
const EXPERTS: usize = 64;
const TOP_K: usize = 8;
const HIDDEN: usize = 256;
const INTER: usize = 128;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0) * 0.1)
        .collect()
}

/// Runs `iters` dispatches on every rank at once; returns the slowest rank's time and the
/// bytes all ranks sent.
fn run(iters: u64) -> (Duration, u64) {
    let placement = Placement::contiguous(EXPERTS, RANKS, 0).expect("placement");
    let world = World::new(RankGrid::new(1, RANKS, 1).expect("grid"));
    let per_rank = TOKENS / RANKS;
    let results = world
        .run(|comms| -> Result<(Duration, u64), String> {
            let rank = comms.coords.ep_rank;
            let slots = placement.rank_experts(rank).len();
            let gate_up = Tensor::from_f32(
                [slots, 2 * INTER, HIDDEN],
                values(slots * 2 * INTER * HIDDEN, rank),
            );
            let down = Tensor::from_f32(
                [slots, HIDDEN, INTER],
                values(slots * HIDDEN * INTER, rank + 99),
            );
            let bank = ExpertBank::from_stacked(
                gate_up.map_err(|e| e.to_string())?,
                down.map_err(|e| e.to_string())?,
            );
            let x = Tensor::from_f32([per_rank, HIDDEN], values(per_rank * HIDDEN, rank + 7))
                .map_err(|e| e.to_string())?;
            let logits = values(per_rank * EXPERTS, rank + 13);
            let cfg = RouterConfig::qwen_moe(EXPERTS, TOP_K, true);
            let ep = EpRank {
                placement: &placement,
                rank,
                ranks_per_node: RANKS,
            };
            let start = Instant::now();
            for _ in 0..iters {
                let routing = route(&logits, per_rank, &cfg, None).map_err(|e| e.to_string())?;
                dispatch_combine(&x, &routing, ep, &bank, &comms.ep).map_err(|e| e.to_string())?;
            }
            Ok((start.elapsed(), comms.ep.bytes_moved()))
        })
        .expect("ranks");
    let slowest = results.iter().map(|r| r.0).max().unwrap_or_default();
    (slowest, results.iter().map(|r| r.1).sum())
}

fn bench(c: &mut Criterion) {
    let (_, bytes) = run(1);
    println!(
        "dispatch: {TOKENS} tokens, {EXPERTS} experts, top-{TOP_K}, {RANKS} ranks, hidden {HIDDEN}: \
         the All-to-All moved {bytes} bytes per step ({:.1} KiB per token)",
        bytes as f64 / TOKENS as f64 / 1024.0
    );
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.sample_size(10);
    g.bench_function("route_plan_alltoall_experts_combine", |b| {
        b.iter_custom(|iters| run(iters).0)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
