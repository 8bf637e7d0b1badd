//! `ParallelExecutor`: every rank of a layout as a thread of this process, each with its own
//! shard, KV storage and communicators. The driver sends every step's plan to every rank and
//! gathers the last stage's logits; it may keep up to `pp` steps in flight so pipeline stages
//! work at the same time.

use super::{run_rank, RankJob, RankReport};
use super::{ParallelPlan, RankDevices};
use crate::checkpoint::WeightSource;
use crate::comm::World;
use crate::config::ModelConfig;
use crate::engine::Executor;
use crate::error::{Error, Result};
use crate::model::{Model, StepBatch, StepOutput};
use crate::replication::{Directive, ReplicationConfig, ReplicationManager, ReplicationStatus};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// When a rank worked on a step, on a logical clock shared by all ranks (ticks, not time):
/// from the moment its input was ready (embedded, or received from the previous stage) to the
/// end of its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageEvent {
    /// The step.
    pub step: u64,
    /// The rank's pipeline stage.
    pub stage: usize,
    /// Global rank.
    pub rank: usize,
    /// Tick at which the input was ready.
    pub start: u64,
    /// Tick at which the rank finished.
    pub end: u64,
}

/// A layout's ranks as threads.
pub struct ParallelExecutor {
    config: ModelConfig,
    ep: usize,
    num_blocks: usize,
    block_size: usize,
    to_ranks: Vec<Sender<RankJob>>,
    reports: Receiver<RankReport>,
    handles: Vec<JoinHandle<()>>,
    next_step: u64,
    in_flight: VecDeque<(u64, usize)>,
    early: Vec<RankReport>,
    events: Arc<Mutex<Vec<StageEvent>>>,
    failure: Option<String>,
    /// Live routing statistics and rebalancing (see [`ParallelExecutor::with_replication`]).
    replication: Option<ReplicationManager>,
}

impl ParallelExecutor {
    /// Starts one thread per rank of `plan` on the CPU, each loading its shard from `src`;
    /// returns once every rank has loaded (or the first loading error).
    pub fn new(
        config: &ModelConfig,
        src: Arc<dyn WeightSource>,
        plan: &ParallelPlan,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        Self::on_devices(config, src, plan, num_blocks, block_size, &RankDevices::Cpu)
    }

    /// [`ParallelExecutor::new`] with the ranks on `devices` (each GPU rank on its own stream,
    /// its shard's weights and KV cache on its GPU; see [`RankDevices::resolve`] for how
    /// they talk).
    pub fn on_devices(
        config: &ModelConfig,
        src: Arc<dyn WeightSource>,
        plan: &ParallelPlan,
        num_blocks: usize,
        block_size: usize,
        devices: &RankDevices,
    ) -> Result<Self> {
        plan.validate(config)?;
        // Routing statistics for every MoE model; rebalancing as the layout's [experts] says.
        let replication = ReplicationManager::for_plan(
            config,
            plan,
            ReplicationConfig::from_layout(&plan.layout.experts),
        )
        .map_err(|e| Error::Ranks(e.to_string()))?;
        let world = World::new(plan.grid);
        let clock = Arc::new(AtomicU64::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (report_tx, reports) = channel();
        let (ready_tx, ready_rx) = channel();
        let mut to_ranks = Vec::new();
        let mut handles = Vec::new();
        let setups = devices.setups(&world)?;
        for (rank, setup) in setups.into_iter().enumerate() {
            let shard = plan.shard(config, rank)?;
            let (tx, rx) = channel();
            to_ranks.push(tx);
            let (cfg, src, report_tx, ready_tx) = (
                config.clone(),
                src.clone(),
                report_tx.clone(),
                ready_tx.clone(),
            );
            let (clock, events) = (clock.clone(), events.clone());
            let handle = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || {
                    let loaded = setup.open().and_then(|(device, ctx)| {
                        let model = Model::load_shard_on(&cfg, src.as_ref(), shard, &device)?;
                        let cache = model.try_new_cache(num_blocks, block_size)?;
                        Ok((ctx, model, cache))
                    });
                    let (mut ctx, mut model, mut cache) = match loaded {
                        Ok(l) => l,
                        Err(e) => return drop(ready_tx.send(Err(format!("rank {rank}: {e}")))),
                    };
                    ctx.clock = Some(clock);
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    let report = |r| report_tx.send(r).is_ok();
                    run_rank(
                        rank,
                        &mut model,
                        &mut cache,
                        &ctx,
                        rx,
                        report,
                        Some(&events),
                    );
                })
                .map_err(|e| Error::Ranks(format!("cannot start rank {rank}: {e}")))?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Ranks(format!("loading the model: {e}"))),
                Err(_) => return Err(Error::Ranks("a rank stopped while loading".into())),
            }
        }
        Ok(Self {
            config: config.clone(),
            ep: plan.grid.ep,
            num_blocks,
            block_size,
            to_ranks,
            reports,
            handles,
            next_step: 0,
            in_flight: VecDeque::new(),
            early: Vec::new(),
            events,
            failure: None,
            replication,
        })
    }

    /// Replaces the replication settings the layout's `[experts]` section gave (rebalance
    /// every `rebalance_every` steps over a `window`; see [`crate::replication`]). A model
    /// without MoE layers has nothing to rebalance and is left as it is. Call before the first
    /// step: the statistics start over.
    pub fn with_replication(mut self, replication: ReplicationConfig) -> Result<Self> {
        if let Some(m) = &mut self.replication {
            m.set_config(replication)
                .map_err(|e| Error::Ranks(e.to_string()))?;
        }
        Ok(self)
    }

    /// The replication manager's state after the last collected step (None when it is off).
    pub fn replication_status(&self) -> Option<Arc<ReplicationStatus>> {
        self.replication.as_ref().map(ReplicationManager::status)
    }

    /// Sends a step to every rank without waiting; returns its id. Steps in flight at once must
    /// hold different sequences.
    pub fn submit(&mut self, batch: StepBatch) -> Result<u64> {
        self.check_alive()?;
        crate::ops::check_token_ids(&batch.tokens, self.config.vocab_size)?;
        let step = self.next_step;
        self.next_step += 1;
        let rows = batch.logit_rows.len();
        let batch = Arc::new(batch);
        let directive = self
            .replication
            .as_mut()
            .map_or_else(Directive::default, |m| m.next_directive(step));
        for tx in &self.to_ranks {
            let job = RankJob {
                step,
                batch: batch.clone(),
                directive: directive.clone(),
            };
            if tx.send(job).is_err() {
                return self.fail("a rank thread is gone".into());
            }
        }
        self.in_flight.push_back((step, rows));
        Ok(step)
    }

    /// Waits for the oldest step in flight and assembles its output.
    pub fn collect(&mut self) -> Result<StepOutput> {
        self.check_alive()?;
        let Some((step, rows)) = self.in_flight.pop_front() else {
            return Err(Error::Input("collect() with no step in flight".into()));
        };
        let mut mine: Vec<RankReport> = Vec::new();
        let (early, rest): (Vec<RankReport>, Vec<RankReport>) =
            self.early.drain(..).partition(|r| r.step == step);
        self.early = rest;
        mine.extend(early);
        while mine.len() < self.to_ranks.len() {
            match self.reports.recv() {
                Ok(r) if r.step == step => mine.push(r),
                Ok(r) => self.early.push(r),
                Err(_) => return self.fail("every rank thread stopped".into()),
            }
        }
        let mut outputs = Vec::with_capacity(mine.len());
        let (mut bytes, mut migrated) = (0, 0);
        for r in mine {
            bytes += r.bytes;
            migrated += r.migrated;
            match r.output {
                Ok(o) => outputs.push(o),
                Err(e) => return self.fail(format!("rank {} failed: {e}", r.rank)),
            }
        }
        let mut out = StepOutput::assemble(
            outputs,
            rows,
            self.config.vocab_size,
            self.config.num_layers,
            self.ep,
            bytes,
        )?;
        if let Some(m) = &mut self.replication {
            out.replication = Some(
                m.observe(&out.expert_counts, migrated)
                    .map_err(|e| Error::Ranks(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Every rank's stage work so far (for tests of pipeline overlap).
    pub fn stage_events(&self) -> Vec<StageEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check_alive(&self) -> Result<()> {
        match &self.failure {
            Some(f) => Err(Error::Ranks(format!(
                "the ranks stopped after a failure: {f}"
            ))),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, why: String) -> Result<T> {
        self.to_ranks.clear();
        self.failure = Some(why.clone());
        Err(Error::Ranks(why))
    }
}

impl Drop for ParallelExecutor {
    fn drop(&mut self) {
        self.to_ranks.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Executor for ParallelExecutor {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn step(&mut self, batch: &StepBatch) -> Result<StepOutput> {
        self.submit(batch.clone())?;
        self.collect()
    }
}

impl std::fmt::Debug for ParallelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ParallelExecutor({} ranks, {} in flight)",
            self.to_ranks.len(),
            self.in_flight.len()
        )
    }
}

/// Shared by the rank threads: the next tick of the logical clock.
pub(crate) fn tick(clock: &AtomicU64) -> u64 {
    clock.fetch_add(1, Ordering::SeqCst)
}
