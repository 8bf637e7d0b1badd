//! Completion prompts in every form the API takes (text, token ids, a batch of either) →
//! token ids checked against the vocabulary.

use super::error::ApiError;
use crate::tokenizer::Tokenizer;
use serde_json::Value;

/// Prompts in one request at most.
pub const MAX_PROMPTS: usize = 64;

/// A prompt as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized with the checkpoint's tokenizer.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
}

fn ids_of(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

/// Splits the `prompt` field into prompts.
pub fn parse_prompts(v: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid(
            format!("`prompt` {why}; send a string, a list of token ids, or a list of either."),
            Some("prompt"),
        )
    };
    let prompts = match v {
        None | Some(Value::Null) => return Err(bad("is missing")),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(items)) if items.is_empty() => return Err(bad("is empty")),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Prompt::Ids(ids_of(items).ok_or_else(|| {
                bad("has a token id that is not a non-negative 32-bit integer")
            })?)]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(ids) => ids_of(ids)
                    .map(Prompt::Ids)
                    .ok_or_else(|| bad("has a token id that is not a non-negative 32-bit integer")),
                _ => Err(bad("mixes types")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("has the wrong type")),
    };
    if prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            format!(
                "{} prompts in one request; at most {MAX_PROMPTS} are allowed.",
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    Ok(prompts)
}

/// Token ids of a prompt, checked to be non-empty and inside the vocabulary.
pub fn tokenize(
    p: &Prompt,
    tokenizer: Option<&Tokenizer>,
    vocab: usize,
) -> Result<Vec<u32>, ApiError> {
    let ids = match p {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(text) => {
            if text.is_empty() {
                return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
            }
            let tok = tokenizer.ok_or_else(|| {
                ApiError::invalid(
                    "This model has no tokenizer.json; send the prompt as token ids.",
                    Some("prompt"),
                )
            })?;
            tok.encode(text).map_err(|e| {
                ApiError::invalid(
                    format!("Could not tokenize the prompt: {e}."),
                    Some("prompt"),
                )
            })?
        }
    };
    check_ids(&ids, vocab)?;
    Ok(ids)
}

/// Rejects an empty prompt or ids outside the vocabulary.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "The prompt is empty (no tokens).",
            Some("prompt"),
        ));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("Token id {bad} is outside the vocabulary (size {vocab})."),
            Some("prompt"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_prompt_form_parses() {
        assert_eq!(
            parse_prompts(Some(&json!("hi"))).unwrap(),
            vec![Prompt::Text("hi".into())]
        );
        assert_eq!(
            parse_prompts(Some(&json!([1, 2]))).unwrap(),
            vec![Prompt::Ids(vec![1, 2])]
        );
        assert_eq!(
            parse_prompts(Some(&json!([[1], "a"]))).unwrap(),
            vec![Prompt::Ids(vec![1]), Prompt::Text("a".into())]
        );
        for bad in [
            json!([]),
            json!(3),
            json!([1, -2]),
            json!([[1], 2]),
            json!({"a": 1}),
        ] {
            assert!(parse_prompts(Some(&bad)).is_err(), "{bad}");
        }
    }
}
