//! The engine loop through the HTTP app: greedy answers equal the single-sequence engine's
//! whatever else is batched (chunked prefill, preemption), streaming, cancellation frees
//! every block, and the expert counters count exactly the routing done.

#[path = "serve/helpers.rs"]
mod helpers;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::future::join_all;
use helpers::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use switchyard::scheduler::{Event, GenerationRequest, SamplingConfig};
use tower::ServiceExt;

fn prompts() -> Vec<Vec<u32>> {
    (0..12)
        .map(|i| {
            (0..(3 + 7 * i))
                .map(|t| ((t * 31 + i * 17) % 500 + 3) as u32)
                .collect()
        })
        .collect()
}

/// Greedy tokens through the engine thread (the scheduler batches them with everything else).
async fn greedy_tokens(
    s: &Arc<switchyard::server::AppState>,
    prompt: &[u32],
    max_tokens: usize,
) -> Vec<u32> {
    let sampling = SamplingConfig {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let mut rx = s
        .engine
        .submit(GenerationRequest {
            prompt: prompt.to_vec(),
            sampling,
        })
        .unwrap();
    let mut tokens = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Cached(_) => {}
            Event::Token(t) => tokens.push(t.id),
            Event::Finished(_) => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    tokens
}

/// Greedy text through the HTTP app.
async fn greedy_text(
    s: &Arc<switchyard::server::AppState>,
    prompt: &[u32],
    max_tokens: usize,
) -> String {
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    let (status, v) = post(s, "/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answers_do_not_depend_on_the_batch() {
    let loaded = load();
    let solo: Vec<Vec<u32>> = prompts()
        .iter()
        .map(|p| solo_greedy(&loaded, p, 10))
        .collect();
    // A small token budget forces chunked prefill mixed with decodes; a small cache forces
    // preemption by recompute.
    for (seqs, budget, blocks) in [(16, 16, None), (8, 8, Some(14)), (64, 512, None)] {
        let s = state_with(seqs, budget, blocks, None);
        let got = join_all(prompts().iter().map(|p| {
            let s = s.clone();
            let p = p.clone();
            async move { greedy_tokens(&s, &p, 10).await }
        }))
        .await;
        for (i, (g, w)) in got.iter().zip(&solo).enumerate() {
            assert_eq!(
                g, w,
                "prompt {i} with max_num_seqs={seqs} budget={budget} blocks={blocks:?}"
            );
        }
        let texts = join_all(prompts().iter().map(|p| {
            let s = s.clone();
            let p = p.clone();
            async move { greedy_text(&s, &p, 10).await }
        }))
        .await;
        let tok = loaded.tokenizer.as_ref().unwrap();
        for (i, (g, w)) in texts.iter().zip(&solo).enumerate() {
            assert_eq!(g, &tok.decode(w).unwrap(), "text of prompt {i} over HTTP");
        }
        wait_for_idle_cache(&s).await;
    }
}

#[tokio::test]
async fn streaming_sends_the_same_text_then_done() {
    let s = state();
    let body = json!({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (_, whole) = post(&s, "/v1/completions", &body).await;
    let mut sbody = body.clone();
    sbody["stream_options"] = json!({"include_usage": true});
    let mut streamed = String::new();
    let mut usage = Value::Null;
    for v in post_stream(&s, "/v1/completions", &sbody).await {
        if let Some(c) = v["choices"].as_array().unwrap().first() {
            streamed.push_str(c["text"].as_str().unwrap());
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(usage["completion_tokens"], 12);

    let chat = json!({"messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 5, "temperature": 0, "stream": true, "ignore_eos": true});
    let (status, text) = call_raw(
        &s,
        "POST",
        "/v1/chat/completions",
        chat.to_string().into_bytes(),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first: Value = serde_json::from_str(
        text.split("\n\n")
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_is_cancelled_and_frees_its_blocks() {
    let s = state();
    let body = json!({"prompt": [1, 2, 3, 4], "max_tokens": 200, "temperature": 0, "ignore_eos": true, "stream": true});
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(&s).oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert!(frame.data_ref().is_some());
    assert!(
        s.engine.kv_blocks_used() > 0,
        "the running sequence holds blocks"
    );
    drop(body);
    wait_for_idle_cache(&s).await;
    let m = s.metrics().render();
    assert_eq!(
        metric(&m, "switchyard_requests_total{outcome=\"cancelled\"}"),
        1.0,
        "{m}"
    );
    assert!(
        metric(&m, "switchyard_generation_tokens_total") < 200.0,
        "generation stopped early"
    );
}

#[tokio::test]
async fn expert_counters_grow_by_prompt_plus_generated_minus_one_times_top_k() {
    let s = state();
    let (prompt, gen, top_k, layers) = (9usize, 7usize, 2.0, 2);
    let body = json!({"prompt": (1..=prompt as u32).collect::<Vec<_>>(), "max_tokens": gen, "temperature": 0, "ignore_eos": true});
    let (status, v) = post(&s, "/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let m = s.metrics().render();
    for layer in 0..layers {
        let total: f64 = (0..8)
            .map(|e| {
                metric(
                    &m,
                    &format!("switchyard_expert_tokens_total{{layer=\"{layer}\",expert=\"{e}\"}}"),
                )
            })
            .sum();
        assert_eq!(
            total,
            (prompt + gen - 1) as f64 * top_k,
            "layer {layer}:\n{m}"
        );
    }
    assert_eq!(
        metric(&m, "switchyard_rank_tokens_total{rank=\"0\"}"),
        ((prompt + gen - 1) * 2 * layers) as f64
    );
    wait_for_idle_cache(&s).await;
    assert!(
        m.contains("switchyard_time_to_first_token_seconds_bucket"),
        "{m}"
    );
}

#[tokio::test]
async fn the_chat_template_renders_as_transformers_did() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("golden.json")).unwrap())
            .unwrap();
    let chat = &golden["chat"];
    let tmpl = switchyard::server::chat_template::ChatTemplate::from_dir(&fixture())
        .unwrap()
        .unwrap();
    let messages: Vec<_> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let text = tmpl.render(&messages).unwrap();
    assert_eq!(text, chat["rendered"].as_str().unwrap());
    let ids = load().tokenizer.unwrap().encode_with(&text, false).unwrap();
    let want: Vec<u32> = serde_json::from_value(chat["ids"].clone()).unwrap();
    assert_eq!(ids, want);
    let s = state();
    let (status, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": chat["messages"], "max_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], want.len());
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
}

#[tokio::test]
async fn n_and_batched_prompts_give_every_choice() {
    let s = state();
    let body = json!({"prompt": ["hello", [5, 6, 7]], "n": 2, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "stop": ["zzz"]});
    let (status, v) = post(&s, "/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(
        choices[0]["text"], choices[1]["text"],
        "greedy choices of one prompt agree"
    );
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let (_, models) = call_raw(&s, "GET", "/v1/models", Vec::new(), &[]).await;
    assert!(models.contains("\"mixtral\""), "{models}");
}

/// `logit_bias` moves the greedy pick as the unbiased log-probabilities say it must: -100 on
/// the best first token makes the runner-up first, +100 on a token makes every pick that
/// token; over HTTP too, with the neutral values of the fields switchyard refuses.
#[tokio::test]
async fn logit_bias_moves_the_greedy_pick() {
    let s = state();
    let prompt = vec![5, 17, 300, 42];
    let run = |logit_bias: Vec<(u32, f32)>| {
        let sampling = SamplingConfig {
            max_tokens: 4,
            ignore_eos: true,
            logprobs: Some(2),
            logit_bias,
            ..Default::default()
        };
        let rx = s.engine.submit(GenerationRequest {
            prompt: prompt.clone(),
            sampling,
        });
        async move {
            let mut rx = rx.unwrap();
            let mut picks = Vec::new();
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Token(t) => picks.push((t.id, t.logprob.unwrap().top)),
                    Event::Finished(_) => break,
                    Event::Failed(e) => panic!("{e}"),
                    Event::Cached(_) => {}
                }
            }
            picks
        }
    };
    let plain = run(Vec::new()).await;
    let (best, second) = (plain[0].1[0].0, plain[0].1[1].0);
    assert_eq!(plain[0].0, best);
    let banned = run(vec![(best, -100.0)]).await;
    assert_eq!(banned[0].0, second, "with {best} banned, {second} leads");
    let forced = run(vec![(77, 100.0)]).await;
    assert!(forced.iter().all(|p| p.0 == 77), "{forced:?}");

    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": true,
                "logit_bias": {"77": 100}, "response_format": {"type": "text"}, "tools": [],
                "tool_choice": "none", "best_of": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let tok = load().tokenizer.unwrap();
    assert_eq!(v["choices"][0]["text"], tok.decode(&[77; 4]).unwrap());
}
