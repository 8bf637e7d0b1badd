//! The engine thread: takes requests off the command channel, plans a step, runs it on the
//! executor, sends each sequence its token, records metrics; blocks when idle.

use super::batcher::Batcher;
use super::request::GenerationRequest;
use super::sampler::StepLogits;
use super::sequence::ServeSequence;
use crate::engine::Executor;
use crate::metrics::{KvOccupancy, LoadBoard, ServingMetrics};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// What the handle sends the engine thread.
#[derive(Debug)]
pub(super) enum Command {
    /// A new sequence and where its events go.
    Submit {
        req: GenerationRequest,
        events: UnboundedSender<super::Event>,
        arrived: Instant,
    },
    /// Fail every queued and running sequence (shutdown past its grace period).
    AbortAll(String),
}

/// Occupancy the engine publishes after every step.
#[derive(Debug, Default)]
pub struct EngineStatus {
    /// Running sequences.
    pub running: AtomicUsize,
    /// Waiting sequences.
    pub waiting: AtomicUsize,
    /// Forward steps run.
    pub steps: AtomicUsize,
    /// Set when the engine thread has stopped (all handles dropped, or a panic).
    pub stopped: AtomicBool,
}

/// Marks the engine stopped however the thread ends.
struct StoppedOnDrop(Arc<EngineStatus>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

pub(super) struct EngineLoop {
    pub executor: Box<dyn Executor>,
    pub batcher: Batcher,
    pub commands: Receiver<Command>,
    pub metrics: Arc<ServingMetrics>,
    pub board: Arc<LoadBoard>,
    pub status: Arc<EngineStatus>,
    /// Sees every step's output after it is recorded (e.g. a routing trace writer).
    pub observer: Option<super::StepObserver>,
}

impl EngineLoop {
    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                req,
                events,
                arrived,
            } => {
                self.metrics.record_prompt(req.prompt.len());
                let seq = ServeSequence::new(req, self.batcher.allocator(), events, arrived);
                self.batcher.add(seq);
            }
            Command::AbortAll(why) => self.batcher.abort_all(&why),
        }
    }

    /// Runs until every handle is dropped and no sequence is left.
    pub fn run(mut self) {
        let _stopped = StoppedOnDrop(self.status.clone());
        let eos = self.executor.config().eos_token_ids.clone();
        let mut open = true;
        loop {
            if self.batcher.is_idle() {
                self.publish();
                if !open {
                    return;
                }
                match self.commands.recv() {
                    Ok(cmd) => self.accept(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(cmd) => self.accept(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.batcher.drop_cancelled();
            let Some(plan) = self.batcher.schedule() else {
                self.publish();
                continue;
            };
            match self.executor.step(&plan.batch) {
                Ok(out) => {
                    let imbalance = self.board.record(&out.expert_counts, &out.rank_tokens);
                    self.metrics.record_step(&out, &imbalance);
                    if let Some(rep) = &out.replication {
                        self.metrics.record_replication(&rep.status);
                        self.board
                            .set_replicas(&rep.status.layers, &rep.status.replicas);
                    }
                    if let Some(observe) = self.observer.as_mut() {
                        observe(&out);
                    }
                    // Logits on a GPU stay there: only token ids (and the rows of sequences
                    // that sample or ask for logprobs) come to the host.
                    let needs = self.batcher.rows_needed(&plan, &eos);
                    let logits = match StepLogits::new(&out.logits, &needs) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("reading the step's logits failed: {e}");
                            self.batcher
                                .fail_plan(plan, &format!("reading the step's logits failed: {e}"));
                            self.status.steps.fetch_add(1, Ordering::Relaxed);
                            self.publish();
                            continue;
                        }
                    };
                    let report = self.batcher.complete(plan, &logits, &eos);
                    self.metrics.record_generated(report.advances.len());
                    self.metrics.record_preemptions(report.preempted);
                    self.metrics
                        .record_prefix_lookups(report.prefix.queried, report.prefix.hit);
                    for a in &report.advances {
                        if let Some(t) = a.ttft {
                            self.metrics.record_ttft(t);
                        }
                        if let Some((_, Some(t))) = a.finished {
                            self.metrics.record_tpot(t);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("forward step failed: {e}");
                    self.batcher
                        .fail_plan(plan, &format!("forward step failed: {e}"));
                }
            }
            self.status.steps.fetch_add(1, Ordering::Relaxed);
            self.publish();
        }
    }

    fn publish(&self) {
        let (running, waiting) = self.batcher.counts();
        self.status.running.store(running, Ordering::Relaxed);
        self.status.waiting.store(waiting, Ordering::Relaxed);
        let pool = self.batcher.allocator();
        let kv = KvOccupancy {
            used: pool.used_blocks(),
            cached: pool.cached_blocks(),
        };
        self.metrics.record_queue(running, waiting, kv);
    }
}
