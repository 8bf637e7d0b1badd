//! The Prometheus recorder of one server and typed handles to every metric it exports.

use crate::engine::Executor;
use crate::model::StepOutput;
use crate::replication::ReplicationStatus;
use ::metrics::{
    Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::sync::Mutex;
use std::time::Duration;

const TTFT: &str = "switchyard_time_to_first_token_seconds";
const TPOT: &str = "switchyard_time_per_output_token_seconds";

/// Latency buckets (seconds) of the TTFT and time-per-output-token histograms.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How a request ended, as the `outcome` label of `switchyard_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in full (length, end of sequence or stop string).
    Finished,
    /// The client went away before the answer was complete.
    Cancelled,
    /// Refused with a 4xx before it reached the engine.
    Rejected,
    /// Failed inside the server (5xx).
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Finished,
        Outcome::Cancelled,
        Outcome::Rejected,
        Outcome::Failed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Cancelled => "cancelled",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Handles to every metric of one server; cheap to share behind an `Arc`.
pub struct ServingMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    expert_tokens: Vec<Vec<Counter>>,
    expert_replicas: Vec<Vec<Gauge>>,
    /// One counter per EP rank seen so far (grown when a step reports more ranks: the
    /// executor's rank count is only known from its outputs).
    rank_tokens: Mutex<Vec<Counter>>,
    imbalance: Vec<Gauge>,
    alltoall_bytes: Counter,
    rebalances: Counter,
    migrated_bytes: Counter,
    /// (rebalances, migrated bytes) of the last replication status seen, to count deltas.
    replication_seen: Mutex<(u64, u64)>,
    requests: Vec<Counter>,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    ttft: Histogram,
    tpot: Histogram,
    running: Gauge,
    waiting: Gauge,
    kv_used: Gauge,
    kv_capacity: Gauge,
    kv_cached: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    steps: Counter,
    preemptions: Counter,
}

/// KV-cache blocks held by sequences, and findable by their tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvOccupancy {
    /// Held by sequences.
    pub used: usize,
    /// Findable by a later request (held or free).
    pub cached: usize,
}

impl std::fmt::Debug for ServingMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingMetrics").finish_non_exhaustive()
    }
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn rank_counter(r: &PrometheusRecorder, rank: usize) -> Counter {
    r.register_counter(
        &Key::from_parts(
            "switchyard_rank_tokens_total",
            labels(&[("rank", rank.to_string())]),
        ),
        &meta(),
    )
}

fn labels(pairs: &[(&'static str, String)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect()
}

impl ServingMetrics {
    /// Registers every metric for a model with `experts[layer]` logical experts per layer (0
    /// for dense layers) spread over `ranks` EP ranks.
    pub fn new(experts: &[usize], ranks: usize, kv_blocks: usize) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(TTFT.into()), &LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TPOT.into()), &LATENCY_BUCKETS))
            .expect("latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_counter(name.into(), unit, SharedString::const_str(help));
        };
        let counter = |name: &'static str, l: &[(&'static str, String)]| {
            r.register_counter(&Key::from_parts(name, labels(l)), &meta())
        };
        let gauge = |name: &'static str, l: &[(&'static str, String)]| {
            r.register_gauge(&Key::from_parts(name, labels(l)), &meta())
        };
        describe(
            "switchyard_expert_tokens_total",
            None,
            "Tokens the router sent to each logical expert.",
        );
        describe(
            "switchyard_expert_replicas",
            None,
            "Physical replicas of each logical expert.",
        );
        describe(
            "switchyard_rank_tokens_total",
            None,
            "(token, expert) pairs each EP rank computed, summed over layers.",
        );
        describe(
            "switchyard_expert_load_imbalance",
            None,
            "Max over mean EP-rank load per MoE layer over the recent steps.",
        );
        describe(
            "switchyard_alltoall_bytes_total",
            Some(Unit::Bytes),
            "Bytes moved between ranks by the All-to-All and other collectives.",
        );
        describe(
            "switchyard_rebalances_total",
            None,
            "Expert placement rebalances done.",
        );
        describe(
            "switchyard_expert_bytes_migrated_total",
            Some(Unit::Bytes),
            "Expert weight bytes copied into slots by rebalances.",
        );
        r.describe_gauge(
            "switchyard_rebalance_imbalance".into(),
            None,
            "Max over mean EP-rank load per MoE layer before and after the last rebalance.".into(),
        );
        describe(
            "switchyard_requests_total",
            None,
            "Requests by outcome (finished, cancelled, rejected, failed).",
        );
        describe(
            "switchyard_prompt_tokens_total",
            None,
            "Prompt tokens of admitted requests.",
        );
        describe(
            "switchyard_generation_tokens_total",
            None,
            "Tokens generated.",
        );
        r.describe_histogram(
            TTFT.into(),
            Some(Unit::Seconds),
            "Time from arrival to the first generated token.".into(),
        );
        r.describe_histogram(
            TPOT.into(),
            Some(Unit::Seconds),
            "Mean time between generated tokens of a request.".into(),
        );
        describe(
            "switchyard_requests_running",
            None,
            "Requests in the running batch.",
        );
        describe(
            "switchyard_requests_waiting",
            None,
            "Requests waiting for admission (or preempted).",
        );
        describe(
            "switchyard_kv_blocks_used",
            None,
            "KV-cache blocks held by sequences.",
        );
        describe(
            "switchyard_kv_blocks_capacity",
            None,
            "KV-cache blocks in the pool.",
        );
        describe(
            "switchyard_kv_blocks_cached",
            None,
            "KV-cache blocks a later request can find by their tokens (held or free).",
        );
        describe(
            "switchyard_prefix_cache_queries_total",
            None,
            "Tokens of admitted requests looked up in the prefix cache.",
        );
        describe(
            "switchyard_prefix_cache_hits_total",
            None,
            "Tokens of admitted requests found in the prefix cache (not computed again).",
        );
        describe(
            "switchyard_engine_steps_total",
            None,
            "Forward steps the engine ran.",
        );
        describe(
            "switchyard_preemptions_total",
            None,
            "Running requests preempted (to be recomputed) because KV blocks ran out.",
        );
        let per_expert = |name: &'static str| -> Vec<Vec<_>> {
            experts
                .iter()
                .enumerate()
                .map(|(l, &n)| {
                    (0..n)
                        .map(|e| {
                            (
                                name,
                                vec![("layer", l.to_string()), ("expert", e.to_string())],
                            )
                        })
                        .collect()
                })
                .collect()
        };
        let expert_tokens = per_expert("switchyard_expert_tokens_total")
            .into_iter()
            .map(|l| l.into_iter().map(|(n, lb)| counter(n, &lb)).collect())
            .collect();
        let expert_replicas: Vec<Vec<Gauge>> = per_expert("switchyard_expert_replicas")
            .into_iter()
            .map(|l| l.into_iter().map(|(n, lb)| gauge(n, &lb)).collect())
            .collect();
        expert_replicas.iter().flatten().for_each(|g| g.set(1.0));
        let imbalance = experts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(l, _)| {
                gauge(
                    "switchyard_expert_load_imbalance",
                    &[("layer", l.to_string())],
                )
            })
            .collect();
        let kv_capacity = gauge("switchyard_kv_blocks_capacity", &[]);
        kv_capacity.set(kv_blocks as f64);
        let histogram = |name: &'static str| r.register_histogram(&Key::from_name(name), &meta());
        Self {
            expert_tokens,
            expert_replicas,
            rank_tokens: Mutex::new((0..ranks).map(|k| rank_counter(r, k)).collect()),
            imbalance,
            alltoall_bytes: counter("switchyard_alltoall_bytes_total", &[]),
            rebalances: counter("switchyard_rebalances_total", &[]),
            migrated_bytes: counter("switchyard_expert_bytes_migrated_total", &[]),
            replication_seen: Mutex::new((0, 0)),
            requests: Outcome::ALL
                .iter()
                .map(|o| {
                    counter(
                        "switchyard_requests_total",
                        &[("outcome", o.label().to_string())],
                    )
                })
                .collect(),
            prompt_tokens: counter("switchyard_prompt_tokens_total", &[]),
            generation_tokens: counter("switchyard_generation_tokens_total", &[]),
            ttft: histogram(TTFT),
            tpot: histogram(TPOT),
            running: gauge("switchyard_requests_running", &[]),
            waiting: gauge("switchyard_requests_waiting", &[]),
            kv_used: gauge("switchyard_kv_blocks_used", &[]),
            kv_capacity,
            kv_cached: gauge("switchyard_kv_blocks_cached", &[]),
            prefix_queries: counter("switchyard_prefix_cache_queries_total", &[]),
            prefix_hits: counter("switchyard_prefix_cache_hits_total", &[]),
            steps: counter("switchyard_engine_steps_total", &[]),
            preemptions: counter("switchyard_preemptions_total", &[]),
            handle,
            recorder,
        }
    }

    /// Metrics for the model an executor runs (one EP rank per entry of `rank_tokens`).
    pub fn for_executor(executor: &dyn Executor, ranks: usize) -> Self {
        let cfg = executor.config();
        let experts: Vec<usize> = (0..cfg.num_layers)
            .map(|l| match &cfg.moe {
                Some(m) if cfg.is_sparse_layer(l) => m.n_experts,
                _ => 0,
            })
            .collect();
        Self::new(&experts, ranks, executor.num_blocks())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        // Keep the recorder alive as long as the handles; rendering goes through its handle.
        let _ = &self.recorder;
        self.handle.render()
    }

    /// Counts the routing, rank loads and communication of one forward step; `imbalance[l]`
    /// is the recent max/mean rank load of MoE layer l.
    pub fn record_step(&self, out: &StepOutput, imbalance: &[f64]) {
        self.steps.increment(1);
        for (layer, counts) in self.expert_tokens.iter().zip(&out.expert_counts) {
            for (c, &n) in layer.iter().zip(counts) {
                c.increment(n);
            }
        }
        let mut ranks = self.rank_tokens.lock().unwrap_or_else(|p| p.into_inner());
        for layer in &out.rank_tokens {
            while ranks.len() < layer.len() {
                let k = ranks.len();
                ranks.push(rank_counter(&self.recorder, k));
            }
            for (c, &n) in ranks.iter().zip(layer) {
                c.increment(n);
            }
        }
        drop(ranks);
        for (g, &v) in self.imbalance.iter().zip(imbalance) {
            g.set(v);
        }
        self.alltoall_bytes.increment(out.comm_bytes);
    }

    /// Counts running sequences preempted for lack of KV blocks.
    pub fn record_preemptions(&self, n: usize) {
        self.preemptions.increment(n as u64);
    }

    /// Counts a request by how it ended.
    pub fn record_outcome(&self, outcome: Outcome) {
        self.requests[outcome as usize].increment(1);
    }

    /// Counts an admitted prompt.
    pub fn record_prompt(&self, tokens: usize) {
        self.prompt_tokens.increment(tokens as u64);
    }

    /// Counts generated tokens.
    pub fn record_generated(&self, tokens: usize) {
        self.generation_tokens.increment(tokens as u64);
    }

    /// Time to the first token of a request.
    pub fn record_ttft(&self, d: Duration) {
        self.ttft.record(d.as_secs_f64());
    }

    /// Mean time per output token of a finished request (after its first).
    pub fn record_tpot(&self, d: Duration) {
        self.tpot.record(d.as_secs_f64());
    }

    /// Scheduler occupancy.
    pub fn record_queue(&self, running: usize, waiting: usize, kv: KvOccupancy) {
        self.running.set(running as f64);
        self.waiting.set(waiting as f64);
        self.kv_used.set(kv.used as f64);
        self.kv_cached.set(kv.cached as f64);
    }

    /// Counts the prefix-cache lookups of the requests admitted in a step.
    pub fn record_prefix_lookups(&self, queried: usize, hit: usize) {
        self.prefix_queries.increment(queried as u64);
        self.prefix_hits.increment(hit as u64);
    }

    /// Follows the replication manager: replica counts per expert, rebalances done, expert
    /// bytes migrated, and each MoE layer's imbalance before and after the last rebalance.
    pub fn record_replication(&self, status: &ReplicationStatus) {
        let mut seen = self
            .replication_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.rebalances
            .increment(status.rebalances_total.saturating_sub(seen.0));
        self.migrated_bytes
            .increment(status.bytes_migrated_total.saturating_sub(seen.1));
        *seen = (status.rebalances_total, status.bytes_migrated_total);
        for (&layer, counts) in status.layers.iter().zip(&status.replicas) {
            for (g, &n) in self
                .expert_replicas
                .get(layer)
                .into_iter()
                .flatten()
                .zip(counts)
            {
                g.set(f64::from(n));
            }
        }
        if let Some(last) = &status.last {
            let r = &self.recorder;
            for (when, values) in [
                ("before", &last.imbalance_before),
                ("after", &last.imbalance_after),
            ] {
                for (&layer, &v) in status.layers.iter().zip(values.iter()) {
                    let key = Key::from_parts(
                        "switchyard_rebalance_imbalance",
                        labels(&[("layer", layer.to_string()), ("when", when.to_string())]),
                    );
                    r.register_gauge(&key, &meta()).set(v);
                }
            }
        }
    }

    /// The KV pool size.
    pub fn record_kv_capacity(&self, blocks: usize) {
        self.kv_capacity.set(blocks as f64);
    }
}
