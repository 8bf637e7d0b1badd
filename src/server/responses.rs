//! Response bodies in the OpenAI shapes: completion and chat objects, their streamed chunks,
//! log-probabilities and usage.

use crate::scheduler::GeneratedToken;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// /v1/completions.
    Completion,
    /// /v1/chat/completions.
    Chat,
}

/// Fields every response of a request carries.
#[derive(Debug, Clone)]
pub struct Header {
    /// `cmpl-...` or `chatcmpl-...`.
    pub id: String,
    /// Unix time.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Endpoint.
    pub kind: Kind,
}

/// Token counts of a request.
pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn token_text(tok: Option<&Tokenizer>, id: u32) -> String {
    tok.and_then(|t| t.decode_with(&[id], false).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}

/// The `logprobs` of a choice, or null when none were asked for.
pub fn logprobs(
    kind: Kind,
    tokens: &[GeneratedToken],
    tok: Option<&Tokenizer>,
    text_start: usize,
) -> Value {
    if tokens.iter().all(|t| t.logprob.is_none()) {
        return Value::Null;
    }
    let lps = tokens
        .iter()
        .filter_map(|t| t.logprob.as_ref().map(|l| (t.id, l)));
    match kind {
        Kind::Completion => {
            let (mut texts, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
            let mut offset = text_start;
            for (id, lp) in lps {
                let text = token_text(tok, id);
                offsets.push(offset);
                offset += text.len();
                texts.push(text);
                values.push(lp.logprob);
                let top: Map<String, Value> = lp
                    .top
                    .iter()
                    .map(|&(t, v)| (token_text(tok, t), json!(v)))
                    .collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": texts, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
        }
        Kind::Chat => {
            let entry = |id: u32, v: f32| {
                let text = token_text(tok, id);
                json!({"token": text, "logprob": v, "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = lps
                .map(|(id, lp)| {
                    let mut e = entry(id, lp.logprob);
                    e["top_logprobs"] = lp.top.iter().map(|&(t, v)| entry(t, v)).collect();
                    e
                })
                .collect();
            json!({"content": content})
        }
    }
}

/// One finished choice of a non-streamed response.
pub fn choice(kind: Kind, index: usize, text: &str, logprobs: Value, finish: &str) -> Value {
    match kind {
        Kind::Completion => {
            json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
        }
        Kind::Chat => json!({
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }),
    }
}

/// A streamed choice delta; `first` opens a chat choice with the assistant role.
pub fn chunk_choice(
    kind: Kind,
    index: usize,
    text: &str,
    logprobs: Value,
    finish: Option<&str>,
    first: bool,
) -> Value {
    match kind {
        Kind::Completion => {
            json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
        }
        Kind::Chat => {
            let delta = if first {
                json!({"role": "assistant", "content": text})
            } else if text.is_empty() && finish.is_some() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        }
    }
}

impl Header {
    /// The whole response object.
    pub fn response(&self, choices: Vec<Value>, usage: Value) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices, "usage": usage})
    }

    /// A streamed chunk.
    pub fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

/// A request id with the endpoint's prefix.
pub fn request_id(kind: Kind) -> String {
    let prefix = match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    format!("{prefix}-{:032x}", rand::random::<u128>())
}
