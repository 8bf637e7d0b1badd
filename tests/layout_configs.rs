//! Every shipped layout in configs/ validates against its model (real models with their GPU
//! memory, tiny layouts against the golden fixtures), and layouts mean what they say.

use std::path::{Path, PathBuf};
use switchyard::config::ModelConfig;
use switchyard::layout::memory::{kv_bytes_per_token, model_weights, stage_weights, Dtypes};
use switchyard::layout::{Layout, LayoutOverrides, PlacementSpec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(dir: &str) -> ModelConfig {
    ModelConfig::from_dir(&root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn layout(name: &str) -> Layout {
    Layout::from_file(&root().join("configs").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn real_deployments_validate_with_their_gpu_memory() {
    let cases = [
        ("mixtral-8x7b-ep8.toml", "Mixtral-8x7B-v0.1", 8),
        ("mixtral-8x22b-ep8.toml", "Mixtral-8x22B-v0.1", 8),
        ("deepseek-v2-lite-ep4.toml", "DeepSeek-V2-Lite", 4),
        ("deepseek-v3-pp2-ep8.toml", "DeepSeek-V3", 16),
        ("deepseek-v3-ep16-dp.toml", "DeepSeek-V3", 16),
        ("qwen3-30b-a3b.toml", "Qwen3-30B-A3B", 4),
    ];
    for (file, m, world) in cases {
        let l = layout(file);
        let cfg = model(&format!("configs/models/{m}"));
        assert!(
            l.parallel.gpu_mem_gb.is_some(),
            "{file} states its GPU memory"
        );
        l.validate(&cfg, None)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(l.world(), world, "{file}");
        // Half the GPU memory is too little for every one of them.
        let half = l.parallel.gpu_mem_gb.unwrap() / 8.0;
        let e = l.validate(&cfg, Some(half)).unwrap_err().to_string();
        assert!(
            e.contains("needs") && e.contains("GB per rank"),
            "{file}: {e}"
        );
    }
}

#[test]
fn shipped_model_configs_have_the_published_sizes() {
    let gb = |m: &str| {
        model_weights(&model(&format!("configs/models/{m}")), Dtypes::default()) as f64 / 1e9
    };
    // Published parameter counts x 2 bytes (bf16).
    for (m, params_b) in [
        ("Mixtral-8x7B-v0.1", 46.7),
        ("Mixtral-8x22B-v0.1", 140.6),
        ("DeepSeek-V2-Lite", 15.7),
        ("DeepSeek-V3", 671.0),
        ("Qwen3-30B-A3B", 30.5),
    ] {
        let got = gb(m) / 2.0;
        assert!(
            (got - params_b).abs() / params_b < 0.01,
            "{m}: {got:.2}B params, published {params_b}B"
        );
    }
}

fn fixtures() -> Vec<(String, ModelConfig)> {
    let dir = root().join("tests/fixtures");
    let mut out: Vec<(String, ModelConfig)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").exists())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                ModelConfig::from_dir(&e.path()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 9);
    out
}

#[test]
fn tiny_layouts_validate_against_every_fixture() {
    for file in [
        "tiny-ep2.toml",
        "tiny-ep4.toml",
        "tiny-tp2.toml",
        "tiny-tp2-ep4.toml",
        "tiny-pp2.toml",
        "tiny-tp2-ep4-pp2.toml",
    ] {
        let l = layout(file);
        for (name, cfg) in fixtures() {
            l.validate(&cfg, None)
                .unwrap_or_else(|e| panic!("{file} on {name}: {e}"));
            l.validate(&cfg, Some(1.0))
                .unwrap_or_else(|e| panic!("{file} on {name} in 1 GB: {e}"));
        }
    }
}

#[test]
fn scrambled_layout_fits_every_eight_expert_fixture_and_dense_ones() {
    let l = layout("tiny-ep4-redundant4-scrambled.toml");
    let PlacementSpec::Explicit(maps) = &l.experts.placement else {
        panic!("explicit placement")
    };
    assert_eq!(maps.len(), 1);
    for (name, cfg) in fixtures() {
        let experts = cfg.moe.as_ref().map(|m| m.n_experts);
        let res = l.validate(&cfg, None);
        match experts {
            Some(8) | None => res.unwrap_or_else(|e| panic!("{name}: {e}")),
            Some(n) => {
                let e = res.unwrap_err().to_string();
                assert!(
                    e.contains(&format!("experts ({n}) + redundant (4)")),
                    "{name}: {e}"
                );
                continue;
            }
        }
        for (layer, p) in l.placements(&cfg).unwrap().into_iter().enumerate() {
            let Some(p) = p else { continue };
            assert!(cfg.is_sparse_layer(layer));
            assert_eq!(p.slots(), &maps[0][..], "{name} layer {layer}");
            assert_eq!((p.n_ranks(), p.slots_per_rank()), (4, 3));
            assert_eq!(p.replicas(5), &[0, 4]);
        }
    }
}

#[test]
fn cli_overrides_win_and_ep_defaults_to_tp() {
    let o = LayoutOverrides {
        tp: Some(4),
        ..Default::default()
    };
    let l = o.resolve().unwrap();
    assert_eq!((l.parallel.tp, l.parallel.ep, l.parallel.pp), (4, 4, 1));
    let o = LayoutOverrides {
        layout: Some(root().join("configs/tiny-tp2-ep4-pp2.toml")),
        pp: Some(1),
        redundant: Some(4),
        ..Default::default()
    };
    let l = o.resolve().unwrap();
    assert_eq!(
        (
            l.parallel.tp,
            l.parallel.ep,
            l.parallel.pp,
            l.experts.redundant
        ),
        (2, 4, 1, 4)
    );
    let d = Layout::default();
    assert_eq!(
        (d.parallel.tp, d.parallel.ep, d.parallel.pp, d.world()),
        (1, 1, 1, 1)
    );
}

#[test]
fn to_toml_reads_back_to_the_same_layout() {
    for file in [
        "deepseek-v3-pp2-ep8.toml",
        "tiny-ep4-redundant4-scrambled.toml",
        "mixtral-8x7b-ep8.toml",
    ] {
        let l = layout(file);
        let back = Layout::from_toml(&l.to_toml(), Path::new("roundtrip.toml")).unwrap();
        assert_eq!(back, l, "{file}");
    }
}

#[test]
fn pipeline_stages_cover_the_layers() {
    let l = layout("deepseek-v3-pp2-ep8.toml");
    assert_eq!(l.stage_layers(61), vec![0..31, 31..61]);
    let l = layout("tiny-pp2.toml");
    assert_eq!(l.stage_layers(3), vec![0..2, 2..3]);
    assert_eq!(l.grid().unwrap().world(), 2);
}

#[test]
fn memory_splits_the_way_the_layout_says() {
    let dt = Dtypes::default();
    let cfg = model("configs/models/Mixtral-8x7B-v0.1");
    let one = stage_weights(&cfg, &Layout::default(), 0, dt);
    let ep8 = stage_weights(&cfg, &layout("mixtral-8x7b-ep8.toml"), 0, dt);
    assert_eq!(ep8.experts * 8, one.experts);
    assert_eq!(
        ep8.attention * 8,
        one.attention,
        "32/8 q heads and 8/8 kv heads per rank"
    );
    assert_eq!((ep8.embedding, ep8.lm_head), (one.embedding, one.lm_head));
    // GQA KV: 2 x 1 KV head x 128 dims x 32 layers x 2 bytes per token per rank.
    assert_eq!(
        kv_bytes_per_token(&cfg, &layout("mixtral-8x7b-ep8.toml"), 0, dt),
        2 * 128 * 32 * 2
    );
    // MLA KV: (512 + 64) x layers x 2 bytes, not split by TP.
    let v3 = model("configs/models/DeepSeek-V3");
    let pp2 = layout("deepseek-v3-pp2-ep8.toml");
    assert_eq!(kv_bytes_per_token(&v3, &pp2, 0, dt), 576 * 31 * 2);
    let s0 = stage_weights(&v3, &pp2, 0, dt);
    let s1 = stage_weights(&v3, &pp2, 1, dt);
    assert!(s0.embedding > 0 && s0.lm_head == 0 && s1.embedding == 0 && s1.lm_head > 0);
    assert!(
        s0.dense_mlp > 0 && s1.dense_mlp == 0,
        "the first 3 layers are dense"
    );
}
