//! Which sequences run in the next step, and how many of their tokens (continuous batching
//! with chunked prefill, FCFS, preemption by recompute, prompts starting from the cached blocks
//! that already hold their first tokens). Readable in one sitting, like nano-vllm's scheduler.

use super::sampler::{Need, StepLogits};
use super::sequence::{Advance, ServeSequence};
use crate::kv_cache::BlockAllocator;
use crate::model::StepBatch;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::time::Instant;

/// Batch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences in the running batch at most.
    pub max_num_seqs: usize,
    /// Tokens in one step at most (decode tokens plus prefill chunks).
    pub max_batched_tokens: usize,
}

impl Limits {
    /// Checks that every running sequence can get a token each step.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_num_seqs == 0 || self.max_batched_tokens == 0 {
            return Err("max_num_seqs and max_batched_tokens must be positive".into());
        }
        if self.max_batched_tokens < self.max_num_seqs {
            return Err(format!(
                "max_batched_tokens ({}) must be at least max_num_seqs ({}) so that every running sequence decodes each step",
                self.max_batched_tokens, self.max_num_seqs
            ));
        }
        Ok(())
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Index into the running list.
    seq: usize,
    /// New tokens in this step.
    len: usize,
    /// Its row in the step's logits (set for the chunk that reaches the sequence's end).
    logit_row: Option<usize>,
}

/// A step to run: the batch and which sequence each part belongs to.
#[derive(Debug)]
pub struct Plan {
    /// What the executor runs.
    pub batch: StepBatch,
    chunks: Vec<Chunk>,
}

/// What a step did to the sequences.
#[derive(Debug, Default)]
pub struct StepReport {
    /// One entry per sequence that got a token.
    pub advances: Vec<Advance>,
    /// Sequences preempted while planning this step.
    pub preempted: usize,
    /// Prefix-cache lookups of the sequences admitted while planning it.
    pub prefix: PrefixLookups,
}

/// Tokens of admitted sequences looked up in the prefix cache, and found there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLookups {
    /// Tokens the admitted sequences held when admitted (prompt, and what was generated before
    /// a preemption).
    pub queried: usize,
    /// Of those, tokens whose keys and values were found cached (not computed again).
    pub hit: usize,
}

/// The waiting and running queues over one block pool.
#[derive(Debug)]
pub struct Batcher {
    allocator: BlockAllocator,
    limits: Limits,
    waiting: VecDeque<ServeSequence>,
    running: Vec<ServeSequence>,
    preempted: usize,
    prefix: PrefixLookups,
}

impl Batcher {
    /// Empty queues over `allocator`.
    pub fn new(allocator: BlockAllocator, limits: Limits) -> Self {
        Self {
            allocator,
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preempted: 0,
            prefix: PrefixLookups::default(),
        }
    }

    /// The block pool.
    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }

    /// Queues a sequence (it runs when a slot, the token budget and blocks allow).
    pub fn add(&mut self, seq: ServeSequence) {
        self.waiting.push_back(seq);
    }

    /// Sequences running / waiting.
    pub fn counts(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Drops the sequences whose clients went away (their blocks go back to the pool).
    pub fn drop_cancelled(&mut self) -> usize {
        let before = self.running.len() + self.waiting.len();
        self.running.retain(|s| !s.is_cancelled());
        self.waiting.retain(|s| !s.is_cancelled());
        before - self.running.len() - self.waiting.len()
    }

    /// Fails and drops every sequence.
    pub fn abort_all(&mut self, why: &str) {
        for s in self.running.drain(..).chain(self.waiting.drain(..)) {
            s.fail(why);
        }
    }

    /// Preempts the youngest running sequence (recomputed when it is scheduled again).
    fn preempt_youngest(&mut self) {
        if let Some(mut victim) = self.running.pop() {
            victim.preempt(&self.allocator);
            self.waiting.push_front(victim);
            self.preempted += 1;
        }
    }

    /// Plans the next step: running sequences first (oldest first: one decode token, or the
    /// next prefill chunk), then waiting ones while slots, budget and blocks last. Returns
    /// None when nothing can run.
    pub fn schedule(&mut self) -> Option<Plan> {
        let mut budget = self.limits.max_batched_tokens;
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let len = self.running[i].uncached().min(budget);
            loop {
                let s = &mut self.running[i];
                if s.table.reserve(s.cached + len).is_ok() {
                    chunks.push(Chunk {
                        seq: i,
                        len,
                        logit_row: None,
                    });
                    budget -= len;
                    i += 1;
                    break;
                }
                if i == 0 && self.running.len() == 1 {
                    // Alone and still not fitting: it can never run.
                    let s = self.running.remove(0);
                    s.fail("the sequence does not fit in the KV cache");
                    break;
                }
                // Preempting the youngest may preempt this very sequence (then the loop ends).
                let last = self.running.len() - 1;
                self.preempt_youngest();
                if last == i {
                    break;
                }
            }
        }
        // After a preemption the cache is tight: admit nobody new this step.
        while budget > 0 && self.running.len() < self.limits.max_num_seqs && self.preempted == 0 {
            let Some(s) = self.waiting.front_mut() else {
                break;
            };
            let hit = s.share_cached_prefix();
            let len = s.uncached().min(budget);
            if s.table.reserve(s.cached + len).is_err() {
                s.preempt(&self.allocator);
                if self.running.is_empty() {
                    let s = self.waiting.pop_front().expect("front exists");
                    s.fail("the sequence does not fit in the KV cache");
                    continue;
                }
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            s.admitted(hit);
            self.prefix.queried += s.tokens.len();
            self.prefix.hit += hit;
            chunks.push(Chunk {
                seq: self.running.len(),
                len,
                logit_row: None,
            });
            budget -= len;
            self.running.push(s);
        }
        if chunks.is_empty() {
            return None;
        }
        let mut batch = StepBatch::default();
        for c in &mut chunks {
            let s = &self.running[c.seq];
            let tokens = &s.tokens[s.cached..s.cached + c.len];
            batch.push_sequence(tokens, s.cached, s.table.blocks().to_vec(), false);
            if s.cached + c.len == s.tokens.len() {
                c.logit_row = Some(batch.logit_rows.len() - 1);
            } else {
                batch.logit_rows.pop();
            }
        }
        Some(Plan { batch, chunks })
    }

    /// Per logits row of the plan's step: what its sequence's sampler needs of it (the whole
    /// row, or a greedy pick or a draw made where the logits are; see [`StepLogits`]).
    pub fn rows_needed(&self, plan: &Plan, eos: &[u32]) -> Vec<Need> {
        let mut needs = vec![Need::Row; plan.batch.logit_rows.len()];
        for c in &plan.chunks {
            if let Some(row) = c.logit_row {
                needs[row] = self.running[c.seq].need(eos);
            }
        }
        needs
    }

    /// Applies a step's logits: advances every chunk's cache, samples the next token of each
    /// sequence that reached its end, drops finished ones.
    pub fn complete(&mut self, plan: Plan, logits: &StepLogits<'_>, eos: &[u32]) -> StepReport {
        let now = Instant::now();
        let mut report = StepReport {
            preempted: std::mem::take(&mut self.preempted),
            prefix: std::mem::take(&mut self.prefix),
            ..Default::default()
        };
        // Each sequence has at most one chunk in a plan; the sequences that reached their end
        // sample in parallel (each with its own generator), reported in the plan's order.
        let mut row_of = vec![None; self.running.len()];
        for c in &plan.chunks {
            let s = &mut self.running[c.seq];
            s.cached += c.len;
            s.table.offer_full_blocks(&s.tokens[..s.cached]);
            row_of[c.seq] = c.logit_row;
        }
        let mut advances: Vec<(usize, Advance)> = self
            .running
            .par_iter_mut()
            .enumerate()
            .filter_map(|(i, s)| row_of[i].map(|row| (i, s.advance(logits.pick(row), eos, now))))
            .collect();
        let position: Vec<usize> = {
            let mut p = vec![usize::MAX; self.running.len()];
            for (k, c) in plan.chunks.iter().enumerate() {
                p[c.seq] = k;
            }
            p
        };
        advances.sort_by_key(|(i, _)| position[*i]);
        let mut done = Vec::new();
        for (seq, adv) in advances {
            if adv.finished.is_some() || adv.cancelled {
                done.push(seq);
            }
            report.advances.push(adv);
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            self.running.remove(i);
        }
        report
    }

    /// Fails the sequences of a plan whose step failed.
    pub fn fail_plan(&mut self, plan: Plan, why: &str) {
        let mut idx: Vec<usize> = plan.chunks.iter().map(|c| c.seq).collect();
        idx.sort_unstable();
        for i in idx.into_iter().rev() {
            self.running.remove(i).fail(why);
        }
    }
}
