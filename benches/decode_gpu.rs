//! End-to-end decode on one GPU through the engine's executor, the MoE blocks on the fused
//! kernels: by default the whole Mixtral-8x7B shape (configs/models, all 32 layers, ~93 GB of
//! bf16 random weights built on the GPU); `--model DIR` takes another shipped config (e.g.
//! configs/models/DeepSeek-V2-Lite: MLA attention, 64 experts top-6 and two shared ones, ~31 GB)
//! and `--layers N` keeps its first N layers.
//!
//! - Decode at batch 1, 8, 64 and 256 (sequences with a 64-token prompt, 16 timed steps after 4
//!   warm-ups), and at batch 32 and 64 with 4096-token contexts (for Mixtral a 17 and a 35 GB
//!   bf16 KV cache beside the 93 GB of weights; in f32 the second would not fit the H200): ms
//!   per step and tokens/s, against the HBM roofline: the bytes one step must read (every weight
//!   but the routed experts and the embedding, the experts the step's routing touched, the KV
//!   cache; counted by `layout::memory` from the config) over the device-to-device copy rate
//!   measured in the same run.
//! - Time to first token of a 2048-token prompt (median of 3 after a warm-up), against the flops
//!   floor (the prompt's GEMM and attention flops, attention in its plain per-head form, over
//!   the cuBLAS bf16 GEMM rate measured here).
//!
//! Every timed step includes what the serving path does after the layers: the greedy pick of
//! every row on the GPU (`ops::greedy_rows`, as the scheduler's `StepLogits`), only the token ids
//! copied to the host (the engine's one wait per step). Run: `cargo bench --features cuda --bench
//! decode_gpu -- [--model DIR] [--layers N]` or the built executable. Without a GPU it prints why
//! and exits 0.

use std::path::PathBuf;
use std::time::Instant;

use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::cuda::measure::Ceilings;
use switchyard::backend::Device;
use switchyard::config::{AttentionKind, ModelConfig};
use switchyard::engine::{Executor, LocalExecutor};
use switchyard::kv_cache::KvDtype;
use switchyard::layout::memory::{kv_bytes_per_token, mlp_params, stage_weights, Dtypes};
use switchyard::layout::Layout;
use switchyard::model::{ModelSource, StepBatch, StepOutput};
use switchyard::ops;
use switchyard::{Error, Result};

const BATCHES: [usize; 4] = [1, 8, 64, 256];
const PROMPT: usize = 64;
/// (batch, prompt) of the long-context rows.
const LONG: [(usize, usize); 2] = [(32, 4096), (64, 4096)];
/// Prompt tokens prefilled in one step (whole prompts, at least one a step).
const PREFILL_TOKENS: usize = 4096;
const WARMUP: usize = 4;
const STEPS: usize = 16;
const BLOCK: usize = 16;
const TTFT_PROMPT: usize = 2048;

/// What a decode step reads, in bytes, from the config alone (`layout::memory`'s counts for one
/// rank holding the whole model, in the GPU's element types).
struct StepBytes {
    /// Every weight but the routed experts and the embedding (whose rows a step barely reads).
    fixed: f64,
    /// One routed expert's weights.
    per_expert: f64,
    /// The KV cache of one token of context, every layer.
    kv_per_token: f64,
}

impl StepBytes {
    fn of(c: &ModelConfig) -> Self {
        let layout = Layout::default();
        let dt = Dtypes {
            kv: KvDtype::for_attention(&c.attention).bytes() as u64,
            ..Dtypes::default()
        };
        let w = stage_weights(c, &layout, 0, dt);
        let moe = c.moe.as_ref().expect("an MoE model");
        StepBytes {
            fixed: (w.total() - w.experts - w.embedding) as f64,
            per_expert: (mlp_params(c.hidden_size, moe.intermediate_size) * dt.weight) as f64,
            kv_per_token: kv_bytes_per_token(c, &layout, 0, dt) as f64,
        }
    }
}

/// The step's next tokens, picked where the logits are (the serving path's greedy pick).
fn next_tokens(out: &StepOutput) -> Result<Vec<u32>> {
    Ok(ops::greedy_rows(&out.logits)?
        .into_iter()
        .map(|p| p.0)
        .collect())
}

/// The next tokens the way steps ended before sampling moved to the device, for comparison in
/// the same run: the whole logits copied to the host, placed row by row into a fresh buffer (as
/// the step output's assembly did), arg-maxed on the host.
fn next_tokens_on_host(out: &StepOutput) -> Result<Vec<u32>> {
    let host = out.logits.to_cpu()?;
    let (rows, vocab) = (host.dims()[0], host.dims()[1]);
    let mut placed = vec![f32::NAN; rows * vocab];
    for r in 0..rows {
        placed[r * vocab..][..vocab].copy_from_slice(host.row(r));
    }
    Ok(placed
        .chunks_exact(vocab)
        .map(switchyard::backend::cpu::sample::argmax)
        .collect())
}

/// Experts with at least one token, summed over layers.
fn touched(out: &StepOutput) -> usize {
    out.expert_counts
        .iter()
        .map(|l| l.iter().filter(|&&n| n > 0).count())
        .sum()
}

struct Decode {
    ms: f64,
    touched: f64,
    context: f64,
}

/// Cache blocks a sequence of a `prompt`-token prompt takes through the timed steps.
fn blocks_per_seq(prompt: usize) -> usize {
    (prompt + WARMUP + STEPS).div_ceil(BLOCK)
}

/// Decode steps at `batch` after `prompt`-token prompts; `on_host` ends each step the previous
/// way ([`next_tokens_on_host`]).
fn decode(
    ex: &mut LocalExecutor,
    batch: usize,
    prompt: usize,
    vocab: usize,
    on_host: bool,
) -> Result<Decode> {
    let blocks_per_seq = blocks_per_seq(prompt);
    let table = |s: usize| -> Vec<u32> {
        (0..blocks_per_seq)
            .map(|b| (s * blocks_per_seq + b) as u32)
            .collect()
    };
    let mut next = vec![0u32; batch];
    let per_step = (PREFILL_TOKENS / prompt).max(1);
    for first in (0..batch).step_by(per_step) {
        let mut b = StepBatch::default();
        for s in first..(first + per_step).min(batch) {
            let tokens: Vec<u32> = (0..prompt)
                .map(|i| ((s * 7919 + i * 131) % vocab) as u32)
                .collect();
            b.push_sequence(&tokens, 0, table(s), false);
        }
        let out = ex.step(&b)?;
        let picked = next_tokens(&out)?;
        next[first..first + picked.len()].copy_from_slice(&picked);
    }
    let (mut total, mut touched_sum) = (0.0, 0usize);
    for step in 0..WARMUP + STEPS {
        let mut b = StepBatch::default();
        for (s, &tok) in next.iter().enumerate() {
            b.push_sequence(&[tok], prompt + step, table(s), false);
        }
        let t = Instant::now();
        let out = ex.step(&b)?;
        next = if on_host {
            next_tokens_on_host(&out)?
        } else {
            next_tokens(&out)?
        };
        let dt = t.elapsed().as_secs_f64();
        if step >= WARMUP {
            total += dt;
            touched_sum += touched(&out);
        }
    }
    Ok(Decode {
        ms: total / STEPS as f64 * 1e3,
        touched: touched_sum as f64 / STEPS as f64,
        context: (prompt + WARMUP) as f64 + (STEPS as f64 + 1.0) / 2.0,
    })
}

/// Flops of a `t`-token prompt: every weight GEMM of each token (attention, routers, shared
/// experts, dense MLPs, its top-k experts), causal attention in the plain per-head form (query ·
/// key and probability · value widths; MLA's absorbed form does more), one lm_head row.
fn prefill_flops(c: &ModelConfig, t: usize) -> f64 {
    let w = stage_weights(c, &Layout::default(), 0, Dtypes::default());
    let moe = c.moe.as_ref().expect("an MoE model");
    let sparse = moe.sparse_layers.iter().filter(|&&s| s).count();
    let params = (w.attention + w.router + w.shared_experts + w.dense_mlp) as f64 / 2.0
        + (sparse * moe.router.top_k) as f64
            * mlp_params(c.hidden_size, moe.intermediate_size) as f64;
    let (qk, v) = match &c.attention {
        AttentionKind::Gqa { .. } => (c.head_dim, c.head_dim),
        AttentionKind::Mla(m) => (m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim),
    };
    let t = t as f64;
    2.0 * t * params
        + c.num_layers as f64 * c.num_heads as f64 * (qk + v) as f64 * t * t
        + 2.0 * c.vocab_size as f64 * c.hidden_size as f64
}

fn main() -> Result<()> {
    if let Some(why) = unavailable_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let layers: Option<usize> = args
        .iter()
        .position(|a| a == "--layers")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let device = Device::cuda(0)?;
    let Device::Cuda(dev) = &device else {
        unreachable!("Device::cuda opens a GPU")
    };
    // The burst rates: decode steps and one prefill are short and keep the GPU below its power
    // cap, and the higher rates make the stricter roofline.
    let ceilings = Ceilings::measure(dev)?;
    let (copy_bps, gemm_fps) = (ceilings.burst_copy_bps, ceilings.burst_gemm_fps);
    println!("{}: {}", dev.name(), ceilings.describe());

    let shipped = match args.iter().position(|a| a == "--model") {
        Some(i) => {
            PathBuf::from(args.get(i + 1).ok_or_else(|| {
                Error::Input("--model takes a directory with a config.json".into())
            })?)
        }
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/models/Mixtral-8x7B-v0.1"),
    };
    let name = shipped
        .file_name()
        .map_or("the model".into(), |n| n.to_string_lossy().into_owned());
    let tmp = tempfile::tempdir().map_err(|e| Error::Input(e.to_string()))?;
    let dir = match layers {
        None => shipped,
        Some(n) => {
            let text = std::fs::read_to_string(shipped.join("config.json"))
                .map_err(|e| Error::Input(e.to_string()))?;
            let mut cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Input(e.to_string()))?;
            cfg["num_hidden_layers"] = n.into();
            std::fs::write(tmp.path().join("config.json"), cfg.to_string())
                .map_err(|e| Error::Input(e.to_string()))?;
            tmp.path().to_path_buf()
        }
    };
    let t = Instant::now();
    let model = ModelSource {
        dir,
        random_weights: Some(0),
    }
    .load_on(&device)?
    .model;
    dev.synchronize()?;
    let c = model.config().clone();
    let fused = (0..c.num_layers)
        .filter(|&l| model.ffn(l).is_some_and(|b| b.is_fused()))
        .count();
    println!(
        "built {name} ({} layers, {fused} on the fused MoE kernels) with random weights on the GPU in {:.1} s",
        c.num_layers,
        t.elapsed().as_secs_f64()
    );
    let blocks = BATCHES
        .iter()
        .map(|&b| (b, PROMPT))
        .chain(LONG)
        .map(|(b, p)| b * blocks_per_seq(p))
        .chain([(TTFT_PROMPT + 1).div_ceil(BLOCK)])
        .max()
        .expect("cases");
    let mut ex = LocalExecutor::try_new(model, blocks, BLOCK)?;
    let sb = StepBytes::of(&c);
    let moe = c.moe.as_ref().expect("an MoE model");
    let routed_slots = moe.sparse_layers.iter().filter(|&&s| s).count() * moe.n_experts;
    println!(
        "KV cache: {blocks} blocks of {BLOCK} tokens, {:.1} GB ({:?})",
        (blocks * BLOCK) as f64 * sb.kv_per_token / 1e9,
        KvDtype::for_attention(&c.attention)
    );

    println!("\n| batch | context | ms/step | tokens/s | experts read/step | GB read/step (KV) | roofline ms | % of roofline |");
    println!("|---|---|---|---|---|---|---|---|");
    let cases = BATCHES.iter().map(|&b| (b, PROMPT)).chain(LONG);
    for (b, prompt) in cases {
        let d = decode(&mut ex, b, prompt, c.vocab_size, false)?;
        let kv = b as f64 * d.context * sb.kv_per_token;
        let bytes = sb.fixed + d.touched * sb.per_expert + kv;
        let floor_ms = bytes / copy_bps * 1e3;
        println!(
            "| {b} | {:.0} | {:.2} | {:.0} | {:.1} of {} | {:.1} ({:.1}) | {:.2} | {:.0} |",
            d.context,
            d.ms,
            b as f64 / (d.ms * 1e-3),
            d.touched,
            routed_slots,
            bytes / 1e9,
            kv / 1e9,
            floor_ms,
            100.0 * floor_ms / d.ms
        );
    }

    let b = BATCHES[BATCHES.len() - 1];
    let (device, host) = (
        decode(&mut ex, b, PROMPT, c.vocab_size, false)?,
        decode(&mut ex, b, PROMPT, c.vocab_size, true)?,
    );
    println!(
        "\nbatch {b}, same run: {:.2} ms/step picking on the GPU (token ids to the host) vs {:.2} ms/step with the [{b}, {}] f32 logits copied to the host and picked there: {:.2} ms saved per step",
        device.ms,
        host.ms,
        c.vocab_size,
        host.ms - device.ms
    );

    let prompt: Vec<u32> = (0..TTFT_PROMPT)
        .map(|i| ((i * 2654435761) % c.vocab_size) as u32)
        .collect();
    let table: Vec<u32> = (0..(TTFT_PROMPT + 1).div_ceil(BLOCK) as u32).collect();
    let mut times = Vec::new();
    for _ in 0..4 {
        let mut batch = StepBatch::default();
        batch.push_sequence(&prompt, 0, table.clone(), false);
        let t = Instant::now();
        let out = ex.step(&batch)?;
        let _first = next_tokens(&out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mut timed = times[1..].to_vec();
    timed.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let ttft = timed[timed.len() / 2];
    let floor = prefill_flops(&c, TTFT_PROMPT) / gemm_fps;
    println!(
        "\ntime to first token, {TTFT_PROMPT}-token prompt: {:.1} ms (first run {:.1} ms); flops floor {:.1} ms ({:.1} TFLOP at the measured GEMM rate); {:.0}% of the floor",
        ttft * 1e3,
        times[0] * 1e3,
        floor * 1e3,
        prefill_flops(&c, TTFT_PROMPT) / 1e12,
        100.0 * floor / ttft
    );
    Ok(())
}
