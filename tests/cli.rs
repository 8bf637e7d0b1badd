//! The command-line contract of ../shared/DESIGN.md, run as a user would: the real binary.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ids(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn score_json_prints_the_logits_of_every_position() {
    let g = golden("qwen3_moe");
    let dir = fixture_dir("qwen3_moe");
    let (ok, out, err) = switchyard(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &ids(&g.prompts[1]),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), g.prompts[1].len());
    let got: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let want: Vec<f32> = g.logits[1].iter().flatten().copied().collect();
    assert!(rel_l2(&got, &want) < 1e-3);
}

#[test]
fn generate_json_prints_new_tokens_and_text() {
    let g = golden("mixtral");
    let dir = fixture_dir("mixtral");
    let args = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &ids(&g.prompts[2]),
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ];
    let (ok, out, err) = switchyard(&args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let tokens: Vec<u32> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let n = decisive_prefix(&g.greedy[2]);
    assert_eq!(tokens[..n], g.greedy[2].tokens[..n]);
    assert!(v["text"].is_string());
}

#[test]
fn generate_takes_a_text_prompt_through_the_tokenizer() {
    let g = golden("mixtral");
    let text = g.text.unwrap();
    let dir = fixture_dir("mixtral");
    let by_text = switchyard(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        &text.prompt,
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    let by_ids = switchyard(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &ids(&text.ids),
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert!(by_text.0 && by_ids.0, "{} {}", by_text.2, by_ids.2);
    assert_eq!(by_text.1, by_ids.1);
}

#[test]
fn random_weights_need_only_a_config() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir("qwen2_moe").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let dir = tmp.path().to_str().unwrap();
    let run = |seed: &str| {
        switchyard(&[
            "generate",
            "--model",
            dir,
            "--random-weights",
            "--weights-seed",
            seed,
            "--tokens",
            "1,2,3",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--json",
        ])
    };
    let (a, b, c) = (run("1"), run("1"), run("2"));
    assert!(a.0, "{}", a.2);
    assert_eq!(a.1, b.1, "same seed, same model");
    assert_ne!(a.1, c.1, "another seed, another model");
}

#[test]
fn bad_inputs_fail_with_a_message_not_a_panic() {
    let dir = fixture_dir("llama_tied");
    let d = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["score", "--model", d, "--tokens", "1,99999"],
            "token id 99999 is outside the vocabulary (size 512)",
        ),
        (
            &["score", "--model", d, "--tokens", "1,x"],
            "\"x\" is not a token id",
        ),
        (
            &["score", "--model", "/nonexistent/model", "--tokens", "1"],
            "/nonexistent/model/config.json",
        ),
        (
            &["generate", "--model", d, "--prompt", "hi"],
            "tokenizer.json",
        ),
        (
            &[
                "generate",
                "--model",
                d,
                "--tokens",
                "1",
                "--max-tokens",
                "100000",
            ],
            "exceeds the context length 256",
        ),
    ];
    for (args, msg) in cases {
        let (ok, _, err) = switchyard(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn layout_flags_and_files_give_the_single_rank_answer() {
    let g = golden("deepseek_v3");
    let dir = fixture_dir("deepseek_v3");
    let d = dir.to_str().unwrap();
    let prompt = ids(&g.prompts[2]);
    let base = [
        "generate",
        "--model",
        d,
        "--tokens",
        &prompt,
        "--max-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ];
    let (ok, single, err) = switchyard(&base);
    assert!(ok, "{err}");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-tp2-ep4-pp2.toml");
    let layouts: [&[&str]; 3] = [
        &["--ep", "4"],
        &["--tp", "2", "--pp", "2"],
        &["--layout", file.to_str().unwrap()],
    ];
    for flags in layouts {
        let args: Vec<&str> = base.iter().copied().chain(flags.iter().copied()).collect();
        let (ok, out, err) = switchyard(&args);
        assert!(ok, "{flags:?}: {err}");
        assert_eq!(out, single, "{flags:?}");
    }
    let (ok, _, err) = switchyard(&["generate", "--model", d, "--tokens", "1", "--ep", "3"]);
    assert!(!ok && err.contains("ep 3"), "{err}");
}
