//! `ClusterExecutor`: node 0's [`Executor`] over the ranks of every node. Its own ranks are
//! threads here; every step's batch goes to the other nodes over their control connections,
//! and their ranks' outputs come back the same way.

use super::node::{Event, LocalRanks};
use super::rendezvous::{self, Hello, RunParams};
use super::wire::{self, Kind};
use super::{ClusterError, ClusterSpec, FaultFlag, ModelIdentity, VERSION};
use crate::comm::tcp::{Fabric, FabricSpec};
use crate::config::ModelConfig;
use crate::engine::Executor;
use crate::error::{Error, Result};
use crate::model::{ModelSource, StepBatch, StepOutput};
use crate::parallel::{ParallelPlan, RankJob};
use crate::replication::{Directive, ReplicationConfig, ReplicationManager};
use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Another node, as the driver sees it.
struct Follower {
    node: usize,
    ranks: Range<usize>,
    control: TcpStream,
}

/// Node 0 of a multi-node job.
pub struct ClusterExecutor {
    config: ModelConfig,
    ep: usize,
    world: usize,
    run: RunParams,
    local: Option<LocalRanks>,
    followers: Vec<Follower>,
    events: Receiver<Event>,
    next_step: u64,
    failure: Option<String>,
    fault: FaultFlag,
    stopping: Arc<AtomicBool>,
    /// How long a step may wait for the ranks' outputs.
    patience: Duration,
    /// Live routing statistics and rebalancing over every node's ranks, as in one process.
    replication: Option<ReplicationManager>,
}

/// The hello of this node: its model, layout and version.
pub(crate) fn hello(
    source: &ModelSource,
    plan: &ParallelPlan,
    spec: &ClusterSpec,
) -> std::result::Result<Hello, ClusterError> {
    let model = ModelIdentity::of(source)
        .map_err(|e| ClusterError::Spec(format!("reading {}: {e}", source.dir.display())))?;
    Ok(Hello {
        node_rank: spec.node_rank,
        nodes: spec.nodes,
        version: VERSION.to_string(),
        model,
        layout: plan.layout.to_toml(),
        ranks_on: spec
            .devices
            .describe(plan.grid.world() / spec.nodes, false)
            .map_err(|e| ClusterError::Spec(e.to_string()))?,
        data_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    })
}

/// The fabric of this node after the rendezvous.
pub(crate) fn fabric_spec(plan: &ParallelPlan, spec: &ClusterSpec, session: u64) -> FabricSpec {
    FabricSpec {
        grid: plan.grid,
        nodes: spec.nodes,
        node: spec.node_rank,
        session,
        timeout: spec.comm_timeout,
        connect_timeout: spec.join_timeout,
    }
}

impl ClusterExecutor {
    /// Runs the rendezvous as node 0, connects every node, loads this node's ranks and waits
    /// until every other node's ranks have loaded.
    pub fn start(
        source: &ModelSource,
        plan: &ParallelPlan,
        num_blocks: usize,
        block_size: usize,
        spec: &ClusterSpec,
    ) -> std::result::Result<Self, ClusterError> {
        if !spec.is_driver() {
            return Err(ClusterError::Spec(format!(
                "node {} follows; only node 0 drives",
                spec.node_rank
            )));
        }
        let (config, weights) = source.weights()?;
        plan.validate(&config)?;
        let replication = ReplicationManager::for_plan(
            &config,
            plan,
            ReplicationConfig::from_layout(&plan.layout.experts),
        )
        .map_err(|e| ClusterError::Spec(e.to_string()))?;
        let run = RunParams {
            num_blocks,
            block_size,
        };
        let joined = rendezvous::host(spec, hello(source, plan, spec)?, run)?;
        let fspec = fabric_spec(plan, spec, joined.welcome.session);
        let per_node = fspec.ranks_per_node();
        let followers: Vec<Follower> = joined
            .control
            .into_iter()
            .enumerate()
            .map(|(i, control)| Follower {
                node: i + 1,
                ranks: (i + 1) * per_node..(i + 2) * per_node,
                control,
            })
            .collect();
        let refuse = |why: &str| {
            for f in &followers {
                let _ = wire::send(&mut &f.control, Kind::Reject, why.as_bytes());
            }
        };
        let comms = Fabric::connect(&fspec, joined.data, &joined.welcome.book)
            .inspect_err(|e| refuse(&e.to_string()))?;
        let (events_tx, events) = channel();
        let local = LocalRanks::start(
            &config,
            weights,
            plan,
            comms,
            num_blocks,
            block_size,
            &spec.devices,
            events_tx.clone(),
        )
        .map_err(|e| {
            refuse(&format!("node 0 could not load its ranks: {e}"));
            ClusterError::Peer { node: 0, why: e }
        })?;
        for f in &followers {
            let answer = wire::recv(&mut &f.control);
            let why = match answer {
                Ok(Some((Kind::Ready, _))) => continue,
                Ok(Some((Kind::Failed, why))) => format!(
                    "node {} could not load its ranks: {}",
                    f.node,
                    String::from_utf8_lossy(&why)
                ),
                Ok(Some((k, _))) => format!("node {} sent {k:?} instead of ready", f.node),
                Ok(None) => format!("node {} hung up while loading", f.node),
                Err(e) => format!("node {} broke its connection while loading: {e}", f.node),
            };
            refuse(&why);
            local.stop(false);
            return Err(ClusterError::Peer { node: 0, why });
        }
        let fault = FaultFlag::default();
        let stopping = Arc::new(AtomicBool::new(false));
        for f in &followers {
            let reader = f.control.try_clone().map_err(|e| ClusterError::Peer {
                node: 0,
                why: format!("node {}: {e}", f.node),
            })?;
            let (node, ranks, tx, fault, stopping) = (
                f.node,
                f.ranks.clone(),
                events_tx.clone(),
                fault.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name(format!("control-from-{node}"))
                .spawn(move || listen(node, ranks, reader, tx, &fault, &stopping))
                .map_err(|e| ClusterError::Peer {
                    node: 0,
                    why: format!("cannot start a control thread: {e}"),
                })?;
        }
        Ok(Self {
            config,
            ep: plan.grid.ep,
            world: plan.grid.world(),
            run,
            local: Some(local),
            followers,
            events,
            next_step: 0,
            failure: None,
            fault,
            stopping,
            patience: spec.comm_timeout * 2 + Duration::from_secs(30),
            replication,
        })
    }

    /// The flag `/health` reads: set once a node or rank has failed.
    pub fn fault(&self) -> FaultFlag {
        self.fault.clone()
    }

    fn fail<T>(&mut self, why: String) -> Result<T> {
        let why = format!("cluster stopped: {why}");
        self.fault.set(why.clone());
        if self.failure.is_none() {
            for f in &self.followers {
                let _ = wire::send(&mut &f.control, Kind::Reject, why.as_bytes());
            }
            if let Some(l) = self.local.take() {
                l.stop(false);
            }
            self.failure = Some(why.clone());
        }
        Err(Error::Ranks(why))
    }

    fn node_of(&self, rank: usize) -> usize {
        rank / (self.world / (self.followers.len() + 1))
    }
}

/// Reads one follower's control connection: its ranks' reports, until it closes.
fn listen(
    node: usize,
    ranks: Range<usize>,
    stream: TcpStream,
    events: Sender<Event>,
    fault: &FaultFlag,
    stopping: &AtomicBool,
) {
    let mut r = BufReader::new(stream);
    let why = loop {
        match wire::recv(&mut r) {
            Ok(Some((Kind::Report, body))) => match wire::decode_report(&body) {
                Ok(rep) => {
                    let _ = events.send(Event::Report(rep));
                }
                Err(e) => break format!("sent a report that does not decode: {e}"),
            },
            Ok(Some((k, _))) => break format!("sent an unexpected {k:?} frame"),
            Ok(None) => break "closed its connection (the process stopped or died)".to_string(),
            Err(e) => break format!("connection failed: {e}"),
        }
    };
    if !stopping.load(Ordering::SeqCst) {
        let why = format!("node {node} (ranks {:?}) {why}", ranks.collect::<Vec<_>>());
        fault.set(format!("cluster stopped: {why}"));
        let _ = events.send(Event::NodeGone { why });
    }
}

impl Executor for ClusterExecutor {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn num_blocks(&self) -> usize {
        self.run.num_blocks
    }

    fn block_size(&self) -> usize {
        self.run.block_size
    }

    fn step(&mut self, batch: &StepBatch) -> Result<StepOutput> {
        if let Some(f) = &self.failure {
            return Err(Error::Ranks(f.clone()));
        }
        if let Some(why) = self.fault.get() {
            return self.fail(why);
        }
        crate::ops::check_token_ids(&batch.tokens, self.config.vocab_size)?;
        let step = self.next_step;
        self.next_step += 1;
        let job = RankJob {
            step,
            batch: Arc::new(batch.clone()),
            directive: self
                .replication
                .as_mut()
                .map_or_else(Directive::default, |m| m.next_directive(step)),
        };
        let body = wire::encode_job(&job);
        for i in 0..self.followers.len() {
            if let Err(e) = wire::send(&mut &self.followers[i].control, Kind::Step, &body) {
                let f = &self.followers[i];
                let why = format!(
                    "node {} (ranks {:?}) cannot be sent step {step}: {e}",
                    f.node,
                    f.ranks.clone().collect::<Vec<_>>()
                );
                return self.fail(why);
            }
        }
        let local = self.local.as_ref().expect("ranks run until a failure");
        if !local.submit(&job) {
            return self.fail("a rank thread of node 0 is gone".into());
        }
        let mut outputs = Vec::with_capacity(self.world);
        let mut waiting: Vec<bool> = vec![true; self.world];
        let (mut bytes, mut migrated) = (0, 0);
        while outputs.len() < self.world {
            match self.events.recv_timeout(self.patience) {
                Ok(Event::Report(r))
                    if r.step == step && r.rank < self.world && waiting[r.rank] =>
                {
                    waiting[r.rank] = false;
                    bytes += r.bytes;
                    migrated += r.migrated;
                    match r.output {
                        Ok(o) => outputs.push(o),
                        Err(e) => {
                            let why = format!(
                                "rank {} (node {}) failed in step {step}: {e}",
                                r.rank,
                                self.node_of(r.rank)
                            );
                            return self.fail(why);
                        }
                    }
                }
                Ok(Event::Report(_)) => {}
                Ok(Event::NodeGone { why }) => return self.fail(why),
                Err(RecvTimeoutError::Timeout) => {
                    let missing: Vec<usize> = (0..self.world).filter(|&r| waiting[r]).collect();
                    return self.fail(format!(
                        "ranks {missing:?} sent no output of step {step} within {:?}",
                        self.patience
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return self.fail("every rank and node connection is gone".into())
                }
            }
        }
        let mut out = StepOutput::assemble(
            outputs,
            batch.logit_rows.len(),
            self.config.vocab_size,
            self.config.num_layers,
            self.ep,
            bytes,
        )?;
        if let Some(m) = &mut self.replication {
            let observed = m.observe(&out.expert_counts, migrated);
            out.replication = Some(observed.map_err(|e| Error::Ranks(e.to_string()))?);
        }
        Ok(out)
    }
}

impl Drop for ClusterExecutor {
    /// Tells the other nodes the job is done and lets this node's ranks end.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.failure.is_none() {
            for f in &self.followers {
                let _ = wire::send(&mut &f.control, Kind::Stop, &[]);
            }
        }
        if let Some(l) = self.local.take() {
            l.stop(self.failure.is_none());
        }
    }
}

impl std::fmt::Debug for ClusterExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClusterExecutor({} ranks over {} nodes, {} local)",
            self.world,
            self.followers.len() + 1,
            self.local.as_ref().map_or(0, LocalRanks::len)
        )
    }
}
