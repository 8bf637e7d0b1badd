//! Request bodies: read under the size limit, then parsed as JSON, every failure an
//! [`ApiError`] (413 for a body over the limit, 400 for bad JSON, bad UTF-8 or wrong types).

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;

/// Bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Parses a JSON request body.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        ApiError::with_status(
            r.status(),
            format!("Could not read the request body: {}", r.body_text()),
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "The request body is empty; send a JSON object.",
            None,
        ));
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(ApiError::invalid(
            format!("The request body is not valid UTF-8: {e}."),
            None,
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "has a field of the wrong type or value",
            _ => "is not valid JSON",
        };
        ApiError::invalid(format!("The request body {what}: {e}."), None)
    })
}
