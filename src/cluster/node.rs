//! One node's ranks as threads: each loads its shard and runs steps with its TCP
//! communicators, reporting every step's output. The driver and the followers share this.

use crate::checkpoint::WeightSource;
use crate::comm::tcp::TcpRankComms;
use crate::config::ModelConfig;
use crate::model::{Model, RankOutput, StepBatch};
use crate::parallel::{open_over_host, ParallelPlan, RankContext, RankDevices};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One rank's output of one step.
pub(crate) struct RankReport {
    /// Global rank.
    pub rank: usize,
    /// The step.
    pub step: u64,
    /// Bytes its communicators sent during the step.
    pub bytes: u64,
    /// Its output, or why it failed.
    pub output: Result<RankOutput, String>,
}

/// What the driver's collector hears: a rank's report, or a node gone.
pub(crate) enum Event {
    /// A rank finished a step.
    Report(RankReport),
    /// A node's control connection closed or broke.
    NodeGone { why: String },
}

/// The ranks of this node.
pub(crate) struct LocalRanks {
    to_ranks: Vec<Sender<(u64, Arc<StepBatch>)>>,
    handles: Vec<JoinHandle<()>>,
}

impl LocalRanks {
    /// Starts a thread per local rank (`comms`, in global rank order), each loading its shard
    /// of `plan` from `src` with a cache of `num_blocks` x `block_size`; returns once all have
    /// loaded, or the first loading error.
    pub fn start(
        config: &ModelConfig,
        src: Arc<dyn WeightSource>,
        plan: &ParallelPlan,
        comms: Vec<TcpRankComms>,
        num_blocks: usize,
        block_size: usize,
        devices: &RankDevices,
        events: Sender<Event>,
    ) -> Result<Self, String> {
        let gpu_comm = devices
            .resolve(comms.len(), false)
            .map_err(|e| e.to_string())?;
        let (ready_tx, ready_rx) = channel();
        let mut to_ranks = Vec::new();
        let mut handles = Vec::new();
        for (local, c) in comms.into_iter().enumerate() {
            let gpu = devices.gpu(local);
            let rank = c.coords.global;
            let shard = plan
                .shard(config, rank)
                .map_err(|e| format!("rank {rank}: {e}"))?;
            let (tx, rx) = channel();
            to_ranks.push(tx);
            let (cfg, src, events, ready_tx) = (
                config.clone(),
                src.clone(),
                events.clone(),
                ready_tx.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || {
                    let loaded = open_over_host([c.tp, c.ep, c.pp], gpu, gpu_comm).and_then(
                        |(device, ctx)| {
                            let mut model = Model::load_shard(&cfg, src.as_ref(), shard)?;
                            model.to_device(&device)?;
                            let cache = model.try_new_cache(num_blocks, block_size)?;
                            Ok((ctx, model, cache))
                        },
                    );
                    let (ctx, model, mut cache) = match loaded {
                        Ok(l) => l,
                        Err(e) => return drop(ready_tx.send(Err(format!("rank {rank}: {e}")))),
                    };
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    rank_loop(rank, &model, &mut cache, &ctx, rx, events);
                })
                .map_err(|e| format!("cannot start rank {rank}: {e}"))?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("loading the model: {e}")),
                Err(_) => return Err("a rank stopped while loading".into()),
            }
        }
        Ok(Self { to_ranks, handles })
    }

    /// Hands a step to every local rank; false if one is gone.
    pub fn submit(&self, step: u64, batch: &Arc<StepBatch>) -> bool {
        self.to_ranks
            .iter()
            .all(|tx| tx.send((step, batch.clone())).is_ok())
    }

    /// Number of local ranks.
    pub fn len(&self) -> usize {
        self.to_ranks.len()
    }

    /// Lets the ranks finish their last step and end; waits for them when `join`.
    pub fn stop(mut self, join: bool) {
        self.to_ranks.clear();
        if join {
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

fn rank_loop(
    rank: usize,
    model: &Model,
    cache: &mut crate::kv_cache::KvCache,
    ctx: &RankContext,
    jobs: Receiver<(u64, Arc<StepBatch>)>,
    events: Sender<Event>,
) {
    let mut sent_before = 0;
    while let Ok((step, batch)) = jobs.recv() {
        let output = model
            .forward_rank(&batch, cache, ctx)
            .map_err(|e| e.to_string());
        let failed = output.is_err();
        let sent = ctx.bytes_moved();
        let _ = events.send(Event::Report(RankReport {
            rank,
            step,
            bytes: sent - sent_before,
            output,
        }));
        sent_before = sent;
        if failed {
            // Dropping the communicators makes every peer fail at once instead of waiting.
            return;
        }
    }
}
