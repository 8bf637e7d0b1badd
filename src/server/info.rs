//! `GET /v1/models`, `/health` and `/metrics`.

use super::error::ApiError;
use super::state::AppState;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn model_card(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "switchyard",
        "root": state.model_name,
        "max_model_len": state.context,
    })
}

/// The served model.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&state)]}))
}

/// One model by name.
pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.check_model(Some(&id)) {
        Ok(()) => Json(model_card(&state)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// 200 while the engine thread runs, 503 after it stopped or the cluster's ranks failed.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if let Some(why) = state.fault.as_ref().and_then(|f| f.get()) {
        return ApiError::unavailable(why).into_response();
    }
    let e = &state.engine;
    if !e.is_alive() {
        return ApiError::unavailable("The engine thread has stopped.").into_response();
    }
    let s = e.status();
    let body = json!({
        "status": "ok",
        "model": state.model_name,
        "running": s.running.load(Ordering::Relaxed),
        "waiting": s.waiting.load(Ordering::Relaxed),
        "kv_blocks_used": e.kv_blocks_used(),
        "kv_blocks_cached": e.kv_blocks_cached(),
        "kv_blocks_total": e.kv_blocks_total(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics().render(),
    )
        .into_response()
}
