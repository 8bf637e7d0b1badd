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

#[test]
fn gpu_ranks_pick_their_gpus_and_how_they_talk() {
    use switchyard::parallel::{GpuComm, RankDevices};
    let gpus = |ids: &[usize], comm| RankDevices::Gpus {
        ids: ids.to_vec(),
        comm,
    };
    // Ranks beyond the GPU count share them, round robin.
    let d = gpus(&[0, 2], GpuComm::Auto);
    let placed: Vec<Option<usize>> = (0..5).map(|r| d.gpu(r)).collect();
    assert_eq!(placed, [Some(0), Some(2), Some(0), Some(2), Some(0)]);
    assert_eq!(RankDevices::Cpu.gpu(0), None);
    // Ranks sharing a GPU never get NCCL (it refuses them): copies in one process, the host
    // between nodes.
    let shared = gpus(&[0], GpuComm::Auto);
    assert_eq!(shared.resolve(2, true).unwrap(), GpuComm::Copies);
    assert_eq!(shared.resolve(2, false).unwrap(), GpuComm::Host);
    let err = gpus(&[0], GpuComm::Nccl)
        .resolve(2, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NCCL needs a GPU per rank")
            || err.contains("NCCL (libnccl.so) was not found")
            || err.contains("no CUDA support"),
        "{err}"
    );
    let err = gpus(&[0, 1], GpuComm::Copies)
        .resolve(2, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device copies connect the ranks of one process"),
        "{err}"
    );
    assert_eq!(
        gpus(&[0], GpuComm::Host).resolve(4, false).unwrap(),
        GpuComm::Host
    );
    // What the rendezvous compares between nodes.
    assert_eq!(RankDevices::Cpu.describe(2, false).unwrap(), "cpu");
    assert_eq!(
        gpus(&[0], GpuComm::Host).describe(2, false).unwrap(),
        "cuda, host"
    );
}
