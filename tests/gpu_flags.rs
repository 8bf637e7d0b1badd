//! The GPU-rank flags refuse what cannot work with a clear error, in any build: `--gpus` and
//! `--gpu-comm` without `--device cuda`, and (in a build without CUDA) GPU ranks at all.

mod common;

use common::*;
use std::process::Command;

fn switchyard(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn gpu_flags_need_the_cuda_device() {
    let dir = fixture_dir("mixtral");
    let d = dir.to_str().unwrap();
    let (ok, err) = switchyard(&["generate", "--model", d, "--tokens", "1", "--gpus", "0"]);
    assert!(!ok && err.contains("--gpus needs --device cuda"), "{err}");
    let (ok, err) = switchyard(&[
        "generate",
        "--model",
        d,
        "--tokens",
        "1",
        "--gpu-comm",
        "nccl",
    ]);
    assert!(
        !ok && err.contains("--gpu-comm needs --device cuda"),
        "{err}"
    );
    let (ok, err) = switchyard(&[
        "generate",
        "--model",
        d,
        "--tokens",
        "1",
        "--device",
        "cuda",
        "--gpu-comm",
        "copies",
        "--nodes",
        "2",
        "--rendezvous",
        "127.0.0.1:1",
        "--ep",
        "2",
    ]);
    assert!(!ok, "{err}");
    #[cfg(feature = "cuda")]
    let said = "device copies connect the ranks of one process";
    #[cfg(not(feature = "cuda"))]
    let said = "no CUDA support";
    // Without a GPU the device itself is the first thing refused.
    assert!(
        err.contains(said) || err.contains("CUDA") || err.contains("GPU"),
        "{err}"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_ranks_in_a_build_without_cuda_say_how_to_get_them() {
    let dir = fixture_dir("mixtral");
    let (ok, err) = switchyard(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        "1",
        "--device",
        "cuda",
        "--ep",
        "2",
    ]);
    assert!(!ok && err.contains("--features cuda"), "{err}");
}
