//! Building a model from a checkpoint directory or from a config with random weights.

use super::Model;
use crate::checkpoint::{Checkpoint, RandomWeights, WeightSource};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a model's weights come from.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The checkpoint directory (config.json, *.safetensors, tokenizer.json).
    pub dir: PathBuf,
    /// Build seeded random weights of the config's shape instead of reading safetensors.
    pub random_weights: Option<u64>,
}

/// A model with what came with it.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub model: Model,
    /// The tokenizer, when the directory has one.
    pub tokenizer: Option<Tokenizer>,
    /// The directory it came from.
    pub dir: PathBuf,
}

impl ModelSource {
    /// The config and a shareable weight source (for loading shards on many rank threads).
    pub fn weights(&self) -> Result<(ModelConfig, Arc<dyn WeightSource>)> {
        let config = ModelConfig::from_dir(&self.dir)?;
        let src: Arc<dyn WeightSource> = match self.random_weights {
            Some(seed) => Arc::new(RandomWeights::new(seed)),
            None => Arc::new(Checkpoint::open(&self.dir)?),
        };
        Ok((config, src))
    }

    /// Reads config.json, the weights and the tokenizer.
    pub fn load(&self) -> Result<LoadedModel> {
        let config = ModelConfig::from_dir(&self.dir)?;
        let model = match self.random_weights {
            Some(seed) => Model::load(&config, &RandomWeights::new(seed) as &dyn WeightSource)?,
            None => {
                let ckpt = Checkpoint::open(&self.dir)?;
                let model = Model::load(&config, &ckpt)?;
                ckpt.finish_progress();
                model
            }
        };
        let tokenizer = Tokenizer::from_dir(&self.dir)?;
        Ok(LoadedModel {
            model,
            tokenizer,
            dir: self.dir.clone(),
        })
    }
}
