//! `ReplicationManager`: the driver's side. It keeps the routing statistics, decides when to
//! rebalance, runs the algorithm off the step path, and hands out each step's [`Directive`]:
//! a few layers of copies per step, then the switch to the new epoch.

use super::window::LoadWindow;
use super::{
    Directive, LayerMigration, MigrationChunk, RebalanceSummary, ReplicationConfig,
    ReplicationError, ReplicationStatus, ReplicationStep,
};
use crate::config::ModelConfig;
use crate::parallel::ParallelPlan;
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use switchyard_experts::{imbalance, rebalance, Placement, RebalanceError, Rebalanced, Topology};

/// Where the manager is between two rebalances.
enum Phase {
    /// Collecting statistics.
    Idle,
    /// The algorithm runs on a background thread.
    Planning {
        result: Receiver<Result<(Rebalanced, f64), RebalanceError>>,
        step: u64,
    },
    /// Layers still to copy, then the switch.
    Migrating(Migration),
}

struct Migration {
    pending: VecDeque<LayerMigration>,
    placements: Vec<Placement>,
    summary: RebalanceSummary,
}

/// The driver's replication state for one model on one set of ranks.
pub struct ReplicationManager {
    config: ReplicationConfig,
    topology: Topology,
    /// Model layer index of every MoE layer.
    layers: Vec<usize>,
    /// Current placement of every MoE layer.
    placements: Vec<Placement>,
    stats: LoadWindow,
    epoch: u64,
    steps_since: usize,
    /// The threshold fired on the last observed step.
    hot: bool,
    phase: Phase,
    /// Epoch and migrated layers of every issued directive not yet observed, in step order.
    issued: VecDeque<(u64, usize)>,
    status: Arc<ReplicationStatus>,
}

impl ReplicationManager {
    /// A manager for MoE layers `layers` (model layer indices) placed as `placements` over EP
    /// ranks grouped `ranks_per_node` to a node; `expert_bytes`: bytes of one expert's weights
    /// as they travel between ranks.
    pub fn new(
        config: ReplicationConfig,
        layers: Vec<usize>,
        placements: Vec<Placement>,
        ranks_per_node: usize,
        expert_bytes: u64,
    ) -> Result<Self, ReplicationError> {
        config.validate()?;
        let first = placements.first().ok_or_else(|| {
            ReplicationError::Config("the model has no MoE layer to rebalance".into())
        })?;
        if layers.len() != placements.len() {
            return Err(ReplicationError::Shape(format!(
                "{} MoE layers for {} placements",
                layers.len(),
                placements.len()
            )));
        }
        let (n_experts, n_ranks) = (first.n_logical(), first.n_ranks());
        if let Some(l) = placements
            .iter()
            .position(|p| p.n_logical() != n_experts || p.n_ranks() != n_ranks)
        {
            return Err(ReplicationError::Shape(format!(
                "MoE layer {} has {} experts over {} ranks, layer {} has {n_experts} over {n_ranks}",
                layers[l],
                placements[l].n_logical(),
                placements[l].n_ranks(),
                layers[0]
            )));
        }
        let per_node = ranks_per_node.clamp(1, n_ranks);
        if n_ranks % per_node != 0 {
            return Err(ReplicationError::Config(format!(
                "{per_node} ranks per node do not divide ep {n_ranks}"
            )));
        }
        let topology = Topology {
            n_nodes: n_ranks / per_node,
            ranks_per_node: per_node,
        };
        let stats = LoadWindow::new(layers.len(), n_experts, config.window)?;
        let status = Arc::new(ReplicationStatus {
            epoch: 0,
            layers: layers.clone(),
            replicas: replica_counts(&placements),
            rebalances_total: 0,
            rebalances_unchanged: 0,
            slots_migrated_total: 0,
            slots_copied_remote_total: 0,
            bytes_migrated_total: 0,
            wire_bytes_total: 0,
            expert_bytes,
            migrating: false,
            last: None,
        });
        Ok(Self {
            config,
            topology,
            layers,
            placements,
            stats,
            epoch: 0,
            steps_since: 0,
            hot: false,
            phase: Phase::Idle,
            issued: VecDeque::new(),
            status,
        })
    }

    /// The manager for the MoE layers of `plan` on model `cfg` (None for a model without MoE
    /// layers): statistics always, rebalancing as `config` says.
    pub fn for_plan(
        cfg: &ModelConfig,
        plan: &ParallelPlan,
        config: ReplicationConfig,
    ) -> Result<Option<Self>, ReplicationError> {
        let Some(moe) = &cfg.moe else { return Ok(None) };
        let (layers, placements): (Vec<usize>, Vec<Placement>) = plan
            .placements(cfg)?
            .into_iter()
            .enumerate()
            .filter_map(|(l, p)| p.map(|p| (l, p)))
            .unzip();
        if layers.is_empty() {
            return Ok(None);
        }
        // gate, up and down of one expert, as f32 on CPU ranks.
        let expert_bytes =
            (3 * moe.intermediate_size * cfg.hidden_size * std::mem::size_of::<f32>()) as u64;
        let ranks_per_node = plan.shard(cfg, 0)?.ranks_per_node;
        Self::new(config, layers, placements, ranks_per_node, expert_bytes).map(Some)
    }

    /// Replaces the configuration; the statistics start over (before the first step, this is
    /// how a caller overrides the layout's `[experts]` settings).
    pub fn set_config(&mut self, config: ReplicationConfig) -> Result<(), ReplicationError> {
        config.validate()?;
        self.stats = LoadWindow::new(
            self.layers.len(),
            self.placements[0].n_logical(),
            config.window,
        )?;
        self.config = config;
        Ok(())
    }

    /// The settings in use.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// The placement epoch the next directive names.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Current placement of every MoE layer.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The state as of the last observed step.
    pub fn status(&self) -> Arc<ReplicationStatus> {
        self.status.clone()
    }

    /// The directive of step `step`: copies of the next layers while migrating, the switch once
    /// every layer is staged, and nothing otherwise. Starts the algorithm when a rebalance is
    /// due; never waits for it.
    pub fn next_directive(&mut self, step: u64) -> Directive {
        if matches!(self.phase, Phase::Idle) && self.due() {
            self.start_planning(step);
        }
        let outcome = match &self.phase {
            Phase::Planning { result, .. } => Some(result.try_recv()),
            _ => None,
        };
        match outcome {
            Some(Ok(Ok((r, ms)))) => self.begin_migration(r, ms),
            Some(Ok(Err(e))) => self.give_up(&e.to_string()),
            Some(Err(TryRecvError::Disconnected)) => self.give_up("the rebalancing thread stopped"),
            Some(Err(TryRecvError::Empty)) | None => {}
        }
        let directive = match &mut self.phase {
            Phase::Migrating(m) if !m.pending.is_empty() => {
                let n = self.config.layers_per_step.min(m.pending.len());
                let layers: Vec<LayerMigration> = m.pending.drain(..n).collect();
                m.summary.migration_steps += 1;
                Directive {
                    epoch: self.epoch,
                    migrate: Some(Arc::new(MigrationChunk {
                        epoch: self.epoch + 1,
                        layers,
                    })),
                }
            }
            Phase::Migrating(_) => self.switch(step),
            _ => Directive {
                epoch: self.epoch,
                migrate: None,
            },
        };
        self.issued
            .push_back((directive.epoch, directive.migrated_layers()));
        directive
    }

    /// Records a finished step: its routed-token counts `[model layer][expert]` (summed over the
    /// EP group; dense layers empty) and the migration bytes its ranks sent. Steps are observed
    /// in the order their directives were issued.
    pub fn observe(
        &mut self,
        expert_counts: &[Vec<u64>],
        wire_bytes: u64,
    ) -> Result<ReplicationStep, ReplicationError> {
        let n_experts = self.placements[0].n_logical();
        let counts: Vec<Vec<u64>> = self
            .layers
            .iter()
            .map(|&l| match expert_counts.get(l) {
                Some(c) if !c.is_empty() => c.clone(),
                _ => vec![0; n_experts],
            })
            .collect();
        self.stats.record(&counts)?;
        self.steps_since += 1;
        if let Some(threshold) = self.config.imbalance_threshold {
            self.hot = self.window_imbalance().iter().any(|&x| x > threshold);
        }
        let (epoch, migrated_layers) = self.issued.pop_front().unwrap_or((self.epoch, 0));
        if wire_bytes > 0 {
            Arc::make_mut(&mut self.status).wire_bytes_total += wire_bytes;
        }
        Ok(ReplicationStep {
            epoch,
            migrated_layers,
            wire_bytes,
            status: self.status.clone(),
        })
    }

    /// Max over mean rank load of the window under the current placement, per MoE layer.
    pub fn window_imbalance(&self) -> Vec<f64> {
        self.stats
            .loads_f64()
            .iter()
            .zip(&self.placements)
            .map(|(l, p)| imbalance(l, p).unwrap_or(1.0))
            .collect()
    }

    fn due(&self) -> bool {
        if !self.config.is_active() || self.stats.total() == 0 {
            return false;
        }
        let scheduled =
            self.config.rebalance_every > 0 && self.steps_since >= self.config.rebalance_every;
        scheduled || (self.hot && self.steps_since >= self.config.min_interval)
    }

    fn start_planning(&mut self, step: u64) {
        let (loads, current) = (self.stats.loads_f64(), self.placements.clone());
        let (topology, options) = (self.topology, self.config.options);
        let (tx, rx) = channel();
        let spawned = std::thread::Builder::new()
            .name("rebalance".into())
            .spawn(move || {
                let start = Instant::now();
                let r = rebalance(&loads, &current, topology, options);
                let _ = tx.send(r.map(|r| (r, start.elapsed().as_secs_f64() * 1e3)));
            });
        self.steps_since = 0;
        self.hot = false;
        match spawned {
            Ok(_) => self.phase = Phase::Planning { result: rx, step },
            Err(e) => tracing::warn!("cannot start the rebalancing thread: {e}"),
        }
    }

    fn begin_migration(&mut self, r: Rebalanced, algorithm_ms: f64) {
        let Phase::Planning { step, .. } = self.phase else {
            return;
        };
        if r.moved_slots == 0 {
            Arc::make_mut(&mut self.status).rebalances_unchanged += 1;
            self.phase = Phase::Idle;
            return;
        }
        let per_node = self.topology.ranks_per_node;
        let mut pending = VecDeque::new();
        for ((&layer, old), (new, &moved)) in self
            .layers
            .iter()
            .zip(&self.placements)
            .zip(r.placements.iter().zip(&r.moved_per_layer))
        {
            if moved == 0 {
                continue;
            }
            match LayerMigration::plan(layer, old, new.clone(), per_node) {
                Ok(m) => pending.push_back(m),
                Err(e) => return self.give_up(&e.to_string()),
            }
        }
        let status = Arc::make_mut(&mut self.status);
        status.migrating = true;
        let summary = RebalanceSummary {
            epoch: self.epoch + 1,
            decided_at_step: step,
            switched_at_step: 0,
            imbalance_before: r.imbalance_before,
            imbalance_after: r.imbalance_after,
            moved_slots: r.moved_slots,
            remote_copies: pending.iter().map(LayerMigration::remote_transfers).sum(),
            algorithm_ms,
            migration_steps: 0,
        };
        self.phase = Phase::Migrating(Migration {
            pending,
            placements: r.placements,
            summary,
        });
    }

    /// Every layer is staged: this step runs under the new placement on every rank.
    fn switch(&mut self, step: u64) -> Directive {
        let Phase::Migrating(m) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Directive {
                epoch: self.epoch,
                migrate: None,
            };
        };
        self.epoch += 1;
        self.placements = m.placements;
        self.steps_since = 0;
        let status = Arc::make_mut(&mut self.status);
        status.epoch = self.epoch;
        status.replicas = replica_counts(&self.placements);
        status.rebalances_total += 1;
        status.slots_migrated_total += m.summary.moved_slots as u64;
        status.slots_copied_remote_total += m.summary.remote_copies as u64;
        status.bytes_migrated_total += m.summary.moved_slots as u64 * status.expert_bytes;
        status.migrating = false;
        status.last = Some(RebalanceSummary {
            switched_at_step: step,
            ..m.summary
        });
        Directive {
            epoch: self.epoch,
            migrate: None,
        }
    }

    fn give_up(&mut self, why: &str) {
        tracing::warn!("rebalance abandoned, serving goes on with the current placement: {why}");
        Arc::make_mut(&mut self.status).migrating = false;
        self.phase = Phase::Idle;
    }
}

impl std::fmt::Debug for ReplicationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Idle => "idle",
            Phase::Planning { .. } => "planning",
            Phase::Migrating(_) => "migrating",
        };
        write!(
            f,
            "ReplicationManager(epoch {}, {} MoE layers, {phase})",
            self.epoch,
            self.layers.len()
        )
    }
}

/// Replicas per logical expert of every layer.
fn replica_counts(placements: &[Placement]) -> Vec<Vec<u32>> {
    placements
        .iter()
        .map(|p| {
            (0..p.n_logical())
                .map(|e| p.replicas(e).len() as u32)
                .collect()
        })
        .collect()
}
