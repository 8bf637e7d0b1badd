//! Building a model from a checkpoint directory or from a config with random weights.

use super::Model;
use crate::backend::Device;
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
            None => Arc::new(Checkpoint::open(&self.dir)?.with_quantization(config.quantization)),
        };
        Ok((config, src))
    }

    /// [`Self::weights`] for a model that will run on `device`: random weights for a GPU are
    /// built on it by kernels (no f32 copy on the host, seconds for tens of gigabytes; their
    /// values differ from the CPU generator's, see `backend::cuda::weights`).
    pub fn weights_on(&self, device: &Device) -> Result<(ModelConfig, Arc<dyn WeightSource>)> {
        #[cfg(feature = "cuda")]
        if let (Some(seed), Device::Cuda(dev)) = (self.random_weights, device) {
            let config = ModelConfig::from_dir(&self.dir)?;
            let src = crate::backend::cuda::weights::GpuRandomWeights::new(seed, dev.clone());
            return Ok((config, Arc::new(src)));
        }
        let _ = device;
        self.weights()
    }

    /// The model with its tokenizer, on `device`: each layer moved there as it is read (random
    /// weights for a GPU are built there directly).
    pub fn load_on(&self, device: &Device) -> Result<LoadedModel> {
        let (config, src) = self.weights_on(device)?;
        let model = Model::load_on(&config, src.as_ref(), device)?;
        Ok(LoadedModel {
            model,
            tokenizer: Tokenizer::from_dir(&self.dir)?,
            dir: self.dir.clone(),
        })
    }

    /// Reads config.json, the weights and the tokenizer.
    pub fn load(&self) -> Result<LoadedModel> {
        let config = ModelConfig::from_dir(&self.dir)?;
        let model = match self.random_weights {
            Some(seed) => Model::load(&config, &RandomWeights::new(seed) as &dyn WeightSource)?,
            None => {
                let ckpt = Checkpoint::open(&self.dir)?.with_quantization(config.quantization);
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
