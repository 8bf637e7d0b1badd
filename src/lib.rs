//! switchyard: an MoE-first expert-parallel inference engine.
//!
//! Where things live:
//! - [`config`]: the model's shape from config.json.
//! - [`checkpoint`]: safetensors checkpoints (or random weights) → tensors.
//! - [`tensor`], [`ops`], [`backend`]: tensors, the fused ops, and the kernels behind them.
//! - [`attention`]: attention layers over the paged [`kv_cache`].
//! - [`moe`]: routers, expert banks and the MoE block (dense MLPs are its one-expert case).
//! - [`model`]: the decoder stack that ties them together.
//! - [`comm`]: communicators between ranks (TP, EP, PP groups); in-process ranks as threads.
//! - [`parallel`]: what each rank holds and the executor that runs ranks as threads.
//! - [`cluster`]: multi-node jobs: rendezvous, TCP communicators between nodes, node 0 driving.
//! - [`replication`]: live routing statistics, rebalancing hot experts onto spare slots while serving.
//! - [`layout`]: parallel layouts from configs/*.toml, their checks, memory and traffic plans.
//! - [`engine`]: sequences, prefill and decode steps, generation.
//! - [`scheduler`]: the serving engine loop (continuous batching, chunked prefill, preemption).
//! - [`server`]: the OpenAI-compatible HTTP server; [`metrics`]: Prometheus metrics and expert loads.
//!
//! Routing math, placement and dispatch policy live in the `switchyard-experts` crate.

pub mod attention;
pub mod backend;
pub mod checkpoint;
pub mod cluster;
pub mod comm;
pub mod config;
pub mod engine;
pub mod error;
pub mod kv_cache;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod moe;
pub mod ops;
pub mod parallel;
pub mod replication;
pub mod scheduler;
pub mod server;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
