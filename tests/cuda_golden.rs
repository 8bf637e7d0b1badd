//! Every golden fixture on `--device cuda`: logits within 2e-2 (relative L2) of transformers',
//! greedy tokens equal up to the golden's first small-margin step, and greedy generation on the
//! GPU equal to the CPU's over the same prefix. Skips, saying so, where there is no GPU (CI).
//! Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::backend::Device;
use switchyard::engine::GenerateOptions;

const ALL: &[&str] = &[
    "llama_tied",
    "llama_bias_sharded",
    "mistral_window",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_v3_yarn",
];

#[test]
fn every_fixture_on_the_gpu() {
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            return;
        }
    };
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    };
    let mut failures = Vec::new();
    for &name in ALL {
        let g = golden(name);
        let mut gpu = fixture_engine(name, &device);
        let mut cpu = fixture_engine(name, &Device::Cpu);
        let mut errors = Vec::new();
        for (prompt, want) in g.prompts.iter().zip(&g.logits) {
            let got = gpu.score(prompt).unwrap();
            let rows: Vec<f64> = want
                .iter()
                .zip(got.as_slice().chunks(want[0].len()))
                .map(|(w, g)| rel_l2(g, w))
                .collect();
            let want: Vec<f32> = want.iter().flatten().copied().collect();
            let e = rel_l2(got.as_slice(), &want);
            if e > 2e-2 {
                let rows: Vec<String> = rows.iter().map(|r| format!("{r:.1e}")).collect();
                eprintln!(
                    "{name}: prompt of {}: error by position {rows:?}",
                    prompt.len()
                );
            }
            errors.push(e);
        }
        let worst = errors.iter().copied().fold(0.0, f64::max);
        let mut tokens_ok = true;
        for (prompt, want) in g.prompts.iter().zip(&g.greedy) {
            let got = gpu.generate(prompt, &opts).unwrap();
            let on_cpu = cpu.generate(prompt, &opts).unwrap();
            let n = decisive_prefix(want);
            if got.tokens[..n] != want.tokens[..n] || got.tokens[..n] != on_cpu.tokens[..n] {
                tokens_ok = false;
                eprintln!(
                    "{name}: prompt of {}: gpu {:?} cpu {:?} golden {:?} (first {n} must match)",
                    prompt.len(),
                    got.tokens,
                    on_cpu.tokens,
                    want.tokens
                );
            }
        }
        let ok = worst <= 2e-2 && tokens_ok && gpu.used_blocks() == 0;
        eprintln!(
            "{name}: logits relative L2 by prompt {:?}; greedy tokens {}; {}",
            errors
                .iter()
                .map(|e| format!("{e:.2e}"))
                .collect::<Vec<_>>(),
            if tokens_ok { "match" } else { "DIFFER" },
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            failures.push(name);
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failing on the GPU: {failures:?}"
    );
}
