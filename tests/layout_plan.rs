//! `switchyard plan`: per-rank memory and traffic of a layout, and `--recommend`.

use serde_json::Value;
use std::process::Command;

fn plan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("plan")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn plan_json_reports_memory_kv_and_all_to_all() {
    let (ok, out, err) = plan(&[
        "--model",
        "configs/models/Mixtral-8x7B-v0.1",
        "--layout",
        "configs/mixtral-8x7b-ep8.toml",
        "--batch-tokens",
        "1000",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let p = &v["plan"];
    assert_eq!(p["world"], 8);
    let stage = &p["stages"][0];
    assert!(stage["weight_bytes"].as_u64().unwrap() > 12_000_000_000);
    assert_eq!(stage["kv_bytes_per_token"], 2 * 128 * 32 * 2);
    assert!(stage["kv_tokens_per_rank"].as_u64().unwrap() > 1_000_000);
    // One expert a rank: a token's two experts are on two ranks, 7/8 x 2 off-rank, so dispatch
    // (4096 x 2 bytes a row, plus a 4-byte index a pair) and combine (a row a pair) both move
    // top-2 x 7/8 rows.
    let a2a = &p["all_to_all"];
    let per_layer = 2.0 * 0.875 * (4096.0 * 2.0 + 4.0 + 4096.0 * 2.0);
    let got = a2a["bytes_per_token_layer"].as_f64().unwrap();
    assert!(
        (got - per_layer).abs() < 1e-9 * per_layer,
        "{got} vs {per_layer}"
    );
    let step = a2a["bytes_per_step"].as_f64().unwrap();
    assert!(
        (step - per_layer * 32.0 * 1000.0).abs() < 1e-9 * step,
        "{step}"
    );
    assert!((a2a["off_rank_per_token"].as_f64().unwrap() - 1.75).abs() < 1e-12);
    assert!(v["error"].is_null());
}

#[test]
fn plan_text_and_overrides() {
    let (ok, out, err) = plan(&[
        "--model",
        "configs/models/Qwen3-30B-A3B",
        "--tp",
        "4",
        "--gpu-mem",
        "80",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("on 4 ranks = pp 1 x ep 4 (tp 4 attention"),
        "{out}"
    );
    assert!(out.contains("All-to-All"), "{out}");
}

#[test]
fn plan_fails_with_the_layout_message() {
    let (ok, _, err) = plan(&["--model", "configs/models/Mixtral-8x7B-v0.1", "--tp", "3"]);
    assert!(!ok);
    assert!(
        err.contains("tp 3 does not divide num_attention_heads 32"),
        "{err}"
    );
    let (ok, out, err) = plan(&[
        "--model",
        "configs/models/DeepSeek-V3",
        "--ep",
        "8",
        "--gpu-mem",
        "80",
    ]);
    assert!(!ok);
    assert!(
        out.contains("stage 0"),
        "the plan is printed before the error: {out}"
    );
    assert!(err.contains("GB per rank"), "{err}");
}

fn recommend(model: &str, gpus: &str, mem: &str, nodes: &str) -> Value {
    let (ok, out, err) = plan(&[
        "--model",
        model,
        "--recommend",
        "--gpus",
        gpus,
        "--gpu-mem",
        mem,
        "--nodes",
        nodes,
        "--json",
    ]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn parallel(v: &Value) -> (i64, i64, i64) {
    let t: toml::Value = toml::from_str(v["layout"].as_str().unwrap()).unwrap();
    let p = &t["parallel"];
    (
        p["tp"].as_integer().unwrap(),
        p["ep"].as_integer().unwrap(),
        p["pp"].as_integer().unwrap(),
    )
}

#[test]
fn recommend_one_gpu_when_it_fits() {
    let v = recommend("configs/models/Qwen3-30B-A3B", "8", "141", "1");
    assert_eq!(parallel(&v), (1, 1, 1));
    assert!(
        v["reasons"].to_string().contains("fit one"),
        "{}",
        v["reasons"]
    );
}

#[test]
fn recommend_ep_first_inside_a_node() {
    let v = recommend("configs/models/Mixtral-8x22B-v0.1", "8", "80", "1");
    let (tp, ep, pp) = parallel(&v);
    assert_eq!((ep, pp), (8, 1), "{v}");
    assert_eq!(tp, 8, "GQA attention TP up to the 8 KV heads");
    let v = recommend("configs/models/DeepSeek-V2-Lite", "4", "24", "1");
    let (tp, ep, _) = parallel(&v);
    assert_eq!(
        (tp, ep),
        (1, 4),
        "MLA: data-parallel attention, half of each GPU left for KV; {v}"
    );
}

#[test]
fn recommend_across_nodes_ep_with_dp_attention_for_many_experts() {
    let v = recommend("configs/models/DeepSeek-V3", "16", "141", "2");
    assert_eq!(parallel(&v), (1, 16, 1), "{v}");
    assert!(v["reasons"].to_string().contains("data-parallel attention"));
    // Mixtral-8x22B (281 GB) on 2 nodes of 2 x 141 GB: only all four GPUs hold it.
    let v = recommend("configs/models/Mixtral-8x22B-v0.1", "4", "141", "2");
    let (_, ep, pp) = parallel(&v);
    assert_eq!(ep * pp, 4, "{v}");
}
