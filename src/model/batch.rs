//! What one forward pass computes: new tokens of several sequences, each at its positions,
//! with the block tables that place them in the paged cache.

use crate::ops::QueryPos;

/// The tokens of one step (prefill chunks and decode tokens mixed).
#[derive(Debug, Clone, Default)]
pub struct StepBatch {
    /// New token ids, sequence after sequence.
    pub tokens: Vec<u32>,
    /// For each token: its sequence (index into `tables`) and position.
    pub queries: Vec<QueryPos>,
    /// Block table of each sequence (covering every position up to its last new token).
    pub tables: Vec<Vec<u32>>,
    /// Which token rows need logits (e.g. the last of each sequence).
    pub logit_rows: Vec<usize>,
}

impl StepBatch {
    /// Adds `tokens` of a sequence whose first new token is at `start`; `logits`: which of the
    /// new tokens' rows need logits (all or the last).
    pub fn push_sequence(
        &mut self,
        tokens: &[u32],
        start: usize,
        table: Vec<u32>,
        all_logits: bool,
    ) {
        let seq = self.tables.len();
        self.tables.push(table);
        let first_row = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.queries.extend((0..tokens.len()).map(|i| QueryPos {
            seq,
            pos: start + i,
        }));
        if all_logits {
            self.logit_rows.extend(first_row..self.tokens.len());
        } else if !tokens.is_empty() {
            self.logit_rows.push(self.tokens.len() - 1);
        }
    }

    /// Positions of the new tokens, in order.
    pub fn positions(&self) -> Vec<usize> {
        self.queries.iter().map(|q| q.pos).collect()
    }

    /// Block tables as slices.
    pub fn table_refs(&self) -> Vec<&[u32]> {
        self.tables.iter().map(Vec::as_slice).collect()
    }
}
