//! `switchyard rebalance-sim` as a user runs it: a Zipf(1.2) skew over 64 experts, 8 ranks and
//! 8 spare slots goes from an imbalance of at least 2 to at most 1.10, and a recorded routing
//! trace replays through the same planner.

use serde_json::Value;
use std::process::Command;
use switchyard::replication::RoutingRecorder;

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

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn zipf_skew_goes_from_at_least_2_to_at_most_1_10() {
    let args = [
        "rebalance-sim",
        "--zipf",
        "1.2",
        "--experts",
        "64",
        "--ranks",
        "8",
        "--redundant",
        "8",
        "--layers",
        "4",
        "--json",
    ];
    let (ok, out, err) = switchyard(&args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let (before, after) = (
        floats(&v["imbalance_before"]),
        floats(&v["imbalance_after"]),
    );
    assert_eq!(before.len(), 4);
    assert!(before.iter().all(|&b| b >= 2.0), "before {before:?}");
    assert!(after.iter().all(|&a| a <= 1.10), "after {after:?}");
    assert!(v["moved_slots"].as_u64().unwrap() > 0);
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["slots_per_rank"], 9);
}

#[test]
fn text_output_names_before_after_moves_and_time() {
    let args = [
        "rebalance-sim",
        "--zipf",
        "1.2",
        "--experts",
        "64",
        "--ranks",
        "8",
        "--redundant",
        "8",
        "--layers",
        "2",
        "--nodes",
        "2",
    ];
    let (ok, out, err) = switchyard(&args);
    assert!(ok, "{err}");
    for want in [
        "over 8 ranks (2 nodes)",
        "before  max",
        "after   max",
        "slots moved:",
        "algorithm:",
        "layer  before   after",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
}

#[test]
fn a_recorded_trace_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.jsonl");
    let mut rec = RoutingRecorder::create(&path).unwrap();
    // Two MoE layers (and a dense one) of 8 experts; expert 0 of layer 1 and expert 5 of
    // layer 3 are hot.
    for step in 0..10u64 {
        let hot = |h: usize| {
            (0..8)
                .map(|i| {
                    if i == h {
                        40
                    } else {
                        2 + (i as u64 + step) % 3
                    }
                })
                .collect::<Vec<u64>>()
        };
        rec.record(&[vec![], hot(0), vec![], hot(5)]).unwrap();
    }
    drop(rec);
    let (ok, out, err) = switchyard(&[
        "rebalance-sim",
        "--trace",
        path.to_str().unwrap(),
        "--ranks",
        "4",
        "--redundant",
        "4",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"], 2);
    assert_eq!(v["experts"], 8);
    let (before, after) = (
        floats(&v["imbalance_before"]),
        floats(&v["imbalance_after"]),
    );
    assert!(
        before.iter().zip(&after).all(|(b, a)| a < b),
        "{before:?} -> {after:?}"
    );
}

#[test]
fn missing_or_conflicting_sources_are_refused() {
    let (ok, _, err) = switchyard(&["rebalance-sim", "--ranks", "8"]);
    assert!(!ok && err.contains("--trace FILE or --zipf S"), "{err}");
    let (ok, _, err) = switchyard(&[
        "rebalance-sim",
        "--zipf",
        "1.2",
        "--experts",
        "8",
        "--layers",
        "1",
        "--ranks",
        "4",
        "--nodes",
        "3",
    ]);
    assert!(
        !ok && err.contains("nodes 3 does not divide ranks 4"),
        "{err}"
    );
    let (ok, _, err) = switchyard(&[
        "rebalance-sim",
        "--trace",
        "/nonexistent/trace.jsonl",
        "--ranks",
        "4",
    ]);
    assert!(!ok && err.contains("/nonexistent/trace.jsonl"), "{err}");
}
