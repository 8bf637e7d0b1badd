//! Incremental detokenization: text deltas as tokens arrive, never half a UTF-8 character.
//!
//! Decoding a token alone can differ from decoding it in context (merged spaces, byte-level
//! pieces of one character), so each delta is the text of a short window of recent tokens
//! minus the text of its older part, emitted only once it no longer ends in U+FFFD (an
//! incomplete character), as vLLM and TGI do.

use crate::tokenizer::Tokenizer;

/// The text of a growing token sequence, a delta at a time.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    tokenizer: Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// Tokens whose text has been emitted.
    read: usize,
}

impl Detokenizer {
    /// Starts with no tokens.
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids).unwrap_or_default()
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let after = self.decode(&self.ids[self.prefix..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let delta = match after.get(before.len()..) {
                Some(d) if after.starts_with(&before) => d.to_string(),
                // The context changed the older text; emit what differs after the common prefix.
                _ => {
                    let common = before
                        .char_indices()
                        .zip(after.chars())
                        .take_while(|((_, a), b)| a == b)
                        .count();
                    after.chars().skip(common).collect()
                }
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            delta
        } else {
            String::new()
        }
    }

    /// The text still held back at the end (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self) -> String {
        if self.read == self.ids.len() {
            return String::new();
        }
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let after = self.decode(&self.ids[self.prefix..]);
        self.read = self.ids.len();
        after
            .get(before.len()..)
            .map(str::to_string)
            .unwrap_or(after)
    }
}
