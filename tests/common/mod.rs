//! Shared helpers of the integration tests: the golden fixtures and how to compare with them.

#![allow(dead_code)]

pub mod safetensors_files;

use serde::Deserialize;
use std::path::PathBuf;

/// One greedy run of a golden.
#[derive(Debug, Deserialize)]
pub struct Greedy {
    pub tokens: Vec<u32>,
    pub margins: Vec<f32>,
}

/// A fixture's golden.json (computed by transformers; see scripts/make_fixtures.py).
#[derive(Debug, Deserialize)]
pub struct Golden {
    pub model_type: String,
    pub prompts: Vec<Vec<u32>>,
    pub logits: Vec<Vec<Vec<f32>>>,
    pub greedy: Vec<Greedy>,
    pub text: Option<TextGolden>,
}

/// A text prompt and its ids under the fixture's tokenizer.
#[derive(Debug, Deserialize)]
pub struct TextGolden {
    pub prompt: String,
    pub ids: Vec<u32>,
}

/// The directory of fixture `name`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Fixture `name` loaded straight onto `device` (each layer moved there as it is read), in an
/// engine of 64 cached tokens in blocks of 4.
pub fn fixture_engine(
    name: &str,
    device: &switchyard::backend::Device,
) -> switchyard::engine::Engine {
    let model = switchyard::model::ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    }
    .load_on(device)
    .unwrap_or_else(|e| panic!("{name}: {e}"))
    .model;
    switchyard::engine::Engine::new(model, 64, 4)
}

/// Reads fixture `name`'s golden.json.
pub fn golden(name: &str) -> Golden {
    let path = fixture_dir(name).join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// ‖got − want‖₂ / ‖want‖₂.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length differs");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}
/// Random values already representable in bf16, so uploading a weight as bf16 is exact.
pub fn rand_t(
    rng: &mut rand_chacha::ChaCha8Rng,
    dims: &[usize],
    scale: f32,
) -> switchyard::tensor::Tensor {
    use rand::Rng;
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| half::bf16::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect();
    switchyard::tensor::Tensor::from_f32(dims.to_vec(), v).unwrap()
}

/// `got` (on any device) against `want` within relative L2 error `tol`; every element of `got`
/// must be finite (the GPU tests poison outputs with NaN, so an unwritten element fails).
pub fn close(
    what: &str,
    got: &switchyard::tensor::Tensor,
    want: &switchyard::tensor::Tensor,
    tol: f64,
) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.to_cpu().unwrap().into_vec();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output (an element was not written?)"
    );
    let e = rel_l2(&got, want.as_slice());
    eprintln!("{what}: relative L2 error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.2e} > {tol:.0e}");
}

/// Greedy margin under which a token may legitimately differ from the golden.
pub const SMALL_MARGIN: f32 = 0.05;

/// The prefix of the golden's greedy tokens that must match exactly: up to (excluding) the
/// first step whose top-2 margin is small, since float rounding can flip such a step.
pub fn decisive_prefix(g: &Greedy) -> usize {
    g.margins
        .iter()
        .position(|&m| m < SMALL_MARGIN)
        .unwrap_or(g.tokens.len())
}

/// The architectures the CPU engine runs today, by fixture.
pub const FIXTURES: &[&str] = &[
    "llama_tied",
    "llama_bias_sharded",
    "mistral_window",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
];

/// A layout of the given sizes as the ranks run it: two ranks per node, no rebalancing.
pub fn layout_plan(
    tp: usize,
    ep: usize,
    pp: usize,
    redundant: usize,
    placement: switchyard::layout::PlacementSpec,
) -> switchyard::parallel::ParallelPlan {
    let flags = switchyard::layout::LayoutOverrides {
        tp: Some(tp),
        ep: Some(ep),
        pp: Some(pp),
        redundant: Some(redundant),
        ..Default::default()
    };
    let mut layout = flags.resolve().unwrap();
    layout.experts.placement = placement;
    layout.experts.rebalance_every = 0;
    layout.parallel.gpus_per_node = Some(2.min(ep));
    layout.parallel.nodes = Some(ep * pp / 2.min(ep));
    switchyard::parallel::ParallelPlan::from_layout(layout).unwrap()
}

/// A deterministic scramble of `n` experts plus `redundant` replicas, as one slot map.
pub fn scrambled(n: usize, redundant: usize) -> switchyard::layout::PlacementSpec {
    let mut slots: Vec<u32> = (0..n as u32).map(|e| (e * 5 + 3) % n as u32).collect();
    slots.extend((0..redundant as u32).map(|r| (r * 3 + 1) % n as u32));
    slots.reverse();
    switchyard::layout::PlacementSpec::Explicit(vec![slots])
}

/// The layouts every model is checked under: EP 2 and 4, TP 2, TP 2 x EP 4 (two data-parallel
/// attention groups), PP 2, all three on 8 ranks, and for MoE models EP 4 with 4 redundant slots
/// in a scrambled placement.
pub fn every_layout(
    cfg: &switchyard::config::ModelConfig,
) -> Vec<(&'static str, switchyard::parallel::ParallelPlan)> {
    use switchyard::layout::PlacementSpec::Contiguous;
    let n = cfg.moe.as_ref().map_or(1, |m| m.n_experts);
    let mut v = vec![
        ("ep2", layout_plan(1, 2, 1, 0, Contiguous)),
        ("ep4", layout_plan(1, 4, 1, 0, Contiguous)),
        ("tp2", layout_plan(2, 2, 1, 0, Contiguous)),
        ("tp2-ep4", layout_plan(2, 4, 1, 0, Contiguous)),
        ("pp2", layout_plan(1, 1, 2, 0, Contiguous)),
        ("tp2-ep4-pp2", layout_plan(2, 4, 2, 0, Contiguous)),
    ];
    if cfg.moe.is_some() {
        v.push((
            "ep4-redundant4-scrambled",
            layout_plan(1, 4, 1, 4, scrambled(n, 4)),
        ));
    }
    v
}

/// One `#[test]` per golden fixture, named after it, each calling `$check("<fixture>")`.
#[allow(unused_macros)]
macro_rules! fixture_tests {
    ($check:path) => {
        #[test]
        fn llama_tied() {
            $check("llama_tied")
        }
        #[test]
        fn llama_bias_sharded() {
            $check("llama_bias_sharded")
        }
        #[test]
        fn mistral_window() {
            $check("mistral_window")
        }
        #[test]
        fn mixtral() {
            $check("mixtral")
        }
        #[test]
        fn qwen2_moe() {
            $check("qwen2_moe")
        }
        #[test]
        fn qwen3_moe() {
            $check("qwen3_moe")
        }
        #[test]
        fn deepseek_v2() {
            $check("deepseek_v2")
        }
        #[test]
        fn deepseek_v3() {
            $check("deepseek_v3")
        }
        #[test]
        fn deepseek_v3_yarn() {
            $check("deepseek_v3_yarn")
        }
    };
}
#[allow(unused_imports)]
pub(crate) use fixture_tests;

/// GPU 0 with new device buffers poisoned (NaN / -1), so an element a kernel fails to write
/// fails the comparison; `None`, after saying why, where there is no GPU (CI).
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<switchyard::backend::Device> {
    match switchyard::backend::Device::cuda(0) {
        Ok(d) => {
            switchyard::backend::cuda::storage::set_poison(true);
            Some(d)
        }
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            None
        }
    }
}
