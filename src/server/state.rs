//! What every handler shares: the engine handle, the tokenizer and chat template, the served
//! model's name and limits, the API key.

use super::chat_template::ChatTemplate;
use super::error::ApiError;
use crate::metrics::{Outcome, ServingMetrics};
use crate::scheduler::EngineHandle;
use crate::tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The shared state of one server.
#[derive(Debug)]
pub struct AppState {
    /// The engine thread.
    pub engine: EngineHandle,
    /// The checkpoint's tokenizer (None: token-id prompts only).
    pub tokenizer: Option<Tokenizer>,
    /// The checkpoint's chat template (None: no chat endpoint).
    pub chat_template: Option<ChatTemplate>,
    /// The name /v1/models lists.
    pub model_name: String,
    /// Other names requests may use for the model (e.g. the --model path as given).
    pub model_aliases: Vec<String>,
    /// `Authorization: Bearer` key required on /v1 routes.
    pub api_key: Option<String>,
    /// The model's context length.
    pub context: usize,
    /// The model's vocabulary size.
    pub vocab: usize,
    /// Unix time the server started.
    pub created: u64,
    /// Set when the ranks of a multi-node job have failed (a node died): `/health` reports it.
    pub fault: Option<crate::cluster::FaultFlag>,
}

impl AppState {
    /// State over a running engine; the context and vocabulary come from `config`.
    pub fn new(
        engine: EngineHandle,
        config: &crate::config::ModelConfig,
        tokenizer: Option<Tokenizer>,
        chat_template: Option<ChatTemplate>,
        model_name: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            tokenizer,
            chat_template,
            model_name,
            model_aliases: Vec::new(),
            api_key: None,
            context: config.max_position_embeddings,
            vocab: config.vocab_size,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            fault: None,
        })
    }

    /// The metrics of the server.
    pub fn metrics(&self) -> &Arc<ServingMetrics> {
        self.engine.metrics()
    }

    /// Accepts a request's `model` when it names this model (or is left out).
    pub fn check_model(&self, name: Option<&str>) -> Result<(), ApiError> {
        match name {
            None => Ok(()),
            Some(n) if n == self.model_name || self.model_aliases.iter().any(|a| a == n) => Ok(()),
            Some(n) => Err(ApiError::unknown_model(n, &self.model_name)),
        }
    }

    /// Counts a refused or failed request.
    pub fn record_error(&self, e: &ApiError) {
        let outcome = if e.status.is_server_error() {
            Outcome::Failed
        } else {
            Outcome::Rejected
        };
        self.metrics().record_outcome(outcome);
    }
}

/// Records a request's outcome when dropped: cancelled unless marked otherwise (a dropped
/// response future or stream means the client went away).
#[derive(Debug)]
pub struct OutcomeGuard {
    metrics: Arc<ServingMetrics>,
    outcome: Option<Outcome>,
}

impl OutcomeGuard {
    /// A guard that records `Cancelled` unless told otherwise.
    pub fn new(metrics: Arc<ServingMetrics>) -> Self {
        Self {
            metrics,
            outcome: Some(Outcome::Cancelled),
        }
    }

    /// Sets the outcome to record.
    pub fn set(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Records nothing (the error path records the request).
    pub fn disarm(&mut self) {
        self.outcome = None;
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        if let Some(o) = self.outcome {
            self.metrics.record_outcome(o);
        }
    }
}
