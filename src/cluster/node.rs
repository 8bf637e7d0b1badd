//! One node's ranks as threads: each loads its shard and runs steps with its TCP
//! communicators, reporting every step's output. The driver and the followers share this.

use crate::checkpoint::WeightSource;
use crate::comm::tcp::TcpRankComms;
use crate::config::ModelConfig;
use crate::model::Model;
use crate::parallel::{open_over_host, run_rank, ParallelPlan, RankDevices, RankJob, RankReport};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the driver's collector hears: a rank's report, or a node gone.
pub(crate) enum Event {
    /// A rank finished a step.
    Report(RankReport),
    /// A node's control connection closed or broke.
    NodeGone { why: String },
}

/// The ranks of this node.
pub(crate) struct LocalRanks {
    to_ranks: Vec<Sender<RankJob>>,
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
                            let model = Model::load_shard_on(&cfg, src.as_ref(), shard, &device)?;
                            let cache = model.try_new_cache(num_blocks, block_size)?;
                            Ok((ctx, model, cache))
                        },
                    );
                    let (ctx, mut model, mut cache) = match loaded {
                        Ok(l) => l,
                        Err(e) => return drop(ready_tx.send(Err(format!("rank {rank}: {e}")))),
                    };
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    let report = |r| events.send(Event::Report(r)).is_ok();
                    run_rank(rank, &mut model, &mut cache, &ctx, rx, report, None);
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
    pub fn submit(&self, job: &RankJob) -> bool {
        self.to_ranks.iter().all(|tx| tx.send(job.clone()).is_ok())
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
