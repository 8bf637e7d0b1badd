//! Answering a validated request: submit every choice to the engine, then either collect the
//! whole answer or stream it as server-sent events ending with `data: [DONE]`.

use super::choice::{ChoiceDelta, ChoiceStream};
use super::error::ApiError;
use super::responses::{self, Header, Kind};
use super::state::{AppState, OutcomeGuard};
use crate::metrics::Outcome;
use crate::scheduler::{GenerationRequest, SamplingConfig, SubmitError};
use crate::tokenizer::Tokenizer;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, select_all, StreamExt};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

/// One choice to generate.
#[derive(Debug, Clone)]
pub struct ChoiceJob {
    /// Its index in the response.
    pub index: usize,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Engine settings.
    pub sampling: SamplingConfig,
    /// Text put before the answer (`echo`).
    pub echo: String,
    /// The first choice of its prompt: its cached prompt tokens count in the usage (each
    /// prompt once, as in `prompt_tokens`).
    pub counts_prompt: bool,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Job {
    /// id, model, endpoint.
    pub header: Header,
    /// The choices, index order.
    pub choices: Vec<ChoiceJob>,
    /// Prompt tokens (each prompt once, whatever n is).
    pub prompt_tokens: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Streamed: a last chunk with the usage.
    pub include_usage: bool,
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::TooLong { .. } => ApiError::invalid(e.to_string(), Some("max_tokens")),
        SubmitError::Stopped => {
            ApiError::unavailable("The engine has stopped; the server is shutting down.")
        }
    }
}

/// Answers a validated job, or turns the validation or engine error into the OpenAI-shaped
/// error response (counting it): the body of every generation endpoint.
pub async fn respond(state: Arc<AppState>, job: Result<Job, ApiError>) -> Response {
    let result = match job {
        Ok(job) => answer(state.clone(), job).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| {
        state.record_error(&e);
        e.into_response()
    })
}

/// Submits the job and answers it.
pub async fn answer(state: Arc<AppState>, job: Job) -> Result<Response, ApiError> {
    let mut streams = Vec::with_capacity(job.choices.len());
    let mut echoes = Vec::with_capacity(job.choices.len());
    for c in job.choices {
        let min_tokens = c.sampling.min_tokens;
        let rx = state
            .engine
            .submit(GenerationRequest {
                prompt: c.prompt,
                sampling: c.sampling,
            })
            .map_err(submit_error)?;
        streams.push(ChoiceStream::new(
            c.index,
            rx,
            state.tokenizer.as_ref(),
            job.stop.clone(),
            min_tokens,
            c.counts_prompt,
        ));
        echoes.push(c.echo);
    }
    let guard = OutcomeGuard::new(state.metrics().clone());
    if job.stream {
        let tok = state.tokenizer.clone();
        Ok(stream_response(
            job.header,
            streams,
            echoes,
            job.prompt_tokens,
            job.include_usage,
            tok,
            guard,
        ))
    } else {
        collect_response(
            &state,
            job.header,
            streams,
            echoes,
            job.prompt_tokens,
            guard,
        )
        .await
    }
}

async fn collect_response(
    state: &AppState,
    header: Header,
    streams: Vec<ChoiceStream>,
    echoes: Vec<String>,
    prompt_tokens: usize,
    mut guard: OutcomeGuard,
) -> Result<Response, ApiError> {
    let results =
        futures_util::future::join_all(streams.into_iter().map(ChoiceStream::collect)).await;
    let mut choices = Vec::with_capacity(results.len());
    let (mut completion, mut cached) = (0, 0);
    for (index, (r, echo)) in results.into_iter().zip(echoes).enumerate() {
        let c = r.inspect_err(|_| guard.disarm())?;
        completion += c.tokens.len();
        cached += c.cached_prompt;
        let lp = responses::logprobs(header.kind, &c.tokens, state.tokenizer.as_ref(), echo.len());
        choices.push(responses::choice(
            header.kind,
            index,
            &(echo + &c.text),
            lp,
            c.finish,
        ));
    }
    guard.set(Outcome::Finished);
    let usage = responses::usage(prompt_tokens, completion, cached);
    Ok(Json(header.response(choices, usage)).into_response())
}

/// The streaming state: merged choice deltas, then the usage chunk and `[DONE]`.
struct Streaming {
    deltas: stream::SelectAll<stream::BoxStream<'static, Result<ChoiceDelta, ApiError>>>,
    header: Header,
    echoes: Vec<String>,
    opened: Vec<bool>,
    tokenizer: Option<Tokenizer>,
    prompt_tokens: usize,
    completion: usize,
    cached: usize,
    include_usage: bool,
    tail: VecDeque<String>,
    ended: bool,
    guard: OutcomeGuard,
}

impl Streaming {
    fn delta_chunk(&mut self, d: ChoiceDelta) -> String {
        self.completion += d.tokens.len();
        self.cached += d.cached_prompt.unwrap_or(0);
        let first = !self.opened[d.index];
        self.opened[d.index] = true;
        let mut text = if first {
            std::mem::take(&mut self.echoes[d.index])
        } else {
            String::new()
        };
        text.push_str(&d.text);
        let lp = responses::logprobs(self.header.kind, &d.tokens, self.tokenizer.as_ref(), 0);
        let choice = responses::chunk_choice(
            self.header.kind,
            d.index,
            &text,
            lp,
            d.finish,
            first && self.header.kind == Kind::Chat,
        );
        self.header.chunk(vec![choice], None).to_string()
    }

    async fn next_event(&mut self) -> Option<String> {
        if let Some(e) = self.tail.pop_front() {
            return Some(e);
        }
        if self.ended {
            return None;
        }
        match self.deltas.next().await {
            Some(Ok(d)) => Some(self.delta_chunk(d)),
            Some(Err(e)) => {
                self.ended = true;
                self.guard.set(Outcome::Failed);
                self.tail.push_back("[DONE]".into());
                Some(e.body().to_string())
            }
            None => {
                self.ended = true;
                self.guard.set(Outcome::Finished);
                if self.include_usage {
                    let usage = responses::usage(self.prompt_tokens, self.completion, self.cached);
                    self.tail
                        .push_back(self.header.chunk(Vec::new(), Some(usage)).to_string());
                }
                self.tail.push_back("[DONE]".into());
                self.tail.pop_front()
            }
        }
    }
}

fn stream_response(
    header: Header,
    streams: Vec<ChoiceStream>,
    echoes: Vec<String>,
    prompt_tokens: usize,
    include_usage: bool,
    tokenizer: Option<Tokenizer>,
    guard: OutcomeGuard,
) -> Response {
    let n = streams.len();
    let deltas =
        select_all(streams.into_iter().map(|s| {
            stream::unfold(s, |mut s| async move { s.next().await.map(|d| (d, s)) }).boxed()
        }));
    let state = Streaming {
        deltas,
        header,
        echoes,
        opened: vec![false; n],
        tokenizer,
        prompt_tokens,
        completion: 0,
        cached: 0,
        include_usage,
        tail: VecDeque::new(),
        ended: false,
        guard,
    };
    let events = stream::unfold(state, |mut s| async move {
        s.next_event()
            .await
            .map(|e| (Ok::<_, Infallible>(Event::default().data(e)), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
