//! One choice of a request: the engine's tokens turned into text deltas (incremental
//! detokenization, stop strings, min_tokens), and the finish reason.

use super::detokenize::Detokenizer;
use super::error::ApiError;
use super::stop::StopMatcher;
use crate::scheduler::{Event, FinishReason, GeneratedToken};
use crate::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

/// What a choice produced since the last delta.
#[derive(Debug, Clone, Default)]
pub struct ChoiceDelta {
    /// The choice's index in the response.
    pub index: usize,
    /// New text.
    pub text: String,
    /// Tokens generated since the last delta (with their log-probabilities when asked).
    pub tokens: Vec<GeneratedToken>,
    /// Set on the last delta: "stop" or "length".
    pub finish: Option<&'static str>,
    /// Set on the last delta: prompt tokens found in the prefix cache (0 for a choice whose
    /// prompt an earlier choice already counts).
    pub cached_prompt: Option<usize>,
}

/// A whole choice.
#[derive(Debug, Clone)]
pub struct Collected {
    /// Its text.
    pub text: String,
    /// Its tokens (with their log-probabilities when asked).
    pub tokens: Vec<GeneratedToken>,
    /// "stop" or "length".
    pub finish: &'static str,
    /// Prompt tokens found in the prefix cache (as [`ChoiceDelta::cached_prompt`]).
    pub cached_prompt: usize,
}

/// A running choice.
#[derive(Debug)]
pub struct ChoiceStream {
    index: usize,
    events: UnboundedReceiver<Event>,
    detok: Option<Detokenizer>,
    stop: StopMatcher,
    min_tokens: usize,
    generated: usize,
    /// Whether this choice's cached prompt tokens count in the usage (the first choice of its
    /// prompt: each prompt once, as in `prompt_tokens`).
    counts_prompt: bool,
    cached_prompt: usize,
    done: bool,
}

impl ChoiceStream {
    /// Reads the engine's events for choice `index`.
    pub fn new(
        index: usize,
        events: UnboundedReceiver<Event>,
        tokenizer: Option<&Tokenizer>,
        stop: Vec<String>,
        min_tokens: usize,
        counts_prompt: bool,
    ) -> Self {
        Self {
            index,
            events,
            detok: tokenizer.cloned().map(Detokenizer::new),
            stop: StopMatcher::new(stop),
            min_tokens,
            generated: 0,
            counts_prompt,
            cached_prompt: 0,
            done: false,
        }
    }

    /// The next delta; None once the choice is finished. A stop string ends the choice and
    /// cancels the sequence in the engine.
    pub async fn next(&mut self) -> Option<Result<ChoiceDelta, ApiError>> {
        if self.done {
            return None;
        }
        let mut delta = ChoiceDelta {
            index: self.index,
            ..Default::default()
        };
        loop {
            let event = self.events.recv().await;
            match event {
                Some(Event::Cached(n)) if self.counts_prompt => self.cached_prompt = n,
                Some(Event::Cached(_)) => {}
                Some(Event::Token(t)) => {
                    self.generated += 1;
                    let text = self
                        .detok
                        .as_mut()
                        .map(|d| d.push(t.id))
                        .unwrap_or_default();
                    delta.tokens.push(t);
                    let (out, hit) = self.stop.push(&text, self.generated > self.min_tokens);
                    delta.text.push_str(&out);
                    if hit {
                        self.finish_early();
                        delta.cached_prompt = Some(self.cached_prompt);
                        delta.finish = Some("stop");
                        return Some(Ok(delta));
                    }
                    // Coalesce tokens that are already queued; hold back tokens with no text yet.
                    let has_news =
                        !delta.text.is_empty() || delta.tokens.iter().any(|t| t.logprob.is_some());
                    if has_news && self.events.is_empty() {
                        return Some(Ok(delta));
                    }
                }
                Some(Event::Finished(reason)) => {
                    let rest = self
                        .detok
                        .as_mut()
                        .map(Detokenizer::finish)
                        .unwrap_or_default();
                    let (out, hit) = self.stop.push(&rest, self.generated > self.min_tokens);
                    delta.text.push_str(&out);
                    if !hit {
                        delta.text.push_str(&self.stop.finish());
                    }
                    self.done = true;
                    delta.cached_prompt = Some(self.cached_prompt);
                    delta.finish = Some(match (hit, reason) {
                        (true, _) | (_, FinishReason::EndOfSequence) => "stop",
                        (false, FinishReason::Length) => "length",
                    });
                    return Some(Ok(delta));
                }
                Some(Event::Failed(why)) => {
                    self.done = true;
                    return Some(Err(ApiError::internal(why)));
                }
                None => {
                    self.done = true;
                    return Some(Err(ApiError::internal(
                        "the engine stopped before the answer was complete",
                    )));
                }
            }
        }
    }

    fn finish_early(&mut self) {
        self.done = true;
        self.events.close();
    }

    /// Runs the choice to its end.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut all = Collected {
            text: String::new(),
            tokens: Vec::new(),
            finish: "length",
            cached_prompt: 0,
        };
        while let Some(d) = self.next().await {
            let d = d?;
            all.text.push_str(&d.text);
            all.tokens.extend(d.tokens);
            if let Some(f) = d.finish {
                all.finish = f;
            }
            all.cached_prompt = d.cached_prompt.unwrap_or(all.cached_prompt);
        }
        Ok(all)
    }
}
