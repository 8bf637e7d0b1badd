//! Flags every model-running subcommand shares.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use switchyard::model::{LoadedModel, ModelSource};

/// Which model to run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json + *.safetensors [+ tokenizer.json]).
    #[arg(long)]
    pub model: PathBuf,
    /// Build seeded random weights of config.json's shape instead of reading safetensors.
    #[arg(long)]
    pub random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// Token slots per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
}

impl ModelArgs {
    /// Loads the model.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        if self.kv_block_size == 0 {
            bail!("--kv-block-size must be positive");
        }
        let source = ModelSource { dir: self.model.clone(), random_weights: self.random_weights.then_some(self.weights_seed) };
        source.load().with_context(|| format!("loading model {}", self.model.display()))
    }
}

/// Parses "1,2,3" into token ids.
pub fn parse_tokens(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("--tokens: {t:?} is not a token id")))
        .collect()
}
