//! Data-parallel attention: the sequences of a step are spread over the stage's `ep / tp`
//! attention groups. A sequence stays with one group for its whole life (its KV cache lives
//! there), so the group is a function of something stable: its first cache block.

use crate::model::StepBatch;
use crate::ops::QueryPos;
use std::borrow::Cow;

/// The attention group that serves a sequence with block table `table`.
pub fn dp_group_of(table: &[u32], dp: usize) -> usize {
    table.first().map_or(0, |&b| b as usize % dp)
}

/// The part of `batch` that attention group `group` of `dp` computes (the batch itself, not a
/// copy, when there is one group), and for each of its logit rows, the index in
/// `batch.logit_rows`.
pub fn sub_batch(batch: &StepBatch, group: usize, dp: usize) -> (Cow<'_, StepBatch>, Vec<usize>) {
    if dp == 1 {
        return (Cow::Borrowed(batch), (0..batch.logit_rows.len()).collect());
    }
    let mut sub = StepBatch::default();
    let mut seq_map = vec![None; batch.tables.len()];
    for (s, table) in batch.tables.iter().enumerate() {
        if dp_group_of(table, dp) == group {
            seq_map[s] = Some(sub.tables.len());
            sub.tables.push(table.clone());
        }
    }
    let mut row_map = vec![None; batch.tokens.len()];
    for (i, (&tok, q)) in batch.tokens.iter().zip(&batch.queries).enumerate() {
        if let Some(seq) = seq_map[q.seq] {
            row_map[i] = Some(sub.tokens.len());
            sub.tokens.push(tok);
            sub.queries.push(QueryPos { seq, pos: q.pos });
        }
    }
    let mut logit_index = Vec::new();
    for (k, &row) in batch.logit_rows.iter().enumerate() {
        if let Some(r) = row_map[row] {
            sub.logit_rows.push(r);
            logit_index.push(k);
        }
    }
    (Cow::Owned(sub), logit_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_and_logit_row_lands_in_exactly_one_group() {
        let mut b = StepBatch::default();
        b.push_sequence(&[1, 2, 3], 0, vec![4, 9], true);
        b.push_sequence(&[7], 5, vec![3], false);
        b.push_sequence(&[8, 9], 2, vec![6], false);
        let dp = 3;
        let mut tokens = 0;
        let mut logits = Vec::new();
        for g in 0..dp {
            let (sub, idx) = sub_batch(&b, g, dp);
            tokens += sub.tokens.len();
            assert_eq!(sub.logit_rows.len(), idx.len());
            logits.extend(idx);
        }
        logits.sort();
        assert_eq!(tokens, 6);
        assert_eq!(logits, (0..b.logit_rows.len()).collect::<Vec<_>>());
    }
}
