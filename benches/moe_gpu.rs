//! The MoE layer alone on one GPU: router GEMM (cuBLAS) + fused routing + permutation + grouped
//! gate/up (SiLU·up fused) + grouped down + combine, at the Mixtral-8x7B and DeepSeek-V3 shapes for
//! T in {1, 8, 64, 256, 1024, 4096, 16384}. Milliseconds are medians of 20 CUDA-event-timed runs
//! (100 for T <= 64) after 3 warm-ups; the roofline floor is max(touched experts' weight bytes / copy bandwidth,
//! flops / cuBLAS bf16 GEMM rate), both ceilings measured sustained at the start of the same run
//! (`measure::Ceilings`: the GPU at its power cap, as during the layer's timed runs); the floor
//! from the burst rates is reported beside it.
//!
//! Run: `cargo bench --features cuda --bench moe_gpu -- [--quick] [--json FILE] [--shape NAME]
//! [--tokens T,T,..]`, or the built executable directly (`--shape` keeps the shapes whose name
//! contains NAME, `--tokens` only those token counts). Prints a markdown table; `--json` writes one object per row for
//! benches/moe_peer.py, which times the PyTorch peer and merges both into the table of
//! benches/RESULTS.md. Without a GPU it prints why and exits 0.

use std::io::Write;

use half::bf16;
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::cuda::measure::{fill_uniform, median_ms, Ceilings};
use switchyard::backend::cuda::{
    blas, CudaDevice, DeviceBuffer, GemmPath, MoeLayer, MoeShape, MoeWorkspace, RouterParams,
};
use switchyard::Result;
use switchyard_experts::RouterConfig;

const TOKENS: [usize; 7] = [1, 8, 64, 256, 1024, 4096, 16384];

struct Case {
    name: &'static str,
    shape: MoeShape,
    router: RouterConfig,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let json_path = value("--json");
    let shape_filter = value("--shape").unwrap_or_default();
    let tokens: Vec<usize> = match value("--tokens") {
        Some(list) => list
            .split(',')
            .map(|t| {
                t.parse().map_err(|_| {
                    switchyard::Error::Input(format!("--tokens: {t:?} is not a count"))
                })
            })
            .collect::<Result<_>>()?,
        None => TOKENS.to_vec(),
    };
    if let Some(why) = unavailable_reason() {
        println!("moe_gpu: skipped: {why}");
        return Ok(());
    }
    let dev = CudaDevice::new(0)?;
    let c = Ceilings::measure(&dev)?;
    println!(
        "GPU: {} ({}, {} SMs)",
        dev.name(),
        dev.arch(),
        dev.sm_count()?
    );
    println!("ceilings measured in this run: {}", c.describe());
    let cases = [
        Case {
            name: "Mixtral-8x7B",
            shape: MoeShape {
                hidden: 4096,
                inter: 14336,
                n_experts: 8,
                top_k: 2,
            },
            router: RouterConfig::mixtral(8, 2),
        },
        // The peer routes with softmax/top-k for both shapes, so this bench does the same.
        Case {
            name: "DeepSeek-V3",
            shape: MoeShape {
                hidden: 7168,
                inter: 2048,
                n_experts: 256,
                top_k: 8,
            },
            router: RouterConfig::qwen_moe(256, 8, true),
        },
    ];
    let mut json = Vec::new();
    println!("| shape | T | path | ms | TFLOP/s | touched experts | floor ms | % of floor | % of burst floor | gate/up ms | down ms | other path ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for case in cases.iter().filter(|c| c.name.contains(&shape_filter)) {
        let s = case.shape;
        let t_max = if quick {
            1024
        } else {
            *tokens.iter().max().unwrap_or(&1)
        };
        let mut gate_up: DeviceBuffer<bf16> = dev.zeros(s.n_experts * 2 * s.inter * s.hidden)?;
        let mut down: DeviceBuffer<bf16> = dev.zeros(s.n_experts * s.hidden * s.inter)?;
        let mut router_w: DeviceBuffer<bf16> = dev.zeros(s.n_experts * s.hidden)?;
        let mut x: DeviceBuffer<bf16> = dev.zeros(t_max * s.hidden)?;
        fill_uniform(&dev, &mut gate_up, 1, 1.0 / (s.hidden as f32).sqrt())?;
        fill_uniform(&dev, &mut down, 2, 1.0 / (s.inter as f32).sqrt())?;
        fill_uniform(&dev, &mut router_w, 3, 1.0 / (s.hidden as f32).sqrt())?;
        fill_uniform(&dev, &mut x, 4, 1.0)?;
        let layer = MoeLayer {
            shape: s,
            gate_up,
            down,
            router: RouterParams::new(&case.router)?,
            bias: None,
        };
        let mut ws = MoeWorkspace::new(&dev, s, t_max)?;
        let mut logits: DeviceBuffer<f32> = dev.zeros(t_max * s.n_experts)?;
        let mut out: DeviceBuffer<bf16> = dev.zeros(t_max * s.hidden)?;
        for &t in tokens.iter().filter(|&&t| t <= t_max) {
            // Small T: more runs, as a few microseconds of jitter move the median there.
            let reps = if t <= 64 { 100 } else { 20 };
            let ms = median_ms(&dev, 3, reps, || {
                blas::linear(&dev, &x, &router_w, &mut logits, t, s.hidden, s.n_experts)?;
                layer.forward(&dev, &mut ws, &x, &logits, t, None, &mut out)
            })?;
            let experts = dev.download(&ws.experts)?;
            let path = GemmPath::for_load(t * s.top_k, s.n_experts);
            let other = match path {
                GemmPath::Small => GemmPath::Large,
                GemmPath::Large => GemmPath::Small,
            };
            // The two GEMMs alone (on the routing of the last run), and the whole layer on the
            // path for_load did not pick, so a run shows where the time goes and the crossover.
            ws.permute(&dev, t, path)?;
            let gate_up_ms = median_ms(&dev, 2, 10, || {
                ws.gate_up(&dev, &x, &layer.gate_up, t, path)
            })?;
            let down_ms = median_ms(&dev, 2, 10, || ws.down(&dev, &layer.down, t, path))?;
            // (Up to 4096 tokens: past that the decode path is far off and only costs time.)
            let other_ms = if t > 4096 {
                f64::NAN
            } else {
                median_ms(&dev, 2, 10, || {
                    blas::linear(&dev, &x, &router_w, &mut logits, t, s.hidden, s.n_experts)?;
                    ws.route(&dev, &logits, None, &layer.router, t)?;
                    ws.permute(&dev, t, other)?;
                    ws.gate_up(&dev, &x, &layer.gate_up, t, other)?;
                    ws.down(&dev, &layer.down, t, other)?;
                    ws.combine(&dev, t, None, &mut out)
                })?
            };
            let mut touched = vec![false; s.n_experts];
            for &e in &experts[..t * s.top_k] {
                touched[e as usize] = true;
            }
            let n_touched = touched.iter().filter(|&&b| b).count();
            let bytes = (n_touched * s.expert_bytes() + s.n_experts * s.hidden * 2) as f64;
            let flops =
                2.0 * (t * s.top_k * 3 * s.hidden * s.inter + t * s.hidden * s.n_experts) as f64;
            let floor_ms = (bytes / c.copy_bps).max(flops / c.gemm_fps) * 1e3;
            let burst_floor_ms = (bytes / c.burst_copy_bps).max(flops / c.burst_gemm_fps) * 1e3;
            let tflops = flops / (ms * 1e-3) / 1e12;
            println!(
                "| {} | {t} | {path:?} | {ms:.3} | {tflops:.1} | {n_touched} | {floor_ms:.3} | {:.0} | {:.0} | {gate_up_ms:.3} | {down_ms:.3} | {other_ms:.3} |",
                case.name,
                100.0 * floor_ms / ms,
                100.0 * burst_floor_ms / ms
            );
            std::io::stdout().flush().ok();
            json.push(format!(
                "{{\"shape\":\"{}\",\"tokens\":{t},\"path\":\"{path:?}\",\"ms\":{ms:.5},\"tflops\":{tflops:.3},\"touched\":{n_touched},\"floor_ms\":{floor_ms:.5},\"burst_floor_ms\":{burst_floor_ms:.5},\"gate_up_ms\":{gate_up_ms:.5},\"down_ms\":{down_ms:.5},\"other_path_ms\":{other_ms:.5},\"copy_tbps\":{:.4},\"gemm_tflops\":{:.1},\"burst_copy_tbps\":{:.4},\"burst_gemm_tflops\":{:.1}}}",
                case.name,
                c.copy_bps / 1e12,
                c.gemm_fps / 1e12,
                c.burst_copy_bps / 1e12,
                c.burst_gemm_fps / 1e12
            ));
        }
    }
    if let Some(p) = json_path {
        std::fs::write(&p, json.join("\n") + "\n")
            .map_err(|e| switchyard::Error::Device(format!("writing {p}: {e}")))?;
    }
    Ok(())
}
