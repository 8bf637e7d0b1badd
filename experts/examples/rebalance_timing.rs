//! Precise timing of the rebalancer at DeepSeek-V3 scale: 256 experts, 32 replica slots,
//! 64 ranks in 8 nodes, 58 MoE layers, Zipf(1.2) loads.
//!
//! `cargo run -p switchyard-experts --release --example rebalance_timing`

use std::time::Instant;

use switchyard_experts::sim::{simulate, zipf_loads};
use switchyard_experts::{rebalance, Placement, RebalanceOptions, Topology};

fn main() {
    let loads = zipf_loads(256, 1.2, 58, 7);
    let current = vec![Placement::padded(256, 64, 32).expect("valid layout"); 58];
    let topo = Topology {
        n_nodes: 8,
        ranks_per_node: 8,
    };
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let out =
            rebalance(&loads, &current, topo, RebalanceOptions::default()).expect("rebalance");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(out);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "rebalance 58 layers x 256 experts -> 64 ranks (8 nodes), 32 spare: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let flat = Topology {
        n_nodes: 1,
        ranks_per_node: 64,
    };
    let start = Instant::now();
    let out = rebalance(&loads, &current, flat, RebalanceOptions::default()).expect("rebalance");
    println!(
        "same, one node (global, 64x64 matching): {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    std::hint::black_box(out);
    match simulate(&loads, 64, 8, 32) {
        Ok(r) => println!(
            "sim: imbalance before max {:.3} mean {:.3}, after max {:.4} mean {:.4}, moved {} slots, {:.2} ms",
            r.before_max, r.before_mean, r.after_max, r.after_mean, r.moved_slots, r.elapsed_ms
        ),
        Err(e) => eprintln!("sim failed: {e}"),
    }
}
