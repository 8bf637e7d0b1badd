//! Shared helpers of the serving tests: a server over a tiny fixture, in-process requests
//! (tower oneshot, no socket), solo greedy generation to compare with.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::engine::{Engine, GenerateOptions};
use switchyard::layout::Layout;
use switchyard::model::{LoadedModel, ModelSource};
use switchyard::parallel::{build_executor, ParallelPlan};
use switchyard::scheduler::Limits;
use switchyard::server::{app, local_state, state_over, AppState, ServeOptions};
use tower::ServiceExt;

/// The tiny Mixtral fixture (2 layers, 8 experts, top-2, vocab 512, context 256).
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mixtral")
}

/// Loads the fixture.
pub fn load() -> LoadedModel {
    ModelSource {
        dir: fixture(),
        random_weights: None,
    }
    .load()
    .expect("load the fixture")
}

/// Server state over the fixture with these limits and KV blocks.
pub fn state_with(
    max_num_seqs: usize,
    max_batched_tokens: usize,
    kv_blocks: Option<usize>,
    api_key: Option<&str>,
) -> Arc<AppState> {
    let opts = ServeOptions {
        limits: Limits {
            max_num_seqs,
            max_batched_tokens,
        },
        kv_blocks,
        kv_block_size: 16,
        api_key: api_key.map(str::to_string),
        ..Default::default()
    };
    local_state(load(), &opts).expect("start the engine")
}

/// Server state over the fixture on the in-process ranks of `layout` (64 cached tokens a rank
/// in blocks of 16).
pub fn state_on_layout(layout: Layout, limits: Limits) -> Arc<AppState> {
    let plan = ParallelPlan::from_layout(layout).expect("a valid layout");
    let source = ModelSource {
        dir: fixture(),
        random_weights: None,
    };
    let executor = build_executor(&source, &plan, 64, 16).expect("the ranks load");
    let opts = ServeOptions {
        limits,
        kv_block_size: 16,
        ..Default::default()
    };
    state_over(executor, load().tokenizer, &fixture(), &opts).expect("start the engine")
}

/// Server state with roomy defaults.
pub fn state() -> Arc<AppState> {
    state_with(64, 512, None, None)
}

/// Sends one request to the app; returns the status and the body text.
pub async fn call_raw(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app(state.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// POSTs JSON; returns the status and the parsed body (Null when it is not JSON).
pub async fn post(state: &Arc<AppState>, path: &str, body: &Value) -> (StatusCode, Value) {
    let (s, text) = call_raw(state, "POST", path, body.to_string().into_bytes(), &[]).await;
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The router over the state (for tests that hold the response body).
pub fn router(state: &Arc<AppState>) -> Router {
    app(state.clone())
}

/// Greedy tokens of `prompt` generated alone by the single-sequence engine.
pub fn solo_greedy(loaded: &LoadedModel, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut engine = Engine::new(loaded.model.clone(), prompt.len() + max_tokens, 16);
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    };
    engine.generate(prompt, &opts).expect("generate").tokens
}

/// POSTs `body` with `stream: true` and returns the server-sent chunks, parsed, after checking
/// the status and that `data: [DONE]` ends the stream.
pub async fn post_stream(state: &Arc<AppState>, path: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = Value::Bool(true);
    let (status, text) = call_raw(state, "POST", path, body.to_string().into_bytes(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert_eq!(
        events.last().map(|e| e.trim()),
        Some("data: [DONE]"),
        "{text}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("an SSE data line")).unwrap())
        .collect()
}

/// Waits until the engine holds no KV block (or panics after 10 s).
pub async fn wait_for_idle_cache(state: &Arc<AppState>) {
    let start = Instant::now();
    while state.engine.kv_blocks_used() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "KV blocks still used: {}",
            state.engine.kv_blocks_used()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric line `name{labels} value` in Prometheus text (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}
