//! Every class of bad request gets an OpenAI-shaped JSON error with a 4xx status, and the
//! server keeps answering good requests afterwards.

#[path = "serve/helpers.rs"]
mod helpers;

use axum::http::StatusCode;
use helpers::*;
use serde_json::{json, Value};

fn assert_openai_error(status: StatusCode, body: &str, want: StatusCode, needle: &str, case: &str) {
    assert_eq!(status, want, "{case}: {body}");
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {body}"));
    let err = &v["error"];
    assert!(
        err["message"].is_string() && err["type"].is_string(),
        "{case}: not OpenAI-shaped: {body}"
    );
    assert!(
        err["message"].as_str().unwrap().contains(needle),
        "{case}: {needle:?} not in {body}"
    );
}

#[tokio::test]
async fn every_bad_request_class_is_a_4xx_json_error() {
    let s = state();
    let long_prompt: Vec<u32> = vec![5; 300];
    let ok = |extra: Value| {
        let mut v = json!({"model": "mixtral", "prompt": "hello", "max_tokens": 2});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    };
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "/v1/completions",
            b"{\"prompt\": \"hi\",".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "wrong type",
            "/v1/completions",
            ok(json!({"max_tokens": "ten"})),
            StatusCode::BAD_REQUEST,
            "wrong type",
        ),
        (
            "wrong prompt type",
            "/v1/completions",
            ok(json!({"prompt": {"a": 1}})),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "empty prompt",
            "/v1/completions",
            ok(json!({"prompt": ""})),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "empty id list",
            "/v1/completions",
            ok(json!({"prompt": []})),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "missing prompt",
            "/v1/completions",
            json!({"model": "mixtral"}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            "id outside vocab",
            "/v1/completions",
            ok(json!({"prompt": [1, 512]})),
            StatusCode::BAD_REQUEST,
            "outside the vocabulary",
        ),
        (
            "negative id",
            "/v1/completions",
            ok(json!({"prompt": [1, -3]})),
            StatusCode::BAD_REQUEST,
            "token id",
        ),
        (
            "prompt past context",
            "/v1/completions",
            ok(json!({"prompt": long_prompt})),
            StatusCode::BAD_REQUEST,
            "context",
        ),
        (
            "max_tokens 0",
            "/v1/completions",
            ok(json!({"max_tokens": 0})),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            "max_tokens negative",
            "/v1/completions",
            ok(json!({"max_tokens": -5})),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            "max_tokens past context",
            "/v1/completions",
            ok(json!({"max_tokens": 1000})),
            StatusCode::BAD_REQUEST,
            "context",
        ),
        (
            "temperature < 0",
            "/v1/completions",
            ok(json!({"temperature": -0.5})),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            "top_p 0",
            "/v1/completions",
            ok(json!({"top_p": 0})),
            StatusCode::BAD_REQUEST,
            "top_p",
        ),
        (
            "top_p > 1",
            "/v1/completions",
            ok(json!({"top_p": 1.5})),
            StatusCode::BAD_REQUEST,
            "top_p",
        ),
        (
            "unknown model",
            "/v1/completions",
            ok(json!({"model": "gpt-17"})),
            StatusCode::NOT_FOUND,
            "gpt-17",
        ),
        (
            "invalid UTF-8",
            "/v1/completions",
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            "too many stop strings",
            "/v1/completions",
            ok(json!({"stop": ["a", "b", "c", "d", "e"]})),
            StatusCode::BAD_REQUEST,
            "stop",
        ),
        (
            "stop of wrong type",
            "/v1/completions",
            ok(json!({"stop": 7})),
            StatusCode::BAD_REQUEST,
            "stop",
        ),
        (
            "n too large",
            "/v1/completions",
            ok(json!({"n": 100000})),
            StatusCode::BAD_REQUEST,
            "`n`",
        ),
        (
            "n zero",
            "/v1/completions",
            ok(json!({"n": 0})),
            StatusCode::BAD_REQUEST,
            "`n`",
        ),
        (
            "logprobs too many",
            "/v1/completions",
            ok(json!({"logprobs": 50})),
            StatusCode::BAD_REQUEST,
            "logprobs",
        ),
        (
            "penalty out of range",
            "/v1/completions",
            ok(json!({"presence_penalty": 3})),
            StatusCode::BAD_REQUEST,
            "presence_penalty",
        ),
        (
            "logit_bias not an object",
            "/v1/completions",
            ok(json!({"logit_bias": [1, 2]})),
            StatusCode::BAD_REQUEST,
            "logit_bias",
        ),
        (
            "logit_bias key past the vocabulary",
            "/v1/completions",
            ok(json!({"logit_bias": {"99999": 1}})),
            StatusCode::BAD_REQUEST,
            "99999",
        ),
        (
            "logit_bias key not a token id",
            "/v1/completions",
            ok(json!({"logit_bias": {"abc": 1}})),
            StatusCode::BAD_REQUEST,
            "abc",
        ),
        (
            "logit_bias out of range",
            "/v1/completions",
            ok(json!({"logit_bias": {"5": 250}})),
            StatusCode::BAD_REQUEST,
            "[-100, 100]",
        ),
        (
            "JSON mode is not implemented",
            "/v1/completions",
            ok(json!({"response_format": {"type": "json_object"}})),
            StatusCode::BAD_REQUEST,
            "response_format",
        ),
        (
            "best_of is not implemented",
            "/v1/completions",
            ok(json!({"best_of": 3})),
            StatusCode::BAD_REQUEST,
            "best_of",
        ),
        (
            "tool calls are not implemented",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]})
            .to_string()
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "tools",
        ),
        (
            "body over the limit",
            "/v1/completions",
            vec![b' '; 3 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            "empty body",
            "/v1/completions",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "chat without messages",
            "/v1/chat/completions",
            json!({"messages": []}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            "chat bad role",
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "role",
        ),
        (
            "chat bad content",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "content",
        ),
        (
            "chat top_p",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": -1})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "top_p",
        ),
    ];
    let n_cases = cases.len() as f64;
    for (case, path, body, want, needle) in cases {
        let (status, text) = call_raw(&s, "POST", path, body, &[]).await;
        assert_openai_error(status, &text, want, needle, case);
    }
    let (status, text) = call_raw(&s, "GET", "/v1/nothing", Vec::new(), &[]).await;
    assert_openai_error(
        status,
        &text,
        StatusCode::NOT_FOUND,
        "No route",
        "unknown path",
    );
    let (status, text) = call_raw(&s, "GET", "/v1/completions", Vec::new(), &[]).await;
    assert_openai_error(
        status,
        &text,
        StatusCode::METHOD_NOT_ALLOWED,
        "Method",
        "wrong method",
    );

    let (status, v) = post(
        &s,
        "/v1/completions",
        &json!({"model": "mixtral", "prompt": "hello", "max_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let metrics = s.metrics().render();
    assert!(
        metric(&metrics, "switchyard_requests_total{outcome=\"rejected\"}") == n_cases,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "switchyard_requests_total{outcome=\"finished\"}"),
        1.0
    );
}

#[tokio::test]
async fn an_api_key_is_required_when_set() {
    let s = state_with(8, 64, None, Some("s3cret"));
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 1})
        .to_string()
        .into_bytes();
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "s3cret")],
    ] {
        let (status, text) = call_raw(&s, "POST", "/v1/completions", body.clone(), &headers).await;
        assert_openai_error(
            status,
            &text,
            StatusCode::UNAUTHORIZED,
            "API key",
            "bad key",
        );
    }
    let (status, text) = call_raw(
        &s,
        "POST",
        "/v1/completions",
        body,
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _) = call_raw(&s, "GET", "/health", Vec::new(), &[]).await;
    assert_eq!(status, StatusCode::OK, "health stays open");
}
