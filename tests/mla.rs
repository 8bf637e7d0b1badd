//! Multi-head latent attention: the weight-absorbed form (what decode runs) and the paper's
//! naive form give the same numbers, and the cache holds only the latent and the rope key.

mod common;

use common::*;
use switchyard::attention::MlaForm;
use switchyard::engine::Engine;
use switchyard::model::ModelSource;

fn logits(name: &str, form: MlaForm, prompt: &[u32]) -> Vec<f32> {
    let mut loaded = ModelSource {
        dir: fixture_dir(name),
        random_weights: None,
    }
    .load()
    .unwrap();
    loaded.model.set_mla_form(form);
    Engine::new(loaded.model, 64, 4)
        .score(prompt)
        .unwrap()
        .into_vec()
}

#[test]
fn absorbed_and_naive_forms_agree() {
    for name in ["deepseek_v2", "deepseek_v3", "deepseek_v3_yarn"] {
        let g = golden(name);
        for prompt in &g.prompts {
            let absorbed = logits(name, MlaForm::Absorbed, prompt);
            let naive = logits(name, MlaForm::Naive, prompt);
            let err = rel_l2(&absorbed, &naive);
            assert!(
                err < 1e-5,
                "{name}, {} tokens: absorbed vs naive {err:.2e}",
                prompt.len()
            );
        }
    }
}

#[test]
fn the_cache_stores_the_latent_and_rope_key_only() {
    let loaded = ModelSource {
        dir: fixture_dir("deepseek_v3"),
        random_weights: None,
    }
    .load()
    .unwrap();
    let cfg = loaded.model.config().clone();
    let switchyard::config::AttentionKind::Mla(mla) = &cfg.attention else {
        panic!("MLA config")
    };
    let cache = loaded.model.new_cache(1, 16);
    let per_layer = mla.kv_lora_rank + mla.qk_rope_head_dim;
    assert_eq!(
        cache.bytes_per_token(),
        per_layer * cfg.num_layers * 4,
        "f32 rows of kv_lora + rope per layer"
    );
    let full_kv = cfg.num_heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim);
    assert!(per_layer < full_kv, "{per_layer} vs full K/V {full_kv}");
}
