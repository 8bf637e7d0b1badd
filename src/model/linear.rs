//! A linear layer's weights, in PyTorch's [out, in] layout.

use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// [out, in].
    pub weight: Tensor,
    /// [out], when the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = src.load(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(src.load(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Stacks layers with the same input along the output dim (fused QKV, fused gate/up).
    pub fn concat_out(parts: &[Linear]) -> Result<Self> {
        let inp = parts[0].in_features();
        let has_bias = parts.iter().any(|p| p.bias.is_some());
        let mut out = 0;
        let mut zeros = Vec::new();
        for p in parts {
            if p.in_features() != inp {
                return Err(Error::Shape(format!(
                    "cannot fuse linears with inputs {inp} and {}",
                    p.in_features()
                )));
            }
            out += p.out_features();
            if has_bias && p.bias.is_none() {
                zeros.push(Tensor::zeros([p.out_features()]).to_device(&p.weight.device())?);
            }
        }
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        // On the device the weights live on (a GPU for weights built there).
        let weight = Tensor::concat(&weights, [out, inp])?;
        let bias = if has_bias {
            let mut zeros = zeros.iter();
            let biases: Vec<&Tensor> = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => b,
                    None => zeros.next().expect("one zero bias per missing bias"),
                })
                .collect();
            Some(Tensor::concat(&biases, [out])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Output rows `start..start + len` (a column-parallel shard).
    pub fn rows(self, (start, len): (usize, usize)) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow_rows(start, len)?,
            bias: self.bias.map(|b| b.narrow_rows(start, len)).transpose()?,
        })
    }

    /// Input columns `start..start + len` (a row-parallel shard); the bias stays only where
    /// `keep_bias` (one rank adds it to the reduced sum).
    pub fn cols(self, (start, len): (usize, usize), keep_bias: bool) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow_cols(start, len)?,
            bias: self.bias.filter(|_| keep_bias),
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Applies the layer to the rows of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }

    /// Moves the layer to `device`: the weight as bf16 on a GPU, the bias as f32.
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        self.weight = self.weight.to_device_bf16(device)?;
        if let Some(b) = &mut self.bias {
            *b = b.to_device(device)?;
        }
        Ok(())
    }

    /// Bytes of the weights in their stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.weight.stored_bytes() + self.bias.as_ref().map_or(0, Tensor::stored_bytes)
    }
}
