//! Simulator: determinism, JSON report, trace parsing.

use switchyard_experts::sim::{parse_trace_steps, zipf_loads};
use switchyard_experts::{parse_trace, simulate};

#[test]
fn zipf_is_deterministic_and_permuted() {
    let a = zipf_loads(16, 1.2, 3, 42);
    assert_eq!(a, zipf_loads(16, 1.2, 3, 42));
    assert_ne!(a[0], a[1]);
    let mut sorted = a[0].clone();
    sorted.sort_by(|x, y| y.total_cmp(x));
    assert_eq!(sorted[0], 1.0);
}

#[test]
fn simulate_reports_and_serialises() {
    let loads = zipf_loads(64, 1.2, 4, 1);
    let r = simulate(&loads, 8, 2, 8).unwrap();
    assert_eq!(r.imbalance_after.len(), 4);
    assert!(r.after_max <= 1.10 && r.before_max >= 2.0, "{r:?}");
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"after_max\""));
    assert!(simulate(&loads, 8, 3, 8)
        .unwrap_err()
        .to_string()
        .contains("nodes 3"));
}

#[test]
fn trace_parses_and_sums() {
    let text = "{\"step\": 0, \"layers\": [[1, 2], [3, 4]]}\n\n{\"step\": 1, \"layers\": [[10, 0], [0, 1]]}\n";
    assert_eq!(
        parse_trace(text).unwrap(),
        vec![vec![11.0, 2.0], vec![3.0, 5.0]]
    );
    assert_eq!(parse_trace_steps(text).unwrap()[1].step, 1);
    let bad = "{\"step\": 0, \"layers\": [[1, 2]]}\n{\"step\": 1, \"layers\": [[1]]}";
    assert!(parse_trace(bad).unwrap_err().to_string().contains("line 2"));
    assert!(parse_trace("not json")
        .unwrap_err()
        .to_string()
        .contains("line 1"));
    assert!(parse_trace("").unwrap().is_empty());
}
