//! `--api-key`: the /v1 routes need `Authorization: Bearer KEY`, compared in constant time.

use super::error::ApiError;
use super::state::AppState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Whether `header` is `Bearer <key>` (the comparison does not stop at the first wrong byte).
pub fn bearer_matches(header: Option<&[u8]>, key: &str) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    token.ct_eq(key.as_bytes()).into()
}

/// The middleware: 401 unless the key matches (or no key is configured).
pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        if !bearer_matches(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()), key) {
            let e = ApiError::unauthorized();
            state.record_error(&e);
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_key_passes() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cretX"), "s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }
}
