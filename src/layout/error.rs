//! Why a layout cannot work: each variant names the wrong number and what would fit.

use std::path::PathBuf;
use switchyard_experts::PlacementError;

/// A layout file that cannot be read, or a layout that cannot run a model.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The layout (or placement) file cannot be read.
    #[error("layout {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML (or JSON for a placement file) of the expected shape.
    #[error("layout {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field out of its range.
    #[error("layout: {field} = {value}: {why}")]
    Invalid {
        /// The field, e.g. "scheduler.memory_fraction".
        field: &'static str,
        /// Its value.
        value: String,
        /// What the range is.
        why: String,
    },
    /// Attention heads cannot be split over the TP group.
    #[error("tp {tp} does not divide num_attention_heads {heads}; tp values that would: {fits}")]
    TpHeads {
        /// The tp asked for.
        tp: usize,
        /// The model's query heads.
        heads: usize,
        /// Divisors of heads, e.g. "1, 2, 4, 8".
        fits: String,
    },
    /// KV heads can be neither split nor evenly replicated over the TP group.
    #[error(
        "tp {tp} and num_key_value_heads {kv_heads}: one must divide the other \
         (split or replicate KV heads); tp values that would: {fits}"
    )]
    TpKvHeads {
        /// The tp asked for.
        tp: usize,
        /// The model's KV heads.
        kv_heads: usize,
        /// tp values that work with both head counts.
        fits: String,
    },
    /// TP groups do not tile the stage's EP ranks.
    #[error(
        "tp {tp} does not divide ep {ep}; ep values that would: multiples of {tp} (e.g. {fits})"
    )]
    TpEp {
        /// The tp asked for.
        tp: usize,
        /// The ep asked for.
        ep: usize,
        /// Some ep values that would.
        fits: String,
    },
    /// The expert-TP split does not tile the stage or the expert's width.
    #[error("moe_tp {moe_tp} must divide ep {ep} and the expert intermediate size {intermediate}; moe_tp values that would: {fits}")]
    MoeTp {
        /// The moe_tp asked for.
        moe_tp: usize,
        /// The ep asked for.
        ep: usize,
        /// Intermediate size of one expert.
        intermediate: usize,
        /// Values that would.
        fits: String,
    },
    /// Physical expert slots cannot be split evenly over the expert groups.
    #[error(
        "experts ({experts}) + redundant ({redundant}) = {slots} slots is not divisible by \
         {groups} expert groups (ep {ep} / moe_tp {moe_tp}); redundant values that would: {fits}"
    )]
    ExpertsNotDivisible {
        /// Logical experts of the model.
        experts: usize,
        /// Redundant slots asked for.
        redundant: usize,
        /// Their sum.
        slots: usize,
        /// Expert groups (ep / moe_tp).
        groups: usize,
        /// The ep.
        ep: usize,
        /// The moe_tp.
        moe_tp: usize,
        /// Redundant values that would, e.g. "0, 8 or 16".
        fits: String,
    },
    /// More stages than layers.
    #[error("pp {pp} is more than num_hidden_layers {layers}; pp must be at most {layers}")]
    PpLayers {
        /// The pp asked for.
        pp: usize,
        /// The model's layers.
        layers: usize,
    },
    /// An explicit `[pipeline] layers` split that does not cover the model.
    #[error("[pipeline] layers = {split:?} {why}; e.g. {fits:?}")]
    PipelineSplit {
        /// The split given.
        split: Vec<usize>,
        /// What is wrong, with the numbers.
        why: String,
        /// An even split that would.
        fits: Vec<usize>,
    },
    /// The rank count does not match the machines.
    #[error(
        "world size ep {ep} x pp {pp} = {world} ranks does not match nodes {nodes} x \
         gpus_per_node {gpus_per_node} = {gpus} GPUs"
    )]
    WorldSize {
        /// The ep.
        ep: usize,
        /// The pp.
        pp: usize,
        /// ep * pp.
        world: usize,
        /// Nodes.
        nodes: usize,
        /// GPUs per node.
        gpus_per_node: usize,
        /// nodes * gpus_per_node.
        gpus: usize,
    },
    /// An explicit placement that does not fit the model or the layout.
    #[error("placement of MoE layer {layer}: {message}")]
    Placement {
        /// The layer (model layer index).
        layer: usize,
        /// What is wrong.
        message: String,
    },
    /// A placement the experts crate refused.
    #[error("placement of MoE layer {layer}: {source}")]
    PlacementRefused {
        /// The layer (model layer index).
        layer: usize,
        /// The experts crate's error.
        source: PlacementError,
    },
    /// Weights plus the minimum KV cache do not fit a GPU.
    #[error(
        "stage {stage} needs {needed_gb:.2} GB per rank (weights {weights_gb:.2} GB + KV cache \
         for {min_tokens} tokens {kv_gb:.2} GB) but a rank may use {usable_gb:.2} GB \
         ({gpu_gb:.2} GB x memory_fraction {fraction}); it needs GPUs of at least \
         {min_gpu_gb:.1} GB, or {hint}"
    )]
    Memory {
        /// The pipeline stage.
        stage: usize,
        /// weights + KV.
        needed_gb: f64,
        /// Weights per rank.
        weights_gb: f64,
        /// KV for `min_tokens`.
        kv_gb: f64,
        /// Tokens the KV minimum holds (max_batched_tokens).
        min_tokens: usize,
        /// gpu * fraction.
        usable_gb: f64,
        /// GPU memory.
        gpu_gb: f64,
        /// memory_fraction.
        fraction: f64,
        /// needed / fraction.
        min_gpu_gb: f64,
        /// Which knob to turn.
        hint: String,
    },
    /// Ranks that cannot fit the GPU they were asked to run on, by the driver's count of that
    /// GPU's free memory.
    #[error(
        "{gpu} has {free_gb:.1} GB free of {total_gb:.1} GB, but {ranks} need at least \
         {needed_gb:.1} GB there (bf16 weights {weights_gb:.1} GB + KV cache for \
         {cache_tokens} tokens a rank {kv_gb:.1} GB); spread the model over more GPUs (raise \
         --ep or --pp, one rank a GPU with --gpus; `switchyard plan` shows the bytes of each \
         rank) or cache fewer tokens"
    )]
    GpuRoom {
        /// The GPU ("cuda:0 (NVIDIA H100 80GB HBM3)").
        gpu: String,
        /// The ranks on it ("the one rank holding the whole model", "rank 1", "ranks [0, 2]").
        ranks: String,
        /// weights + KV.
        needed_gb: f64,
        /// The model's weights in bf16.
        weights_gb: f64,
        /// The KV cache for `cache_tokens`.
        kv_gb: f64,
        /// Tokens the cache is sized for.
        cache_tokens: u64,
        /// Free memory the driver reports.
        free_gb: f64,
        /// The GPU's memory.
        total_gb: f64,
    },
    /// No layout fits the GPUs given to `--recommend`.
    #[error("no layout fits: {0}")]
    NoFit(String),
}
