//! The loop every rank thread runs, in-process or on another node: take the next step's job,
//! apply its replication directive (expert copies, the placement switch), run the forward pass,
//! and report the output with the bytes its communicators sent.

use super::{RankContext, StageEvent};
use crate::kv_cache::KvCache;
use crate::model::{Model, RankOutput, StepBatch};
use crate::replication::{Directive, RankReplica};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

/// One step for one rank: the batch and what the driver says about the experts.
#[derive(Debug, Clone)]
pub(crate) struct RankJob {
    /// The step id.
    pub step: u64,
    /// The step's batch (shared by every rank of this process).
    pub batch: Arc<StepBatch>,
    /// Expert copies to stage and the placement epoch to run with.
    pub directive: Directive,
}

/// One rank's output of one step.
#[derive(Debug)]
pub(crate) struct RankReport {
    /// Global rank.
    pub rank: usize,
    /// The step.
    pub step: u64,
    /// Its output, or why it failed.
    pub output: Result<RankOutput, String>,
    /// Bytes its communicators sent during the step.
    pub bytes: u64,
    /// Of `bytes`, what the step's expert migration sent.
    pub migrated: u64,
}

/// Runs `jobs` in order until the channel closes, a report cannot be delivered (`report`
/// returns false) or a step fails — then returns, dropping nothing but what the caller owns:
/// the caller drops the communicators so every peer fails at once instead of waiting.
/// Stage work is logged in `events` where given (pipeline overlap tests).
pub(crate) fn run_rank(
    rank: usize,
    model: &mut Model,
    cache: &mut KvCache,
    ctx: &RankContext,
    jobs: Receiver<RankJob>,
    mut report: impl FnMut(RankReport) -> bool,
    events: Option<&Mutex<Vec<StageEvent>>>,
) {
    let mut sent_before = 0;
    let mut replica = RankReplica::default();
    while let Ok(job) = jobs.recv() {
        // Expert copies and the placement switch happen between steps, in step order.
        let (output, migrated) = match replica.apply(&job.directive, model, ctx.ep.as_ref()) {
            Ok(migrated) => (
                model
                    .forward_rank(&job.batch, cache, ctx)
                    .map_err(|e| e.to_string()),
                migrated,
            ),
            Err(e) => (Err(e.to_string()), 0),
        };
        if let (Ok(o), Some(events)) = (&output, events) {
            if let Some((start, end)) = o.work_ticks {
                let event = StageEvent {
                    step: job.step,
                    stage: model.shard().stage,
                    rank,
                    start,
                    end,
                };
                events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
            }
        }
        let failed = output.is_err();
        let sent = ctx.bytes_moved();
        let delivered = report(RankReport {
            rank,
            step: job.step,
            output,
            bytes: sent - sent_before,
            migrated,
        });
        sent_before = sent;
        if failed || !delivered {
            return;
        }
    }
}
