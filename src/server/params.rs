//! Request parameters → engine sampling settings, with every range check the API promises.

use super::error::ApiError;
use super::protocol::CommonFields;
use crate::backend::cpu::sample::SamplingParams;
use crate::scheduler::SamplingConfig;
use serde_json::Value;

/// Choices per prompt at most.
pub const MAX_N: usize = 128;
/// Choices in one request (prompts × n) at most.
pub const MAX_CHOICES: usize = 256;
/// Stop strings at most (as the OpenAI API).
pub const MAX_STOP: usize = 4;
/// A stop string's length at most, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// What `max_tokens` is when the request leaves it out.
#[derive(Debug, Clone, Copy)]
pub enum DefaultMaxTokens {
    /// This many, or what is left of the context when less (completions: 16).
    AtMost(usize),
    /// What is left of the context (chat).
    RestOfContext,
}

/// The validated parameters of a request, before the prompts are known.
#[derive(Debug, Clone)]
pub struct Sampling {
    base: SamplingConfig,
    max_tokens: Option<usize>,
    default_max: DefaultMaxTokens,
    seed: Option<u64>,
    /// Stop strings (the answer ends before the first one).
    pub stop: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Server-sent events.
    pub stream: bool,
    /// Last streamed chunk carries the usage.
    pub include_usage: bool,
}

fn in_range(v: Option<f64>, lo: f64, hi: f64, name: &'static str) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
            format!("`{name}` must be in [{lo}, {hi}], got {x}."),
            Some(name),
        )),
        other => Ok(other.map(|x| x as f32)),
    }
}

fn stop_strings(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "`stop` must be a string or a list of strings.",
            Some("stop"),
        )
    };
    let list: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(
            format!(
                "`stop` has {} strings; at most {MAX_STOP} are allowed.",
                list.len()
            ),
            Some("stop"),
        ));
    }
    if let Some(s) = list.iter().find(|s| s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid(
            format!(
                "A stop string is {} bytes long; at most {MAX_STOP_LEN} are allowed.",
                s.len()
            ),
            Some("stop"),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `logit_bias`: an object of token ids (as strings, as JSON keys must be) to biases in
/// [-100, 100], sorted by id.
fn logit_bias(v: Option<&Value>, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |why: String| ApiError::invalid(format!("`logit_bias`: {why}"), Some("logit_bias"));
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(bad(format!(
                "must be an object of token id -> bias, got {other}."
            )))
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, b) in map {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab)
            .ok_or_else(|| {
                bad(format!(
                    "{k:?} is not a token id of this model (0..{vocab})."
                ))
            })?;
        let bias = b
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "the bias of token {id} must be a number in [-100, 100], got {b}."
                ))
            })?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

impl Sampling {
    /// Checks the fields; `max_tokens` is the request's (chat may send max_completion_tokens),
    /// `logprobs` the validated number of alternatives, `vocab` the model's vocabulary size.
    pub fn parse(
        c: &CommonFields,
        max_tokens: Option<i64>,
        logprobs: Option<usize>,
        default_max: DefaultMaxTokens,
        vocab: usize,
    ) -> Result<Self, ApiError> {
        super::unsupported::refuse(&c.other)?;
        let temperature = in_range(c.temperature, 0.0, f64::MAX, "temperature")?.unwrap_or(1.0);
        let top_p = match c.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(ApiError::invalid(
                    format!("`top_p` must be in (0, 1], got {p}."),
                    Some("top_p"),
                ))
            }
            p => p.unwrap_or(1.0) as f32,
        };
        let top_k = match c.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    format!("`top_k` must be -1, 0 (all) or positive, got {k}."),
                    Some("top_k"),
                ))
            }
        };
        let max_tokens = match max_tokens {
            Some(m) if m <= 0 => {
                return Err(ApiError::invalid(
                    format!("`max_tokens` must be at least 1, got {m}."),
                    Some("max_tokens"),
                ))
            }
            m => m.map(|m| m as usize),
        };
        let n = match c.n {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    format!("`n` must be in [1, {MAX_N}], got {n}."),
                    Some("n"),
                ))
            }
        };
        let min_tokens = match c.min_tokens {
            None => 0,
            Some(m) if m >= 0 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    format!("`min_tokens` must be >= 0, got {m}."),
                    Some("min_tokens"),
                ))
            }
        };
        if let (Some(max), true) = (max_tokens, min_tokens > 0) {
            if min_tokens > max {
                return Err(ApiError::invalid(
                    format!("`min_tokens` ({min_tokens}) exceeds `max_tokens` ({max})."),
                    Some("min_tokens"),
                ));
            }
        }
        let base = SamplingConfig {
            params: SamplingParams {
                temperature,
                top_p,
                top_k,
            },
            seed: 0,
            max_tokens: 0,
            min_tokens,
            ignore_eos: c.ignore_eos.unwrap_or(false),
            presence_penalty: in_range(c.presence_penalty, -2.0, 2.0, "presence_penalty")?
                .unwrap_or(0.0),
            frequency_penalty: in_range(c.frequency_penalty, -2.0, 2.0, "frequency_penalty")?
                .unwrap_or(0.0),
            logprobs,
            logit_bias: logit_bias(c.logit_bias.as_ref(), vocab)?,
        };
        Ok(Self {
            base,
            max_tokens,
            default_max,
            seed: c.seed.map(|s| s as u64),
            stop: stop_strings(&c.stop)?,
            n,
            stream: c.stream.unwrap_or(false),
            include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }

    /// The engine settings of choice `choice` for a prompt of `prompt_len` tokens, checked
    /// against the model's context and the KV cache.
    pub fn for_prompt(
        &self,
        prompt_len: usize,
        choice: usize,
        context: usize,
        kv_capacity: usize,
    ) -> Result<SamplingConfig, ApiError> {
        if prompt_len >= context {
            return Err(ApiError::invalid(
                format!("The prompt is {prompt_len} tokens; this model's context is {context} tokens, so at most {} fit with one new token.", context - 1),
                Some("prompt"),
            ));
        }
        let room = context - prompt_len;
        let max_tokens = match (self.max_tokens, self.default_max) {
            (Some(m), _) if m > room => {
                return Err(ApiError::invalid(
                    format!("`max_tokens` is {m} but the prompt ({prompt_len} tokens) leaves room for {room} in this model's context of {context} tokens."),
                    Some("max_tokens"),
                ))
            }
            (Some(m), _) => m,
            (None, DefaultMaxTokens::AtMost(d)) => d.min(room),
            (None, DefaultMaxTokens::RestOfContext) => room,
        };
        let max_tokens = if self.max_tokens.is_none() {
            max_tokens
                .min(kv_capacity.saturating_sub(prompt_len))
                .max(1)
        } else {
            max_tokens
        };
        if prompt_len + max_tokens > kv_capacity {
            return Err(ApiError::invalid(
                format!("The prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the KV cache of {kv_capacity} tokens."),
                Some("max_tokens"),
            ));
        }
        let seed = match self.seed {
            Some(s) => s.wrapping_add(choice as u64),
            None => rand::random(),
        };
        Ok(SamplingConfig {
            max_tokens,
            seed,
            ..self.base.clone()
        })
    }
}
