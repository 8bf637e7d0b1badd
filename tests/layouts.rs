//! Every fixture under many parallel layouts (in-process CPU ranks: TP attention, All-to-All
//! expert parallelism, pipeline stages, redundant and scrambled expert slots) gives the
//! single-rank logits and greedy tokens; the All-to-All moves exactly the bytes the dispatch
//! plans predict; pipeline stages work on different micro-batches at the same time.

mod common;

use common::*;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::engine::{Engine, GenerateOptions};
use switchyard::layout::PlacementSpec;
use switchyard::model::{ModelSource, StepBatch};
use switchyard::parallel::{ParallelExecutor, ParallelPlan};

const BLOCK: usize = 4;
const CACHE_TOKENS: usize = 64;

fn engine(name: &str, p: Option<&ParallelPlan>) -> Engine {
    let source = ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    };
    match p {
        None => Engine::new(source.load().unwrap().model, CACHE_TOKENS, BLOCK),
        Some(p) => {
            let (cfg, src) = source.weights().unwrap();
            let exec = ParallelExecutor::new(&cfg, src, p, CACHE_TOKENS / BLOCK, BLOCK)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            Engine::with_executor(Box::new(exec))
        }
    }
}

fn check_fixture(name: &str) {
    let g = golden(name);
    let mut single = engine(name, None);
    let cfg = single.config().clone();
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    };
    let want_logits: Vec<Vec<f32>> = g
        .prompts
        .iter()
        .map(|p| single.score(p).unwrap().into_vec())
        .collect();
    let want_tokens: Vec<Vec<u32>> = g
        .prompts
        .iter()
        .map(|p| single.generate(p, &opts).unwrap().tokens)
        .collect();
    for (label, p) in every_layout(&cfg) {
        let mut e = engine(name, Some(&p));
        for (i, prompt) in g.prompts.iter().enumerate() {
            let got = e.score(prompt).unwrap().into_vec();
            let err = rel_l2(&got, &want_logits[i]);
            assert!(
                err <= 1e-5,
                "{name} under {label}: {} tokens: relative error {err:.2e}",
                prompt.len()
            );
            let tokens = e.generate(prompt, &opts).unwrap().tokens;
            assert_eq!(
                tokens, want_tokens[i],
                "{name} under {label}: greedy tokens"
            );
        }
        assert_eq!(e.used_blocks(), 0, "{name} under {label}: blocks leaked");
    }
}

fixture_tests!(check_fixture);

fn batch_of(prompts: &[Vec<u32>], first_block: u32) -> StepBatch {
    let mut b = StepBatch::default();
    let mut next = first_block;
    for p in prompts {
        let blocks = p.len().div_ceil(BLOCK) as u32;
        b.push_sequence(p, 0, (next..next + blocks).collect(), true);
        next += blocks;
    }
    b
}

#[test]
fn all_to_all_moves_the_bytes_the_plans_predict() {
    let g = golden("mixtral");
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    for p in [
        layout_plan(1, 4, 1, 0, PlacementSpec::Contiguous),
        layout_plan(1, 4, 1, 4, scrambled(8, 4)),
    ] {
        let mut exec = ParallelExecutor::new(&cfg, src.clone(), &p, 32, BLOCK).unwrap();
        exec.submit(batch_of(&g.prompts, 0)).unwrap();
        let out = exec.collect().unwrap();
        assert!(out.a2a_measured_bytes > 0);
        assert_eq!(out.a2a_measured_bytes, out.a2a_predicted_bytes);
        // tp 1, pp 1: the All-to-All is the only traffic.
        assert_eq!(out.comm_bytes, out.a2a_measured_bytes);
        let pairs: u64 = out.rank_tokens.iter().flatten().sum();
        let tokens: usize = g.prompts.iter().map(Vec::len).sum();
        let sparse_layers = cfg
            .moe
            .as_ref()
            .unwrap()
            .sparse_layers
            .iter()
            .filter(|s| **s)
            .count();
        assert_eq!(
            pairs as usize,
            tokens * 2 * sparse_layers,
            "every (token, expert) pair computed once"
        );
    }
}

#[test]
fn pipeline_stages_work_on_different_micro_batches_at_once() {
    let g = golden("qwen3_moe");
    let (cfg, src) = ModelSource {
        dir: fixture_dir("qwen3_moe"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let mut exec = ParallelExecutor::new(
        &cfg,
        src,
        &layout_plan(1, 1, 2, 0, PlacementSpec::Contiguous),
        64,
        BLOCK,
    )
    .unwrap();
    let micro: Vec<StepBatch> = (0..4)
        .map(|i| batch_of(&g.prompts[3..4], i as u32 * 8))
        .collect();
    let ids: Vec<u64> = micro.into_iter().map(|b| exec.submit(b).unwrap()).collect();
    for _ in &ids {
        exec.collect().unwrap();
    }
    let ev = exec.stage_events();
    let find = |step: u64, stage: usize| {
        ev.iter()
            .find(|e| e.step == step && e.stage == stage)
            .copied()
            .unwrap()
    };
    // Stage 0 starts micro-batch i+1 before stage 1 has finished micro-batch i.
    let overlaps = ids
        .windows(2)
        .filter(|w| find(w[1], 0).start < find(w[0], 1).end)
        .count();
    assert!(overlaps >= 1, "no overlapping stage work: {ev:?}");
}

#[test]
fn the_ranks_refuse_a_layout_that_cannot_work() {
    let (cfg, src) = ModelSource {
        dir: fixture_dir("mixtral"),
        random_weights: None,
    }
    .weights()
    .unwrap();
    let mut p = layout_plan(1, 1, 1, 0, PlacementSpec::Contiguous);
    p.layout.parallel.ep = 3;
    p.layout.parallel.nodes = None;
    p.layout.parallel.gpus_per_node = None;
    let p = ParallelPlan::from_layout(p.layout).unwrap();
    let err = ParallelExecutor::new(&cfg, src, &p, 8, BLOCK)
        .unwrap_err()
        .to_string();
    assert!(err.contains("experts (8)") && err.contains("ep 3"), "{err}");
}
