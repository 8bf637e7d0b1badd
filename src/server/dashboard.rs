//! The operators' page at `/` (and `/dashboard`): a live per-layer expert-load heatmap,
//! per-rank load and imbalance, drawn by plain JS from `/api/expert-load`.

use super::state::AppState;
use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The page (static; it polls the JSON below).
pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// The loads and the engine's occupancy, as JSON.
pub async fn expert_load(State(state): State<Arc<AppState>>) -> Json<Value> {
    let e = &state.engine;
    let s = e.status();
    Json(json!({
        "model": state.model_name,
        "load": e.load_board().snapshot(),
        "window_steps": crate::metrics::LOAD_WINDOW_STEPS,
        "running": s.running.load(Ordering::Relaxed),
        "waiting": s.waiting.load(Ordering::Relaxed),
        "kv_blocks_used": e.kv_blocks_used(),
        "kv_blocks_cached": e.kv_blocks_cached(),
        "kv_blocks_total": e.kv_blocks_total(),
    }))
}
