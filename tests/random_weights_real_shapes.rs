//! `--random-weights` builds real-shaped models from the shipped hub config.json files. On the
//! CPU (f32, 24 GB machines) the full depth does not fit, so these keep every width of the real
//! model and cut the depth to the first dense layer plus one MoE layer.

mod common;

use serde_json::Value;
use switchyard::engine::Engine;
use switchyard::model::ModelSource;

fn truncated_config(model: &str, layers: usize) -> tempfile::TempDir {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/models")
        .join(model)
        .join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = layers.into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn deepseek_v2_lite_widths_run_with_random_weights() {
    let dir = truncated_config("DeepSeek-V2-Lite", 2);
    let source = ModelSource {
        dir: dir.path().to_path_buf(),
        random_weights: Some(7),
    };
    let loaded = source.load().unwrap();
    let cfg = loaded.model.config().clone();
    assert_eq!((cfg.hidden_size, cfg.vocab_size), (2048, 102400));
    let moe = cfg.moe.as_ref().unwrap();
    assert_eq!(
        (moe.n_experts, moe.router.top_k, moe.intermediate_size),
        (64, 6, 1408)
    );
    assert_eq!(
        moe.sparse_layers,
        vec![false, true],
        "first_k_dense_replace 1"
    );
    let mut engine = Engine::new(loaded.model, 16, 16);
    let logits = engine.score(&[100000, 17, 4242, 9]).unwrap();
    assert_eq!(logits.dims(), &[4, 102400]);
    assert!(logits.as_slice().iter().all(|v| v.is_finite()));
    let rows: Vec<&[f32]> = logits.as_slice().chunks(102400).collect();
    assert_ne!(rows[0], rows[3], "different tokens, different logits");
}
