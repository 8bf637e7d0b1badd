//! Step time while experts migrate, against steps without a migration, on in-process CPU ranks.
//!
//! A Mixtral-shaped model with random weights (hidden 512, 8 experts of intermediate 1536, 4
//! MoE layers; one expert is 9.4 MB as f32) on ep 4 with 4 spare slots serves 16 sequences
//! decoding one token per step. Three runs of the same steps: no rebalancing; a rebalance every
//! 6 steps copying one layer per step (the engine's way: copies spread over steps, then a
//! switch); and a rebalance copying every layer in one step (what a stop-the-world rebalance
//! costs the step it lands on). Prints median / p90 / max step time per kind of step.
//!
//! cargo bench --bench replication

use std::sync::Arc;
use std::time::Instant;
use switchyard::layout::LayoutOverrides;
use switchyard::model::{ModelSource, StepBatch};
use switchyard::parallel::{ParallelExecutor, ParallelPlan};
use switchyard::replication::ReplicationConfig;

const SEQS: usize = 16;
const PROMPT: usize = 32;
const STEPS: usize = 96;
const BLOCK: usize = 16;
const LAYERS: usize = 4;
const ROUNDS: usize = 3;

const CONFIG: &str = r#"{
  "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
  "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
  "num_attention_heads": 8, "num_key_value_heads": 4, "num_local_experts": 8,
  "num_experts_per_tok": 2, "vocab_size": 1024, "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "tie_word_embeddings": false,
  "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"
}"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Plain,
    Copying,
    Switch,
}

fn executor(dir: &std::path::Path, replication: Option<ReplicationConfig>) -> ParallelExecutor {
    let (cfg, src) = ModelSource {
        dir: dir.to_path_buf(),
        random_weights: Some(7),
    }
    .weights()
    .expect("random weights");
    let flags = LayoutOverrides {
        ep: Some(4),
        redundant: Some(4),
        ..Default::default()
    };
    let mut layout = flags.resolve().expect("layout");
    layout.experts.rebalance_every = 0;
    let plan = ParallelPlan::from_layout(layout).expect("plan");
    let per_seq = (PROMPT + STEPS + 1).div_ceil(BLOCK);
    let exec =
        ParallelExecutor::new(&cfg, Arc::clone(&src), &plan, SEQS * per_seq, BLOCK).expect("ranks");
    match replication {
        Some(r) => exec.with_replication(r).expect("replication"),
        None => exec,
    }
}

/// Prefills every sequence, then times `STEPS` decode steps; returns (kind, ms) per step.
fn run(exec: &mut ParallelExecutor) -> Vec<(Kind, f64)> {
    let per_seq = (PROMPT + STEPS + 1).div_ceil(BLOCK) as u32;
    let table = |s: usize| (s as u32 * per_seq..(s as u32 + 1) * per_seq).collect::<Vec<u32>>();
    let token = |s: usize, p: usize| ((s * 131 + p * 31 + p * p) % 1000 + 2) as u32;
    let mut batch = StepBatch::default();
    for s in 0..SEQS {
        let prompt: Vec<u32> = (0..PROMPT).map(|p| token(s, p)).collect();
        batch.push_sequence(&prompt, 0, table(s), false);
    }
    exec.submit(batch)
        .and_then(|_| exec.collect())
        .expect("prefill");
    let mut epoch = 0;
    (0..STEPS)
        .map(|i| {
            let pos = PROMPT + i;
            let mut batch = StepBatch::default();
            for s in 0..SEQS {
                batch.push_sequence(&[token(s, pos)], pos, table(s), false);
            }
            let start = Instant::now();
            let out = exec
                .submit(batch)
                .and_then(|_| exec.collect())
                .expect("step");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let kind = match &out.replication {
                Some(r) if r.migrated_layers > 0 => Kind::Copying,
                Some(r) if r.epoch != epoch => {
                    epoch = r.epoch;
                    Kind::Switch
                }
                _ => Kind::Plain,
            };
            (kind, ms)
        })
        .collect()
}

fn median(steps: &[(Kind, f64)], kind: Kind) -> Option<(usize, f64, f64, f64)> {
    let mut v: Vec<f64> = steps
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    Some((v.len(), q(0.5), q(0.9), v[v.len() - 1]))
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), CONFIG).expect("config.json");
    let spread = ReplicationConfig {
        layers_per_step: 1,
        ..ReplicationConfig::every(6, 12)
    };
    let at_once = ReplicationConfig {
        layers_per_step: LAYERS,
        ..spread.clone()
    };
    let runs = [
        ("no rebalancing", None),
        ("rebalance/6 steps, 1 layer/step", Some(spread)),
        ("rebalance/6 steps, all layers/step", Some(at_once)),
    ];
    // Rounds interleave the runs so that load from elsewhere on the machine hits them alike.
    let mut steps: Vec<Vec<(Kind, f64)>> = vec![Vec::new(); runs.len()];
    let mut moved = vec![(0u64, 0u64, 0u64); runs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, replication)) in runs.iter().enumerate() {
            let mut exec = executor(dir.path(), replication.clone());
            steps[i].extend(run(&mut exec));
            if let Some(s) = exec.replication_status() {
                moved[i].0 += s.rebalances_total;
                moved[i].1 += s.slots_migrated_total;
                moved[i].2 += s.wire_bytes_total;
            }
        }
    }
    println!("{ROUNDS} rounds x {STEPS} decode steps of {SEQS} sequences; step = submit + collect, all ranks");
    for (i, (label, _)) in runs.iter().enumerate() {
        let plain = median(&steps[i], Kind::Plain).map_or(f64::NAN, |m| m.1);
        for kind in [Kind::Plain, Kind::Copying, Kind::Switch] {
            let Some((n, med, p90, max)) = median(&steps[i], kind) else {
                continue;
            };
            println!(
                "{label:<34} {:<8} steps {n:>4}  median {med:>7.2} ms  p90 {p90:>7.2} ms  max {max:>7.2} ms  median / plain {:>5.2}",
                format!("{kind:?}").to_lowercase(),
                med / plain
            );
        }
        if moved[i].0 > 0 {
            println!(
                "{label:<34} {} rebalances, {} slots moved, {:.0} MB over the EP communicators",
                moved[i].0,
                moved[i].1,
                moved[i].2 as f64 / 1e6
            );
        }
    }
}
