//! Serving on expert-parallel ranks with live rebalancing: answers stay the single-rank
//! greedy answers while hot experts get replicas, and /metrics shows the replicas, the
//! rebalances and the bytes migrated.

#[path = "serve/helpers.rs"]
mod helpers;

use helpers::*;
use serde_json::json;
use switchyard::layout::LayoutOverrides;
use switchyard::scheduler::Limits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_while_serving_keeps_answers_and_shows_replicas() {
    let flags = LayoutOverrides {
        ep: Some(4),
        redundant: Some(4),
        ..Default::default()
    };
    let mut layout = flags.resolve().unwrap();
    layout.experts.rebalance_every = 2;
    layout.experts.window = 8;
    let limits = Limits {
        max_num_seqs: 8,
        max_batched_tokens: 256,
    };
    let state = state_on_layout(layout, limits);
    let loaded = load();
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| (0..9).map(|j| (i * 37 + j * 11) % 500 + 3).collect())
        .collect();
    let requests = prompts.iter().map(|p| {
        let state = state.clone();
        let body = json!({"model": "mixtral", "prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        async move { post(&state, "/v1/completions", &body).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    for (p, (status, body)) in prompts.iter().zip(answers) {
        assert!(status.is_success(), "{body}");
        let want = tokenizer.decode(&solo_greedy(&loaded, p, 12)).unwrap();
        assert_eq!(body["choices"][0]["text"].as_str().unwrap(), want);
    }
    let (_, text) = call_raw(&state, "GET", "/metrics", Vec::new(), &[]).await;
    assert!(
        metric(&text, "switchyard_rebalances_total") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "switchyard_expert_bytes_migrated_total") > 0.0);
    let replicas: f64 = (0..8)
        .map(|e| {
            metric(
                &text,
                &format!("switchyard_expert_replicas{{layer=\"0\",expert=\"{e}\"}}"),
            )
        })
        .sum();
    assert_eq!(replicas, 12.0, "8 experts + 4 redundant slots");
    assert!(
        text.contains("switchyard_rebalance_imbalance{layer=\"0\",when=\"after\"}"),
        "{text}"
    );
    let (_, load) = call_raw(&state, "GET", "/api/expert-load", Vec::new(), &[]).await;
    let load: serde_json::Value = serde_json::from_str(&load).unwrap();
    let reps: u64 = load["load"]["replicas"][0]
        .as_array()
        .unwrap_or_else(|| panic!("{load}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(reps, 12, "the dashboard's data shows every replica: {load}");
}
