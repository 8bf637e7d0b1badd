//! A bank of SwiGLU experts stored stacked for the grouped GEMM: `gate_up` [n, 2I, H] (gate
//! rows, then up rows) and `down` [n, H, I].

use crate::checkpoint::{CheckpointError, WeightSource};
use crate::error::Result;
use crate::ops;
use crate::tensor::{DType, Tensor};
use switchyard_experts::EMPTY_SLOT;

/// Experts of one layer (all of them, or the slots one rank holds).
#[derive(Debug, Clone)]
pub struct ExpertBank {
    gate_up: Tensor,
    down: Tensor,
    gate_up_bias: Option<Tensor>,
    down_bias: Option<Tensor>,
}

/// From this many rows a bank of one expert runs as two GEMMs on a GPU
/// ([`ExpertBank::forward_one`]); fewer (decode at small batch) stay on the grouped kernel,
/// which reads the bf16 weights once and is memory-bound there. (DeepSeek-V2-Lite on an H100:
/// time to first token of 2048 tokens 54.5 vs 135.6 ms, batch 256 decode 18.2 vs 28.0 ms a
/// step; benches/RESULTS.md, session 10.)
const ONE_EXPERT_GEMM_ROWS: usize = 64;

impl ExpertBank {
    /// Loads the experts of physical slots whose logical ids are `slots` (an [`EMPTY_SLOT`]
    /// holds zeros: no token is routed there) of a sparse block at `prefix` (e.g.
    /// `model.layers.3.mlp`), named per expert as the hub has them
    /// (`{prefix}.experts.{e}.{gate,up,down}`), or fused as transformers 5 keeps them in memory
    /// (`{prefix}.experts.gate_up_proj`, `.down_proj`).
    pub fn load_experts(
        src: &dyn WeightSource,
        prefix: &str,
        proj: [&str; 3],
        slots: &[u32],
        n_experts: usize,
        hidden: usize,
        inter: usize,
    ) -> Result<Self> {
        // Each slot's tensors in order, concatenated once on the device the source builds on.
        let mut gate_up: Vec<Tensor> = Vec::with_capacity(2 * slots.len());
        let mut down: Vec<Tensor> = Vec::with_capacity(slots.len());
        for (i, &e) in slots.iter().enumerate() {
            if e == EMPTY_SLOT {
                // Gate and up rows apart, as a loaded slot has them.
                gate_up.push(Tensor::zeros([inter, hidden]));
                gate_up.push(Tensor::zeros([inter, hidden]));
                down.push(Tensor::zeros([hidden, inter]));
                continue;
            }
            let name = |p: &str| format!("{prefix}.experts.{e}.{p}.weight");
            let gate = match src.load(&name(proj[0]), &[inter, hidden]) {
                Err(CheckpointError::MissingTensor { .. })
                    if slots[..i].iter().all(|&s| s == EMPTY_SLOT) =>
                {
                    return Self::load_fused(src, prefix, slots, hidden, inter, n_experts);
                }
                other => other?,
            };
            gate_up.push(gate);
            gate_up.push(src.load(&name(proj[1]), &[inter, hidden])?);
            down.push(src.load(&name(proj[2]), &[hidden, inter])?);
        }
        let n = slots.len();
        // The bank records the dtype the experts were stored in (bf16 when every slot is empty).
        let dtype = slots
            .iter()
            .position(|&e| e != EMPTY_SLOT)
            .map_or(DType::BF16, |i| gate_up[2 * i].dtype());
        let stack = |parts: &[Tensor], shape: [usize; 3]| -> Result<Tensor> {
            let refs: Vec<&Tensor> = parts.iter().collect();
            let t = Tensor::concat(&refs, shape)?;
            Ok(if t.is_cuda() {
                t
            } else {
                Tensor::from_f32_stored_as(shape, t.into_vec(), dtype)?
            })
        };
        Ok(Self {
            gate_up: stack(&gate_up, [n, 2 * inter, hidden])?,
            down: stack(&down, [n, hidden, inter])?,
            gate_up_bias: None,
            down_bias: None,
        })
    }

    fn load_fused(
        src: &dyn WeightSource,
        prefix: &str,
        slots: &[u32],
        hidden: usize,
        inter: usize,
        n_experts: usize,
    ) -> Result<Self> {
        let n = n_experts;
        let gate_up = src.load(
            &format!("{prefix}.experts.gate_up_proj"),
            &[n, 2 * inter, hidden],
        )?;
        let down = src.load(&format!("{prefix}.experts.down_proj"), &[n, hidden, inter])?;
        let pick = |t: &Tensor, rows: usize| -> Result<Tensor> {
            let mut v = Vec::with_capacity(slots.len() * rows);
            for &e in slots {
                match e {
                    EMPTY_SLOT => v.resize(v.len() + rows, 0.0),
                    e => v.extend_from_slice(&t.as_slice()[e as usize * rows..][..rows]),
                }
            }
            let mut dims = t.dims().to_vec();
            dims[0] = slots.len();
            Tensor::from_f32_stored_as(dims, v, t.dtype())
        };
        Ok(Self {
            gate_up: pick(&gate_up, 2 * inter * hidden)?,
            down: pick(&down, hidden * inter)?,
            gate_up_bias: None,
            down_bias: None,
        })
    }

    /// A bank from stacked `gate_up` [n, 2I, H] and `down` [n, H, I] weights.
    pub fn from_stacked(gate_up: Tensor, down: Tensor) -> Self {
        Self {
            gate_up,
            down,
            gate_up_bias: None,
            down_bias: None,
        }
    }

    /// A dense SwiGLU MLP `{prefix}.{gate,up,down}_proj` as a bank of one expert.
    pub fn load_dense(
        src: &dyn WeightSource,
        prefix: &str,
        hidden: usize,
        inter: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::load_dense_parts(src, prefix, hidden, inter, bias, 1, &[0])
    }

    /// A dense SwiGLU MLP split along its intermediate dim into `parts` experts, of which this
    /// bank holds `slots` (part ids): part p has rows p·I/parts.. of gate and up and the same
    /// columns of down, so the parts' outputs sum to the MLP's. The down bias goes to part 0.
    pub fn load_dense_parts(
        src: &dyn WeightSource,
        prefix: &str,
        hidden: usize,
        inter: usize,
        bias: bool,
        parts: usize,
        slots: &[u32],
    ) -> Result<Self> {
        let [g, u, d] = super::ExpertNames::DENSE;
        let w = |p: &str, shape: &[usize]| src.load(&format!("{prefix}.{p}.weight"), shape);
        let b = |p: &str, n: usize| -> Result<Option<Tensor>> {
            Ok(if bias {
                Some(src.load(&format!("{prefix}.{p}.bias"), &[n])?)
            } else {
                None
            })
        };
        let (gate, up, down) = (
            w(g, &[inter, hidden])?,
            w(u, &[inter, hidden])?,
            w(d, &[hidden, inter])?,
        );
        // Biases are small: read on the host whatever built them.
        let host = |t: Option<Tensor>| t.map(|t| t.into_cpu()).transpose();
        let (gate_b, up_b, down_b) = (
            host(b(g, inter)?)?,
            host(b(u, inter)?)?,
            host(b(d, hidden)?)?,
        );
        let c = inter / parts;
        let (mut gu, mut dn, mut gu_bias, mut dn_bias) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &p in slots {
            let p = p as usize;
            gu.push(gate.narrow_rows(p * c, c)?);
            gu.push(up.narrow_rows(p * c, c)?);
            dn.push(down.narrow_cols(p * c, c)?);
            if let (Some(gb), Some(ub), Some(db)) = (&gate_b, &up_b, &down_b) {
                gu_bias.extend_from_slice(&gb.as_slice()[p * c..][..c]);
                gu_bias.extend_from_slice(&ub.as_slice()[p * c..][..c]);
                match p {
                    0 => dn_bias.extend_from_slice(db.as_slice()),
                    _ => dn_bias.resize(dn_bias.len() + hidden, 0.0),
                }
            }
        }
        let n = slots.len();
        Ok(Self {
            gate_up: Tensor::concat(&gu.iter().collect::<Vec<_>>(), [n, 2 * c, hidden])?,
            down: Tensor::concat(&dn.iter().collect::<Vec<_>>(), [n, hidden, c])?,
            gate_up_bias: if bias {
                Some(Tensor::from_f32([n, 2 * c], gu_bias)?)
            } else {
                None
            },
            down_bias: if bias {
                Some(Tensor::from_f32([n, hidden], dn_bias)?)
            } else {
                None
            },
        })
    }

    /// Moves the bank to `device`: the stacked weights as bf16 on a GPU, the biases as f32.
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        self.gate_up = self.gate_up.to_device_bf16(device)?;
        self.down = self.down.to_device_bf16(device)?;
        for b in [&mut self.gate_up_bias, &mut self.down_bias]
            .into_iter()
            .flatten()
        {
            *b = b.to_device(device)?;
        }
        Ok(())
    }

    /// The stacked weights: `gate_up` [n, 2I, H] and `down` [n, H, I].
    pub fn stacked(&self) -> (&Tensor, &Tensor) {
        (&self.gate_up, &self.down)
    }

    /// Whether the experts have biases (a dense MLP's, e.g. Llama with `mlp_bias`).
    pub fn has_biases(&self) -> bool {
        self.gate_up_bias.is_some() || self.down_bias.is_some()
    }

    /// Experts in the bank.
    pub fn len(&self) -> usize {
        self.down.dims()[0]
    }

    /// Whether the bank is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the weights in their stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.gate_up.stored_bytes() + self.down.stored_bytes()
    }

    /// Rows `offsets[e]..offsets[e+1]` of `x` through expert e (grouped GEMM).
    pub fn forward_grouped(&self, x: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let rows = x.dims()[0];
        if x.is_cuda() && self.len() == 1 && rows >= ONE_EXPERT_GEMM_ROWS && offsets == [0, rows] {
            return self.forward_one(x);
        }
        let biases = self.gate_up_bias.as_ref().zip(self.down_bias.as_ref());
        ops::grouped_swiglu(x, offsets, &self.gate_up, &self.down, biases)
    }

    /// Every row of `x` through the bank's one expert (a dense MLP, a shared expert off the
    /// fused path) as two f32 GEMMs on f32 copies of the weights: down · (silu(gate · x) ⊙ up ·
    /// x). The activations keep f32, as the grouped kernel's (rounding them to bf16 for the
    /// tensor cores flipped a routing decision of the DeepSeek-V3 fixture); the copies are made
    /// per call, which prefill's row counts amortise.
    fn forward_one(&self, x: &Tensor) -> Result<Tensor> {
        let (h, inter) = (self.down.dims()[1], self.down.dims()[2]);
        let device = x.device();
        let gate_up = self
            .gate_up
            .clone()
            .reshape([2 * inter, h])?
            .to_device(&device)?;
        let down = self.down.clone().reshape([h, inter])?.to_device(&device)?;
        let gate_up_bias = self
            .gate_up_bias
            .clone()
            .map(|b| b.reshape([2 * inter]))
            .transpose()?;
        let down_bias = self.down_bias.clone().map(|b| b.reshape([h])).transpose()?;
        let act = ops::silu_mul(&ops::linear(x, &gate_up, gate_up_bias.as_ref())?)?;
        ops::linear(&act, &down, down_bias.as_ref())
    }

    /// Elements of one expert's weights: its `gate_up` rows, then its `down` rows.
    pub fn slot_len(&self) -> usize {
        (self.gate_up.numel() + self.down.numel()) / self.len().max(1)
    }

    /// A copy of the weights of local slot `slot` (`gate_up` then `down`, [`Self::slot_len`]
    /// elements): what a rebalance sends to a rank that will hold the same expert.
    pub fn slot_weights(&self, slot: usize) -> Result<Vec<f32>> {
        let (gu, dn) = self.slot_sizes(slot)?;
        let mut v = read_range(&self.gate_up, slot * gu, gu)?;
        v.extend(read_range(&self.down, slot * dn, dn)?);
        Ok(v)
    }

    /// Overwrites local slot `slot` with weights laid out as [`Self::slot_weights`] returns them.
    pub fn set_slot_weights(&mut self, slot: usize, weights: &[f32]) -> Result<()> {
        let (gu, dn) = self.slot_sizes(slot)?;
        if weights.len() != gu + dn {
            return Err(crate::Error::Shape(format!(
                "{} weights for an expert slot of {}",
                weights.len(),
                gu + dn
            )));
        }
        write_range(&mut self.gate_up, slot * gu, &weights[..gu])?;
        write_range(&mut self.down, slot * dn, &weights[gu..])
    }

    fn slot_sizes(&self, slot: usize) -> Result<(usize, usize)> {
        let n = self.len();
        if slot >= n {
            return Err(crate::Error::Shape(format!(
                "expert slot {slot} of a bank of {n}"
            )));
        }
        Ok((self.gate_up.numel() / n, self.down.numel() / n))
    }
}

/// `len` values of `t` from element `offset`, on the host (a GPU bank's slot is copied back).
fn read_range(t: &Tensor, offset: usize, len: usize) -> Result<Vec<f32>> {
    match t.storage() {
        crate::tensor::Storage::Cpu(v) => Ok(v[offset..][..len].to_vec()),
        #[cfg(feature = "cuda")]
        crate::tensor::Storage::Cuda(s) => s.read_range(offset, len),
        #[cfg(not(feature = "cuda"))]
        crate::tensor::Storage::Cuda(s) => match *s {},
    }
}

/// Overwrites `values.len()` values of `t` from element `offset` (on the GPU for a GPU bank: a
/// migrated expert is written into its slot where the bank lives).
fn write_range(t: &mut Tensor, offset: usize, values: &[f32]) -> Result<()> {
    match t.storage_mut() {
        crate::tensor::Storage::Cpu(v) => {
            v[offset..][..values.len()].copy_from_slice(values);
            Ok(())
        }
        #[cfg(feature = "cuda")]
        crate::tensor::Storage::Cuda(s) => s.write_range(offset, values),
        #[cfg(not(feature = "cuda"))]
        crate::tensor::Storage::Cuda(s) => match *s {},
    }
}
