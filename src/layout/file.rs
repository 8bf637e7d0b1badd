//! The layout TOML file as written: every field optional, unknown fields refused.

use serde::{Deserialize, Serialize};

/// A layout file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayoutFile {
    #[serde(default)]
    pub parallel: ParallelFile,
    #[serde(default)]
    pub experts: ExpertsFile,
    #[serde(default)]
    pub scheduler: SchedulerFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineFile>,
}

/// `[parallel]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParallelFile {
    pub tp: Option<usize>,
    pub ep: Option<usize>,
    pub pp: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe_tp: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus_per_node: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_mem_gb: Option<f64>,
}

/// `[experts]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpertsFile {
    pub redundant: Option<usize>,
    pub rebalance_every: Option<usize>,
    pub window: Option<usize>,
    pub placement: Option<PlacementValue>,
}

/// `placement`: "contiguous", a path to a JSON file, or inline slot maps (-1 = empty slot).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum PlacementValue {
    Name(String),
    Maps(Vec<Vec<i64>>),
}

/// `[scheduler]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchedulerFile {
    pub max_num_seqs: Option<usize>,
    pub max_batched_tokens: Option<usize>,
    pub kv_block_size: Option<usize>,
    pub memory_fraction: Option<f64>,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineFile {
    pub layers: Vec<usize>,
}
