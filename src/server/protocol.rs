//! The OpenAI request bodies as clients send them (fields we do not use are ignored).

use serde::Deserialize;
use serde_json::Value;

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields completions and chat share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// Served model name.
    pub model: Option<String>,
    /// New tokens at most.
    pub max_tokens: Option<i64>,
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f64>,
    /// Sample among the k best (0 or -1: all). vLLM extension.
    pub top_k: Option<i64>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// A stop string or a list of them.
    pub stop: Option<Value>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// In [-2, 2].
    pub presence_penalty: Option<f64>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f64>,
    /// Keep going past end-of-sequence tokens. vLLM extension.
    pub ignore_eos: Option<bool>,
    /// Generate at least this many tokens before end-of-sequence or stop strings count. vLLM extension.
    pub min_tokens: Option<i64>,
    /// Server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Token id (as a string) -> bias in [-100, 100] added to its logit.
    pub logit_bias: Option<Value>,
    /// Every other field (checked by `unsupported::refuse`, else ignored).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// A string, a list of token ids, or a batch of either.
    pub prompt: Option<Value>,
    /// Top alternatives per token (0..=5).
    pub logprobs: Option<i64>,
    /// Prepend the prompt to the answer.
    pub echo: Option<bool>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// system, user, assistant, tool, developer.
    pub role: String,
    /// A string or a list of parts `{"type": "text", "text": ...}`.
    #[serde(default)]
    pub content: Option<Value>,
    /// Optional author name.
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Option<Vec<ChatMessage>>,
    /// Return log-probabilities.
    pub logprobs: Option<bool>,
    /// Top alternatives per token (0..=20).
    pub top_logprobs: Option<i64>,
    /// The newer name of max_tokens.
    pub max_completion_tokens: Option<i64>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}
