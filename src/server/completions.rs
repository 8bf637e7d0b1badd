//! `POST /v1/completions`: text or token-id prompts, one or a batch.

use super::answer::{respond, ChoiceJob, Job};
use super::body;
use super::error::ApiError;
use super::params::{DefaultMaxTokens, Sampling, MAX_CHOICES};
use super::prompt::{parse_prompts, tokenize, Prompt};
use super::protocol::CompletionRequest;
use super::responses::{request_id, Header, Kind};
use super::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

/// Alternatives per token at most (as the OpenAI API).
pub const MAX_LOGPROBS: i64 = 5;

/// The handler.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = validate(&state, body);
    respond(state, job).await
}

fn validate(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Job, ApiError> {
    let req: CompletionRequest = body::parse(body)?;
    state.check_model(req.common.model.as_deref())?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                format!("`logprobs` must be in [0, {MAX_LOGPROBS}], got {k}."),
                Some("logprobs"),
            ))
        }
    };
    let sampling = Sampling::parse(
        &req.common,
        req.common.max_tokens,
        logprobs,
        DefaultMaxTokens::AtMost(16),
        state.vocab,
    )?;
    let prompts = parse_prompts(req.prompt.as_ref())?;
    if prompts.len() * sampling.n > MAX_CHOICES {
        return Err(ApiError::invalid(
            format!(
                "{} prompts × n = {} choices; at most {MAX_CHOICES} are allowed.",
                prompts.len(),
                prompts.len() * sampling.n
            ),
            Some("n"),
        ));
    }
    let kv = state.engine.kv_capacity_tokens();
    let (mut choices, mut prompt_tokens) = (Vec::new(), 0);
    for p in &prompts {
        let ids = tokenize(p, state.tokenizer.as_ref(), state.vocab)?;
        prompt_tokens += ids.len();
        let echo = match (req.echo.unwrap_or(false), p) {
            (false, _) => String::new(),
            (true, Prompt::Text(t)) => t.clone(),
            (true, Prompt::Ids(ids)) => state
                .tokenizer
                .as_ref()
                .and_then(|t| t.decode(ids).ok())
                .unwrap_or_default(),
        };
        for i in 0..sampling.n {
            let cfg = sampling.for_prompt(ids.len(), i, state.context, kv)?;
            choices.push(ChoiceJob {
                index: choices.len(),
                prompt: ids.clone(),
                sampling: cfg,
                echo: echo.clone(),
                counts_prompt: i == 0,
            });
        }
    }
    let header = Header {
        id: request_id(Kind::Completion),
        created: state.created,
        model: state.model_name.clone(),
        kind: Kind::Completion,
    };
    Ok(Job {
        header,
        choices,
        prompt_tokens,
        stop: sampling.stop,
        stream: sampling.stream,
        include_usage: sampling.include_usage,
    })
}
