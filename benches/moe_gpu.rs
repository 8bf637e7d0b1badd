//! The MoE layer alone on one GPU: router GEMM (cuBLAS) + fused routing + permutation + grouped
//! gate/up (SiLU·up fused) + grouped down + combine, at the Mixtral-8x7B and DeepSeek-V3 shapes for
//! T in {1, 8, 64, 256, 1024, 4096, 16384}. Milliseconds are medians of 20 CUDA-event-timed runs
//! (100 for T <= 64) after 3 warm-ups; the roofline floor is max(touched experts' weight bytes / copy bandwidth,
//! flops / cuBLAS bf16 GEMM rate), both ceilings measured at the start of the same run.
//!
//! Run: `cargo bench --features cuda --bench moe_gpu -- [--quick] [--json FILE] [--shape NAME]
//! [--tokens T,T,..]`, or the built executable directly (`--shape` keeps the shapes whose name
//! contains NAME, `--tokens` only those token counts). Prints a markdown table; `--json` writes one object per row for
//! benches/moe_peer.py, which times the PyTorch peer and merges both into the table of
//! benches/RESULTS.md. Without a GPU it prints why and exits 0.

use std::io::Write;

use cudarc::driver::{sys::CUevent_flags, LaunchConfig, PushKernelArg};
use half::bf16;
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::cuda::{
    blas, CudaDevice, DeviceBuffer, GemmPath, Kernel, MoeLayer, MoeShape, MoeWorkspace,
    RouterParams,
};
use switchyard::Result;
use switchyard_experts::RouterConfig;

const TOKENS: [usize; 7] = [1, 8, 64, 256, 1024, 4096, 16384];

fn fill(dev: &CudaDevice, buf: &mut DeviceBuffer<bf16>, seed: u64, scale: f32) -> Result<()> {
    let f = dev.function(Kernel::Fill, "fill_uniform_bf16")?;
    let n = buf.len() as u64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(buf).arg(&n).arg(&seed).arg(&scale);
    // SAFETY: grid-stride loop over exactly n elements of buf.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (1024, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| switchyard::Error::Device(format!("fill: {e:?}")))?;
    Ok(())
}

/// Median milliseconds of `reps` runs of `f`, each between its own pair of CUDA events.
fn time_ms(
    dev: &CudaDevice,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let ctx = dev.context();
    let ev = |_| {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| switchyard::Error::Device(format!("{e:?}")))
    };
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (a, b) = (ev(0)?, ev(1)?);
        a.record(dev.stream())
            .map_err(|e| switchyard::Error::Device(format!("{e:?}")))?;
        f()?;
        b.record(dev.stream())
            .map_err(|e| switchyard::Error::Device(format!("{e:?}")))?;
        b.synchronize()
            .map_err(|e| switchyard::Error::Device(format!("{e:?}")))?;
        times.push(
            a.elapsed_ms(&b)
                .map_err(|e| switchyard::Error::Device(format!("{e:?}")))? as f64,
        );
    }
    times.sort_by(|x, y| x.partial_cmp(y).unwrap());
    Ok(times[times.len() / 2])
}

struct Ceilings {
    /// Device-to-device copy, bytes read + written per second.
    copy_bps: f64,
    /// cuBLAS bf16 GEMM (8192³), flop/s.
    gemm_fps: f64,
}

fn ceilings(dev: &CudaDevice) -> Result<Ceilings> {
    let n = 1usize << 30; // 2 GiB of bf16
    let mut src: DeviceBuffer<bf16> = dev.zeros(n)?;
    fill(dev, &mut src, 7, 1.0)?;
    let mut dst: DeviceBuffer<bf16> = dev.zeros(n)?;
    let ms = time_ms(dev, 2, 10, || {
        dev.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| switchyard::Error::Device(format!("{e:?}")))
    })?;
    let copy_bps = 2.0 * (n * 2) as f64 / (ms * 1e-3);
    drop((src, dst));
    let s = 8192;
    let mut a: DeviceBuffer<bf16> = dev.zeros(s * s)?;
    let mut b: DeviceBuffer<bf16> = dev.zeros(s * s)?;
    fill(dev, &mut a, 8, 1.0)?;
    fill(dev, &mut b, 9, 1.0)?;
    let mut c: DeviceBuffer<bf16> = dev.zeros(s * s)?;
    let ms = time_ms(dev, 3, 10, || blas::linear(dev, &a, &b, &mut c, s, s, s))?;
    Ok(Ceilings {
        copy_bps,
        gemm_fps: 2.0 * (s as f64).powi(3) / (ms * 1e-3),
    })
}

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
    let c = ceilings(&dev)?;
    println!(
        "GPU: {} ({}, {} SMs)",
        dev.name(),
        dev.arch(),
        dev.sm_count()?
    );
    println!("ceilings measured in this run: copy {:.2} TB/s (read+write), cuBLAS bf16 GEMM 8192^3 {:.0} TFLOP/s", c.copy_bps / 1e12, c.gemm_fps / 1e12);
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
    println!("| shape | T | path | ms | TFLOP/s | touched experts | floor ms | % of floor | gate/up ms | down ms | other path ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
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
        fill(&dev, &mut gate_up, 1, 1.0 / (s.hidden as f32).sqrt())?;
        fill(&dev, &mut down, 2, 1.0 / (s.inter as f32).sqrt())?;
        fill(&dev, &mut router_w, 3, 1.0 / (s.hidden as f32).sqrt())?;
        fill(&dev, &mut x, 4, 1.0)?;
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
            let ms = time_ms(&dev, 3, reps, || {
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
            let gate_up_ms = time_ms(&dev, 2, 10, || {
                ws.gate_up(&dev, &x, &layer.gate_up, t, path)
            })?;
            let down_ms = time_ms(&dev, 2, 10, || ws.down(&dev, &layer.down, t, path))?;
            // (Up to 4096 tokens: past that the decode path is far off and only costs time.)
            let other_ms = if t > 4096 {
                f64::NAN
            } else {
                time_ms(&dev, 2, 10, || {
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
            let tflops = flops / (ms * 1e-3) / 1e12;
            println!(
                "| {} | {t} | {path:?} | {ms:.3} | {tflops:.1} | {n_touched} | {floor_ms:.3} | {:.0} | {gate_up_ms:.3} | {down_ms:.3} | {other_ms:.3} |",
                case.name,
                100.0 * floor_ms / ms
            );
            std::io::stdout().flush().ok();
            json.push(format!(
                "{{\"shape\":\"{}\",\"tokens\":{t},\"path\":\"{path:?}\",\"ms\":{ms:.5},\"tflops\":{tflops:.3},\"touched\":{n_touched},\"floor_ms\":{floor_ms:.5},\"gate_up_ms\":{gate_up_ms:.5},\"down_ms\":{down_ms:.5},\"other_path_ms\":{other_ms:.5},\"copy_tbps\":{:.4},\"gemm_tflops\":{:.1}}}",
                case.name,
                c.copy_bps / 1e12,
                c.gemm_fps / 1e12
            ));
        }
    }
    if let Some(p) = json_path {
        std::fs::write(&p, json.join("\n") + "\n")
            .map_err(|e| switchyard::Error::Device(format!("writing {p}: {e}")))?;
    }
    Ok(())
}
