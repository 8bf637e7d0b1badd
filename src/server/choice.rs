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
    ) -> Self {
        Self {
            index,
            events,
            detok: tokenizer.cloned().map(Detokenizer::new),
            stop: StopMatcher::new(stop),
            min_tokens,
            generated: 0,
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

    /// Runs the choice to its end: (text, tokens, finish reason).
    pub async fn collect(
        mut self,
    ) -> Result<(String, Vec<GeneratedToken>, &'static str), ApiError> {
        let (mut text, mut tokens, mut finish) = (String::new(), Vec::new(), "length");
        while let Some(d) = self.next().await {
            let d = d?;
            text.push_str(&d.text);
            tokens.extend(d.tokens);
            if let Some(f) = d.finish {
                finish = f;
            }
        }
        Ok((text, tokens, finish))
    }
}
