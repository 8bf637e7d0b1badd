//! Every fixture checkpoint reproduces the logits and greedy tokens that Hugging Face
//! transformers computed for it (tests/fixtures, made by scripts/make_fixtures.py).

mod common;

use common::*;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::engine::{Engine, GenerateOptions};
use switchyard::model::ModelSource;

fn engine(name: &str) -> Engine {
    let loaded = ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    }
    .load()
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    Engine::new(loaded.model, 64, 4)
}

fn check_logits(name: &str) {
    let g = golden(name);
    let mut e = engine(name);
    for (prompt, want) in g.prompts.iter().zip(&g.logits) {
        let got = e.score(prompt).unwrap();
        let want: Vec<f32> = want.iter().flatten().copied().collect();
        let err = rel_l2(got.as_slice(), &want);
        eprintln!(
            "{name}: {} tokens: relative L2 error {err:.2e}",
            prompt.len()
        );
        assert!(
            err <= 1e-3,
            "{name}: prompt of {} tokens: relative error {err:.2e} > 1e-3",
            prompt.len()
        );
    }
    assert_eq!(e.used_blocks(), 0, "{name}: cache blocks leaked");
}

fn check_greedy(name: &str) {
    let g = golden(name);
    let mut e = engine(name);
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    };
    for (prompt, want) in g.prompts.iter().zip(&g.greedy) {
        let got = e.generate(prompt, &opts).unwrap();
        let n = decisive_prefix(want);
        assert_eq!(
            got.tokens[..n],
            want.tokens[..n],
            "{name}: greedy after a prompt of {} tokens",
            prompt.len()
        );
    }
}

mod logits_match_transformers {
    use super::*;
    fixture_tests!(check_logits);
}

mod greedy_tokens_match_transformers {
    use super::*;
    fixture_tests!(check_greedy);
}

#[test]
fn tokenizer_matches_transformers() {
    let g = golden("mixtral");
    let text = g.text.expect("mixtral golden has a text prompt");
    let tok = switchyard::tokenizer::Tokenizer::from_dir(&fixture_dir("mixtral"))
        .unwrap()
        .expect("tokenizer.json");
    assert_eq!(tok.encode(&text.prompt).unwrap(), text.ids);
}
