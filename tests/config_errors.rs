//! Bad config.json files get errors that name the file, the field and what would fit.

use std::path::Path;
use switchyard::config::{ConfigError, Fp8Scales, ModelConfig, RopeScaling};

fn parse(json: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_json(json, Path::new("/models/x/config.json"))
}

const LLAMA: &str = r#"{"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let e = parse(r#"{"model_type": "gpt2", "hidden_size": 8}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/models/x/config.json") && e.contains("\"gpt2\"") && e.contains("mixtral"),
        "{e}"
    );
}

#[test]
fn missing_field_is_named() {
    let e = parse(r#"{"model_type": "mixtral", "vocab_size": 10, "num_hidden_layers": 2, "num_attention_heads": 4}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing field `hidden_size`") && e.contains("mixtral"),
        "{e}"
    );
}

#[test]
fn wrong_type_and_bad_json_name_the_file() {
    let e = parse(r#"{"model_type": "llama", "hidden_size": "big"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/models/x/config.json") && e.contains("invalid type"),
        "{e}"
    );
    let e = parse("{not json").unwrap_err().to_string();
    assert!(e.contains("/models/x/config.json"), "{e}");
}

#[test]
fn kv_heads_must_divide_heads() {
    let json = LLAMA.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    let e = parse(&format!("{json}}}")).unwrap_err().to_string();
    assert!(
        e.contains("num_key_value_heads") && e.contains("= 3") && e.contains("(4)"),
        "{e}"
    );
}

#[test]
fn unsupported_rope_and_activation_are_refused() {
    let e = parse(&format!(
        "{LLAMA}, \"rope_scaling\": {{\"rope_type\": \"longrope\", \"factor\": 2}}}}"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("longrope"), "{e}");
    let e = parse(&format!("{LLAMA}, \"hidden_act\": \"gelu\"}}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
}

#[test]
fn hub_and_transformers5_rope_forms_agree() {
    let hub = parse(&format!(
        "{LLAMA}, \"rope_theta\": 500000.0, \"rope_scaling\": {{\"type\": \"linear\", \"factor\": 2.0}}}}"
    ))
    .unwrap();
    let t5 = parse(&format!(
        "{LLAMA}, \"rope_parameters\": {{\"rope_type\": \"linear\", \"rope_theta\": 500000.0, \"factor\": 2.0}}}}"
    ))
    .unwrap();
    assert_eq!(hub.rope, t5.rope);
    assert_eq!(hub.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(hub.rope.theta, 500000.0);
}

#[test]
fn missing_optional_fields_take_hugging_face_defaults() {
    let c = parse(
        r#"{"model_type": "mixtral", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4}"#,
    )
    .unwrap();
    let moe = c.moe.unwrap();
    assert_eq!((moe.n_experts, moe.router.top_k), (8, 2));
    assert_eq!(c.rope.theta, 1e6);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.num_kv_heads, 4, "kv heads default to heads");
    assert_eq!(c.head_dim, 16);
}

#[test]
fn qwen_sparse_layers_follow_step_and_mlp_only_layers() {
    let c = parse(r#"{"model_type": "qwen2_moe", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_experts": 4, "num_experts_per_tok": 2,
        "decoder_sparse_step": 2, "mlp_only_layers": [3]}"#)
    .unwrap();
    assert_eq!(
        c.moe.unwrap().sparse_layers,
        vec![false, true, false, false, false, true]
    );
}

#[test]
fn quantization_other_than_fp8_is_named() {
    let with = |q: &str| parse(&format!("{LLAMA}, \"quantization_config\": {q}}}"));
    let ok = with(r#"{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 64]}"#);
    let blocks = switchyard::config::BlockFp8 {
        rows: 128,
        cols: 64,
    };
    assert_eq!(ok.unwrap().quantization, Some(Fp8Scales::Blocks(blocks)));
    let per_tensor = with(r#"{"quant_method": "fp8", "activation_scheme": "static"}"#);
    assert_eq!(per_tensor.unwrap().quantization, Some(Fp8Scales::PerTensor));
    for (q, parts) in [
        (
            r#"{"quant_method": "awq", "bits": 4}"#,
            &["quant_method", "\"awq\"", "fp8"][..],
        ),
        (r#"{"bits": 4}"#, &["quant_method", "null"][..]),
        (
            r#"{"quant_method": "fp8", "fmt": "e5m2"}"#,
            &["quantization_config.fmt", "e5m2", "e4m3"][..],
        ),
        (
            r#"{"quant_method": "fp8", "weight_block_size": [128]}"#,
            &["weight_block_size", "[128]", "two positive"][..],
        ),
        (
            r#"{"quant_method": "fp8", "weight_block_size": [0, 128]}"#,
            &["weight_block_size", "[0,128]"][..],
        ),
        ("[1]", &["quantization_config", "object"][..]),
    ] {
        let e = with(q).unwrap_err().to_string();
        assert!(e.contains("/models/x/config.json"), "{e}");
        for p in parts {
            assert!(e.contains(p), "{q}: {e:?} lacks {p:?}");
        }
    }
}
