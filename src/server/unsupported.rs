//! Request fields that would change the answer but that switchyard does not implement: refused
//! with a 400 naming the field, never ignored (a client asking for JSON or tool calls must not
//! get free text as if it had). Their neutral values, which clients send by default, pass.

use super::error::ApiError;
use serde_json::{Map, Value};

/// (field, what its neutral values are): anything else is refused.
const FIELDS: [(&str, &str); 7] = [
    ("response_format", "null or {\"type\": \"text\"}"),
    ("tools", "null or []"),
    ("tool_choice", "null or \"none\""),
    ("functions", "null or []"),
    ("function_call", "null or \"none\""),
    ("suffix", "null or \"\""),
    ("best_of", "null or 1"),
];

fn neutral(field: &str, v: &Value) -> bool {
    match (field, v) {
        (_, Value::Null) => true,
        ("response_format", Value::Object(o)) => {
            o.get("type").and_then(Value::as_str) == Some("text") && o.len() == 1
        }
        ("tools" | "functions", Value::Array(a)) => a.is_empty(),
        ("tool_choice" | "function_call", Value::String(s)) => s == "none",
        ("suffix", Value::String(s)) => s.is_empty(),
        ("best_of", v) => v.as_i64() == Some(1),
        _ => false,
    }
}

/// Refuses the first field of `body` that asks for something not implemented.
pub fn refuse(body: &Map<String, Value>) -> Result<(), ApiError> {
    for (field, allowed) in FIELDS {
        if let Some(v) = body.get(field).filter(|v| !neutral(field, v)) {
            return Err(ApiError::invalid(
                format!("`{field}` = {v} is not supported by this server (only {allowed})."),
                Some(field),
            ));
        }
    }
    Ok(())
}
