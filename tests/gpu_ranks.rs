//! GPU ranks on the one GPU there is: every rank of a layout on its own stream of GPU 0, the
//! tensor collectives device-to-device (GpuLocalComm), against the CPU and the goldens; the
//! device collectives against the host ones bit for bit (bytes counted the same); NCCL at
//! world 1 (NCCL refuses two ranks on one GPU) through every collective; replication moving
//! experts between GPU ranks while generating. Skips, saying so, where there is no GPU.
//! Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::backend::{CudaHandle, Device};
use switchyard::comm::gpu::{nccl_unavailable_reason, DeviceLinks, GpuLocalComm, NcclComm};
use switchyard::comm::{even_counts, Communicator, LocalComm};
use switchyard::config::ModelConfig;
use switchyard::engine::{Engine, Executor, GenerateOptions};
use switchyard::layout::PlacementSpec;
use switchyard::model::{ModelSource, StepBatch, StepOutput};
use switchyard::parallel::{GpuComm, ParallelExecutor, ParallelPlan, RankDevices};
use switchyard::replication::{ReplicationConfig, ReplicationStatus};
use switchyard::tensor::Tensor;

const BLOCK: usize = 4;
const CACHE_TOKENS: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(60);

fn gpu_or_skip() -> Option<CudaHandle> {
    match Device::cuda(0) {
        Ok(Device::Cuda(d)) => Some(d),
        Ok(Device::Cpu) => None,
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            None
        }
    }
}

/// Seeded values, different per rank and call.
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((seed * 7919 + i * 104_729) % 2001) as f32 - 1000.0) / 137.0)
        .collect()
}

/// Every tensor collective of one rank (`size` ranks, `cols` wide rows), on `device`:
/// all-to-all with uneven and empty parts, reduce-scatter, all-gather, all-reduce, a ring of
/// send/recv, broadcast. Returns each result as host values and the bytes counted.
fn collectives(c: &dyn Communicator, device: &Device, cols: usize) -> (Vec<Vec<f32>>, u64) {
    let (r, size) = (c.rank(), c.size());
    let on = |seed: usize, rows: usize| {
        Tensor::from_f32([rows, cols], values(seed * 31 + r, rows * cols))
            .unwrap()
            .to_device(device)
            .unwrap()
    };
    let host = |t: &Tensor| t.to_cpu().unwrap().into_vec();
    let mut out = Vec::new();
    // Rank r sends (r + d) % 3 rows to rank d: some parts are empty.
    let rows: Vec<usize> = (0..size).map(|d| (r + d) % 3).collect();
    let (got, from) = c.all_to_all_rows(&on(1, rows.iter().sum()), &rows).unwrap();
    out.push(host(&got));
    out.push(from.iter().map(|&n| n as f32).collect());
    let split = even_counts(5, size);
    out.push(host(&c.reduce_scatter_rows(&on(2, 5), &split).unwrap()));
    out.push(host(&c.all_gather_rows(&on(3, r + 1)).unwrap()));
    let mut x = on(4, 3);
    c.all_reduce_tensor(&mut x).unwrap();
    out.push(host(&x));
    if size > 1 {
        c.send_tensor(&on(5, r + 2), (r + 1) % size).unwrap();
        let got = c.recv_rows((r + size - 1) % size, cols, device).unwrap();
        out.push(host(&got));
    }
    let mut b = on(6, 2 + r);
    c.broadcast_rows(&mut b, size - 1).unwrap();
    out.push(host(&b));
    (out, c.bytes_moved())
}

fn run_group<C: Communicator + 'static>(
    comms: Vec<C>,
    device: impl Fn() -> Device + Sync,
    cols: usize,
) -> Vec<(Vec<Vec<f32>>, u64)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let device = &device;
                s.spawn(move || collectives(&c, &device(), cols))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn device_collectives_equal_the_host_ones_bit_for_bit() {
    let Some(_) = gpu_or_skip() else { return };
    for size in [1, 2, 3, 4] {
        let cols = 5;
        let want = run_group(LocalComm::group("g", size, TIMEOUT), || Device::Cpu, cols);
        // Each rank on its own stream of GPU 0, its tensors there too.
        let ranks: Vec<(GpuLocalComm, Device)> = LocalComm::group("g", size, TIMEOUT)
            .into_iter()
            .zip(DeviceLinks::group(size))
            .map(|(host, links)| {
                let Device::Cuda(dev) = Device::cuda_rank(0).unwrap() else {
                    unreachable!("cuda_rank opens a GPU")
                };
                let c = GpuLocalComm::new(host, links, dev.clone(), TIMEOUT).unwrap();
                (c, Device::Cuda(dev))
            })
            .collect();
        let got = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|(c, d)| s.spawn(move || collectives(&c, &d, cols)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        for (r, ((g, gb), (w, wb))) in got.iter().zip(&want).enumerate() {
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "size {size} rank {r} collective {i}: {a:?} vs {b:?}"
                );
            }
            assert_eq!(gb, wb, "size {size} rank {r}: bytes counted");
        }
    }
}

#[test]
fn nccl_at_world_one_runs_every_collective() {
    let Some(_) = gpu_or_skip() else { return };
    if let Some(why) = nccl_unavailable_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let Device::Cuda(dev) = Device::cuda_rank(0).unwrap() else {
        unreachable!()
    };
    let host = LocalComm::group("world", 1, TIMEOUT).remove(0);
    let nccl = NcclComm::over(&host, "world", dev.clone()).unwrap();
    let device = Device::Cuda(dev);
    let want = run_group(LocalComm::group("g", 1, TIMEOUT), || Device::Cpu, 7);
    let got = collectives(&nccl, &device, 7);
    assert_eq!(
        got.0, want[0].0,
        "NCCL at world 1 against the host collectives"
    );
    assert_eq!(got.1, 0, "nothing leaves a world of one");
    // The slice collectives stage through the device and NCCL too.
    let mut v = vec![1.5, -2.0, 3.25];
    nccl.all_reduce_sum(&mut v).unwrap();
    assert_eq!(v, [1.5, -2.0, 3.25]);
    let (g, n) = nccl.all_gather_u32(&[7, 8, 9]).unwrap();
    assert_eq!((g, n), (vec![7, 8, 9], vec![3]));
    let (a, n) = nccl.all_to_all_v(&[4.0, 5.0], &[2]).unwrap();
    assert_eq!((a, n), (vec![4.0, 5.0], vec![2]));
    assert_eq!(
        nccl.reduce_scatter_sum(&[1.0, 2.0], &[2]).unwrap(),
        [1.0, 2.0]
    );
    nccl.barrier().unwrap();
    // A peer that is this rank itself is refused with a clear error, not sent to.
    let err = nccl.send(&[1.0], 0).unwrap_err().to_string();
    assert!(err.contains("another rank"), "{err}");
    let err = nccl.all_to_all_v(&[1.0], &[2]).unwrap_err().to_string();
    assert!(err.contains("counts"), "{err}");
}

fn opts() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    }
}

fn gpu_engine(name: &str, p: &ParallelPlan, replication: Option<ReplicationConfig>) -> Engine {
    let (cfg, src) = ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let devices = RankDevices::cuda(&[0], p.grid.world()).unwrap();
    let exec = ParallelExecutor::on_devices(&cfg, src, p, CACHE_TOKENS / BLOCK, BLOCK, &devices)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let exec = match replication {
        Some(r) => exec.with_replication(r).unwrap(),
        None => exec,
    };
    Engine::with_executor(Box::new(exec))
}

/// Every layout of `name` with all ranks on GPU 0: logits within 2e-2 of the golden, greedy
/// tokens equal to the golden and to the CPU's single rank up to the first small-margin step.
fn check_fixture(name: &str) {
    if gpu_or_skip().is_none() {
        return;
    }
    let g = golden(name);
    let source = ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    };
    let mut cpu = Engine::new(source.load().unwrap().model, CACHE_TOKENS, BLOCK);
    let cfg = cpu.config().clone();
    let cpu_tokens: Vec<Vec<u32>> = g
        .prompts
        .iter()
        .map(|p| cpu.generate(p, &opts()).unwrap().tokens)
        .collect();
    let mut failures = Vec::new();
    for (label, p) in every_layout(&cfg) {
        let mut e = gpu_engine(name, &p, None);
        let mut worst = 0.0f64;
        for (prompt, want) in g.prompts.iter().zip(&g.logits) {
            let got = e.score(prompt).unwrap().into_vec();
            let want: Vec<f32> = want.iter().flatten().copied().collect();
            worst = worst.max(rel_l2(&got, &want));
        }
        let mut tokens_ok = true;
        for ((prompt, want), on_cpu) in g.prompts.iter().zip(&g.greedy).zip(&cpu_tokens) {
            let got = e.generate(prompt, &opts()).unwrap().tokens;
            let n = decisive_prefix(want);
            if got[..n] != want.tokens[..n] || got[..n] != on_cpu[..n] {
                tokens_ok = false;
                eprintln!(
                    "{name} {label}: gpu {got:?} cpu {on_cpu:?} golden {:?} (first {n})",
                    want.tokens
                );
            }
        }
        let ok = worst <= 2e-2 && tokens_ok && e.used_blocks() == 0;
        eprintln!(
            "{name} {label} on {} GPU ranks: worst logits rel L2 {worst:.2e}; tokens {}",
            p.grid.world(),
            if tokens_ok { "match" } else { "DIFFER" }
        );
        if !ok {
            failures.push(label);
        }
    }
    assert!(failures.is_empty(), "{name}: failing layouts {failures:?}");
}

fixture_tests!(check_fixture);

#[test]
fn experts_migrate_between_gpu_ranks_while_generating() {
    if gpu_or_skip().is_none() {
        return;
    }
    let g = golden("mixtral");
    let p = layout_plan(1, 4, 1, 4, scrambled(8, 4));
    let replication = ReplicationConfig {
        layers_per_step: 1,
        ..ReplicationConfig::every(1, 8)
    };
    let mut fixed = gpu_engine("mixtral", &p, None);
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let devices = RankDevices::cuda(&[0], p.grid.world()).unwrap();
    let exec = ParallelExecutor::on_devices(&cfg, src, &p, CACHE_TOKENS / BLOCK, BLOCK, &devices)
        .unwrap()
        .with_replication(replication)
        .unwrap();
    let status = Arc::new(Mutex::new(None));
    let mut moving = Engine::with_executor(Box::new(Watched {
        exec,
        status: status.clone(),
    }));
    for (prompt, want) in g.prompts.iter().zip(&g.greedy) {
        let a = moving.generate(prompt, &opts()).unwrap().tokens;
        let b = fixed.generate(prompt, &opts()).unwrap().tokens;
        let n = decisive_prefix(want);
        assert_eq!(a, b, "rebalancing changed the GPU ranks' tokens");
        assert_eq!(a[..n], want.tokens[..n], "against the golden");
    }
    let s = status.lock().unwrap().clone().expect("replication is on");
    assert!(
        s.rebalances_total >= 1 && s.slots_migrated_total > 0,
        "no expert moved: {s:?}"
    );
}

/// A ParallelExecutor that keeps the replication status of its last step.
struct Watched {
    exec: ParallelExecutor,
    status: Arc<Mutex<Option<Arc<ReplicationStatus>>>>,
}

impl Executor for Watched {
    fn config(&self) -> &ModelConfig {
        self.exec.config()
    }
    fn num_blocks(&self) -> usize {
        self.exec.num_blocks()
    }
    fn block_size(&self) -> usize {
        self.exec.block_size()
    }
    fn step(&mut self, batch: &StepBatch) -> switchyard::Result<StepOutput> {
        let out = self.exec.step(batch)?;
        *self.status.lock().unwrap() = self.exec.replication_status();
        Ok(out)
    }
}

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn generated(args: &[&str]) -> Vec<u32> {
    let (ok, out, err) = switchyard(args);
    assert!(ok, "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn generate_on_two_gpu_ranks_equals_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let g = golden("mixtral");
    let dir = fixture_dir("mixtral");
    for (i, prompt) in g.prompts.iter().enumerate() {
        let tokens: Vec<String> = prompt.iter().map(u32::to_string).collect();
        let tokens = tokens.join(",");
        let base = [
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--tokens",
            &tokens,
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ];
        let cpu = generated(&base);
        let mut args = base.to_vec();
        args.extend(["--device", "cuda", "--ep", "2"]);
        let gpu = generated(&args);
        args.extend(["--gpus", "0"]);
        let shared = generated(&args);
        let n = decisive_prefix(&g.greedy[i]);
        assert_eq!(gpu[..n], cpu[..n], "prompt {i}: --device cuda --ep 2");
        assert_eq!(gpu, shared, "prompt {i}: --gpus 0 is the default here");
        assert_eq!(gpu[..n], g.greedy[i].tokens[..n], "prompt {i}: golden");
    }
    let (ok, _, err) = switchyard(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        "1,2",
        "--device",
        "cuda",
        "--ep",
        "2",
        "--gpus",
        "0,63",
    ]);
    assert!(!ok && err.contains("GPU 63"), "{err}");
}

/// `args` as node `rank` of `nodes` on loopback `port`, bounded by 30 s timeouts.
fn node(args: &[&str], nodes: usize, rank: usize, port: u16) -> std::process::Child {
    let cluster = [
        "--nodes".to_string(),
        nodes.to_string(),
        "--node-rank".into(),
        rank.to_string(),
        "--rendezvous".into(),
        format!("127.0.0.1:{port}"),
        "--rendezvous-timeout-secs".into(),
        "30".into(),
        "--comm-timeout-secs".into(),
        "30".into(),
    ];
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .args(cluster)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start switchyard")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_processes_of_gpu_ranks_on_loopback_equal_one() {
    if gpu_or_skip().is_none() {
        return;
    }
    let g = golden("mixtral");
    let dir = fixture_dir("mixtral");
    let tokens: Vec<String> = g.prompts[2].iter().map(u32::to_string).collect();
    let tokens = tokens.join(",");
    let base = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &tokens,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ];
    let cpu = generated(&base);
    // Two processes sharing GPU 0: NCCL refuses that, so the ranks stage through TCP.
    let mut args = base.to_vec();
    args.extend(["--device", "cuda", "--ep", "2", "--gpu-comm", "host"]);
    let port = free_port();
    let nodes: Vec<_> = (0..2).map(|r| node(&args, 2, r, port)).collect();
    let outs: Vec<_> = nodes
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "node {r}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&outs[0].stdout).unwrap();
    let got: Vec<u32> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let n = decisive_prefix(&g.greedy[2]);
    assert_eq!(got[..n], cpu[..n], "2 nodes of GPU ranks against the CPU");
    // A node whose ranks run elsewhere is refused at the rendezvous, naming the difference.
    let port = free_port();
    let mut cpu_args = base.to_vec();
    cpu_args.extend(["--ep", "2"]);
    let driver = node(&args, 2, 0, port);
    std::thread::sleep(Duration::from_millis(300));
    let follower = node(&cpu_args, 2, 1, port);
    let (d, f) = (
        driver.wait_with_output().unwrap(),
        follower.wait_with_output().unwrap(),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&d.stderr),
        String::from_utf8_lossy(&f.stderr)
    );
    assert!(!d.status.success() && !f.status.success(), "{said}");
    assert!(
        said.contains("cuda, host") && said.contains("cpu"),
        "{said}"
    );
}

#[test]
fn an_executor_rank_on_nccl_generates_the_golden() {
    if gpu_or_skip().is_none() {
        return;
    }
    if let Some(why) = nccl_unavailable_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let g = golden("qwen3_moe");
    let (cfg, src) = ModelSource {
        dir: fixture_dir("qwen3_moe"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let p = layout_plan(1, 1, 1, 0, PlacementSpec::Contiguous);
    let devices = RankDevices::cuda(&[0], 1).unwrap().with_comm(GpuComm::Nccl);
    let exec =
        ParallelExecutor::on_devices(&cfg, src, &p, CACHE_TOKENS / BLOCK, BLOCK, &devices).unwrap();
    let mut e = Engine::with_executor(Box::new(exec));
    for (prompt, want) in g.prompts.iter().zip(&g.greedy) {
        let got = e.generate(prompt, &opts()).unwrap().tokens;
        let n = decisive_prefix(want);
        assert_eq!(got[..n], want.tokens[..n]);
    }
    // Two ranks on the one GPU cannot use NCCL: said before anything loads.
    let p = layout_plan(1, 2, 1, 0, PlacementSpec::Contiguous);
    let devices = RankDevices::cuda(&[0], 2).unwrap().with_comm(GpuComm::Nccl);
    let (cfg, src) = ModelSource {
        dir: fixture_dir("qwen3_moe"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let err = ParallelExecutor::on_devices(&cfg, src, &p, 8, BLOCK, &devices)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NCCL needs a GPU per rank"), "{err}");
}
