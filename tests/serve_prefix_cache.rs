//! Automatic prefix caching through the engine thread: prompts that start with tokens an earlier
//! request computed share its cache blocks and answer exactly as a server without the cache
//! does (tokens and log-probabilities, bit for bit, on the CPU); the cached-token counts are the
//! whole blocks of the common prefix, short of the last prompt token; preemption and a pool too
//! small to keep anything leave answers unchanged and no block held.

#[path = "serve/helpers.rs"]
mod helpers;

use futures_util::future::join_all;
use helpers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::scheduler::{Event, GenerationRequest, Limits, SamplingConfig};
use switchyard::server::{local_state, AppState, ServeOptions};

/// Generated ids with their log-probability bits and top alternatives.
type Answer = Vec<(u32, u32, Vec<(u32, u32)>)>;

fn server(prefix_cache: bool, kv_blocks: Option<usize>, limits: Limits) -> Arc<AppState> {
    let opts = ServeOptions {
        limits,
        kv_blocks,
        kv_block_size: 16,
        prefix_cache,
        ..Default::default()
    };
    local_state(load(), &opts).expect("start the engine")
}

/// An answer and the prompt tokens the engine said it found cached.
async fn answer(s: &Arc<AppState>, prompt: &[u32], max_tokens: usize) -> (Answer, usize) {
    let sampling = SamplingConfig {
        max_tokens,
        ignore_eos: true,
        logprobs: Some(3),
        ..Default::default()
    };
    let req = GenerationRequest {
        prompt: prompt.to_vec(),
        sampling,
    };
    let mut rx = s.engine.submit(req).unwrap();
    let (mut out, mut cached) = (Vec::new(), None);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Cached(n) => {
                assert!(
                    cached.is_none() && out.is_empty(),
                    "Cached sent once, first"
                );
                cached = Some(n);
            }
            Event::Token(t) => {
                let lp = t.logprob.expect("asked for logprobs");
                let top = lp.top.iter().map(|&(id, p)| (id, p.to_bits())).collect();
                out.push((t.id, lp.logprob.to_bits(), top));
            }
            Event::Finished(_) => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    (out, cached.expect("the engine says what it found cached"))
}

/// Waits for metric `name` to reach `want` (the engine counts a step just after answering it).
async fn metric_reaches(s: &Arc<AppState>, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = metric(&s.metrics().render(), name);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} = {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|t| (t * 37 + seed * 101) % 500 + 3)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefixes_answer_as_without_the_cache() {
    let roomy = Limits {
        max_num_seqs: 16,
        max_batched_tokens: 512,
    };
    let (cached, plain) = (server(true, None, roomy), server(false, None, roomy));
    let p = ids(40, 1);
    let (first, _) = answer(&plain, &p, 10).await;
    let generated: Vec<u32> = first.iter().map(|t| t.0).collect();
    let q = ids(32, 2);
    // (prompt, tokens found cached): the whole 16-token blocks of what an earlier request
    // computed (its prompt and all but its last generated token), short of the last prompt
    // token, whose logits pick the next one.
    let cases: Vec<(Vec<u32>, usize)> = vec![
        (p.clone(), 0),
        (p.clone(), 32),
        ([&p[..32], &ids(20, 3)[..]].concat(), 32),
        ([&p[..], &generated[..], &ids(5, 4)[..]].concat(), 48),
        (q.clone(), 0),
        (q.clone(), 16),
        (ids(40, 5), 0),
    ];
    let (mut hits, mut queries) = (0, 0);
    for (i, (prompt, hit)) in cases.iter().enumerate() {
        let (got, found) = answer(&cached, prompt, 10).await;
        let (want, none) = answer(&plain, prompt, 10).await;
        assert_eq!(got, want, "request {i} ({} tokens)", prompt.len());
        assert_eq!((found, none), (*hit, 0), "request {i}: tokens found cached");
        hits += hit;
        queries += prompt.len();
        metric_reaches(&cached, "switchyard_prefix_cache_hits_total", hits as f64).await;
        metric_reaches(
            &cached,
            "switchyard_prefix_cache_queries_total",
            queries as f64,
        )
        .await;
    }
    metric_reaches(&plain, "switchyard_prefix_cache_hits_total", 0.0).await;
    wait_for_idle_cache(&cached).await;
    assert!(cached.engine.kv_blocks_cached() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_and_a_small_pool_leave_answers_unchanged() {
    let loaded = load();
    let stem = ids(40, 6);
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| [&stem[..], &ids(3 + 5 * i, 7 + i as u32)[..]].concat())
        .collect();
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| solo_greedy(&loaded, p, 10))
        .collect();
    // 8 blocks of 16 for six sequences of 43 to 68 tokens and 10 new ones (up to 5 blocks
    // each), 8 tokens a step: sequences share the stem's blocks as they are computed, are
    // preempted, and cached blocks are evicted while others still share them.
    let tight = Limits {
        max_num_seqs: 8,
        max_batched_tokens: 8,
    };
    let s = server(true, Some(8), tight);
    for round in 0..2 {
        let got = join_all(prompts.iter().map(|p| {
            let s = s.clone();
            let p = p.clone();
            async move { answer(&s, &p, 10).await }
        }))
        .await;
        for (i, (g, w)) in got.iter().zip(&solo).enumerate() {
            let tokens: Vec<u32> = g.0.iter().map(|t| t.0).collect();
            assert_eq!(&tokens, w, "round {round}, prompt {i}");
        }
        wait_for_idle_cache(&s).await;
    }
    let m = s.metrics().render();
    assert!(
        metric(&m, "switchyard_preemptions_total") > 0.0,
        "no preemption: {m}"
    );
    assert!(metric(&m, "switchyard_prefix_cache_hits_total") > 0.0);
    assert!(s.engine.kv_blocks_cached() <= 8);
}

/// Data-parallel attention (two groups, each caching its own sequences): a sequence that shares
/// cached blocks must be served by the group that computed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_blocks_stay_with_their_attention_group() {
    let flags = switchyard::layout::LayoutOverrides {
        ep: Some(4),
        tp: Some(2),
        ..Default::default()
    };
    let limits = Limits {
        max_num_seqs: 8,
        max_batched_tokens: 64,
    };
    let s = state_on_layout(flags.resolve().unwrap(), limits);
    let loaded = load();
    let stems = [ids(36, 8), ids(36, 9)];
    let prompts: Vec<Vec<u32>> = (0..8)
        .map(|i| [&stems[i % 2][..], &ids(2 + i, 10 + i as u32)[..]].concat())
        .collect();
    for round in 0..2 {
        let got = join_all(prompts.iter().map(|p| {
            let s = s.clone();
            let p = p.clone();
            async move { answer(&s, &p, 8).await }
        }))
        .await;
        for (i, (g, p)) in got.iter().zip(&prompts).enumerate() {
            let tokens: Vec<u32> = g.0.iter().map(|t| t.0).collect();
            assert_eq!(
                tokens,
                solo_greedy(&loaded, p, 8),
                "round {round}, prompt {i}"
            );
        }
    }
    wait_for_idle_cache(&s).await;
    assert!(metric(&s.metrics().render(), "switchyard_prefix_cache_hits_total") >= 8.0 * 32.0);
}

/// OpenAI's `usage.prompt_tokens_details.cached_tokens`, whole and streamed, each prompt once
/// whatever `n` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_the_cached_prompt_tokens() {
    use serde_json::{json, Value};
    let s = state();
    let p = ids(40, 11);
    let body = |extra: Value| {
        let mut b = json!({"prompt": p, "max_tokens": 4, "temperature": 0, "ignore_eos": true});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].clone();
    let (_, first) = post(&s, "/v1/completions", &body(json!({}))).await;
    assert_eq!(cached(&first), 0, "{first}");
    let (_, again) = post(&s, "/v1/completions", &body(json!({"n": 2}))).await;
    assert_eq!(cached(&again), 32, "{again}");
    let stream = body(json!({"stream_options": {"include_usage": true}}));
    let last = post_stream(&s, "/v1/completions", &stream)
        .await
        .into_iter()
        .filter(|v| !v["usage"].is_null())
        .last()
        .expect("a usage chunk");
    assert_eq!(cached(&last), 32, "{last}");
}
