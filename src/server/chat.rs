//! `POST /v1/chat/completions`: messages rendered with the checkpoint's chat template.

use super::answer::{respond, ChoiceJob, Job};
use super::body;
use super::chat_template::ROLES;
use super::error::ApiError;
use super::params::{DefaultMaxTokens, Sampling};
use super::prompt::check_ids;
use super::protocol::ChatRequest;
use super::responses::{request_id, Header, Kind};
use super::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

/// Alternatives per token at most (as the OpenAI API).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// The handler.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = validate(&state, body);
    respond(state, job).await
}

fn validate(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Job, ApiError> {
    let req: ChatRequest = body::parse(body)?;
    state.check_model(req.common.model.as_deref())?;
    let messages = req.messages.as_deref().unwrap_or_default();
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must be a non-empty list.",
            Some("messages"),
        ));
    }
    if let Some(m) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
        return Err(ApiError::invalid(
            format!(
                "Unknown message role `{}`; use one of {}.",
                m.role,
                ROLES.join(", ")
            ),
            Some("messages"),
        ));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(
                format!("`top_logprobs` must be in [0, {MAX_TOP_LOGPROBS}], got {k}."),
                Some("top_logprobs"),
            ))
        }
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`.",
                Some("top_logprobs"),
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let max_tokens = req.max_completion_tokens.or(req.common.max_tokens);
    let sampling = Sampling::parse(
        &req.common,
        max_tokens,
        logprobs,
        DefaultMaxTokens::RestOfContext,
        state.vocab,
    )?;
    let template = state.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "This model has no chat template (tokenizer_config.json); use /v1/completions.",
            Some("messages"),
        )
    })?;
    let tokenizer = state.tokenizer.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "This model has no tokenizer.json; use /v1/completions with token ids.",
            None,
        )
    })?;
    let text = template.render(messages)?;
    let ids = tokenizer.encode_with(&text, false).map_err(|e| {
        ApiError::invalid(
            format!("Could not tokenize the conversation: {e}."),
            Some("messages"),
        )
    })?;
    check_ids(&ids, state.vocab)?;
    let kv = state.engine.kv_capacity_tokens();
    let choices = (0..sampling.n)
        .map(|i| {
            Ok(ChoiceJob {
                index: i,
                prompt: ids.clone(),
                sampling: sampling.for_prompt(ids.len(), i, state.context, kv)?,
                echo: String::new(),
                counts_prompt: i == 0,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let header = Header {
        id: request_id(Kind::Chat),
        created: state.created,
        model: state.model_name.clone(),
        kind: Kind::Chat,
    };
    Ok(Job {
        header,
        choices,
        prompt_tokens: ids.len(),
        stop: sampling.stop,
        stream: sampling.stream,
        include_usage: sampling.include_usage,
    })
}
