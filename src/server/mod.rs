//! The OpenAI-compatible HTTP server (axum): completions, chat, streaming, models, health,
//! Prometheus metrics and the operators' dashboard. [`app`] builds the router over shared
//! [`AppState`], so tests drive it without a socket.

mod answer;
mod auth;
mod body;
mod chat;
pub mod chat_template;
mod choice;
mod completions;
mod dashboard;
pub mod detokenize;
pub mod error;
mod info;
mod launch;
pub mod params;
pub mod prompt;
mod protocol;
mod responses;
mod state;
pub mod stop;
mod unsupported;

pub use error::ApiError;
pub use launch::{
    default_kv_blocks, local_state, model_name_of, serve, shutdown_signal, state_observed,
    state_over, ServeError, ServeOptions,
};
pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};
use std::sync::Arc;

async fn no_route(uri: Uri) -> impl IntoResponse {
    ApiError::no_route(uri.path())
}

async fn wrong_method() -> impl IntoResponse {
    ApiError::method_not_allowed()
}

/// The router: /v1 routes (behind the API key when one is set), then the open ones.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .route("/", get(dashboard::page))
        .route("/dashboard", get(dashboard::page))
        .route("/api/expert-load", get(dashboard::expert_load))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .with_state(state)
}
