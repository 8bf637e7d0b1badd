//! A model's MoE block on one GPU through the fused layer of [`super::moe`]: the router logits
//! GEMM in f32 (cuBLAS), then [`MoeWorkspace`]'s fused top-k, device permutation, grouped GEMMs
//! and combine, with the shared experts run as a one-expert fused layer whose output is the
//! combine's addend (Qwen2-MoE's sigmoid gate becomes that layer's router weight). Nothing in the
//! block waits for the GPU: the tokens each expert received stay on the device (the offsets of
//! every layer are copied into one buffer) until [`MoeScratch::take_counts`] reads them once per
//! step, after the step's logits.

use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;
use switchyard_experts::RouterConfig;

use super::moe::{GemmPath, MoeShape, MoeWorkspace, RouterParams};
use super::ops::raw;
use super::ops::{gpu, grid_for, wrap, THREADS};
use super::overlap::{self, Args};
use super::storage::{alloc, CudaHandle, DevBuf};
use super::{dev_err, CudaDevice, Kernel};
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{DType, Tensor};

/// The always-on experts of a block as a one-expert fused layer.
#[derive(Debug, Clone)]
struct SharedExpert {
    shape: MoeShape,
    /// Softmax over one expert (weight 1), or sigmoid of the gate logit (Qwen2-MoE).
    router: RouterParams,
    gate_up: Tensor,
    down: Tensor,
    /// [1, hidden]: the shared-expert gate, when the block has one.
    gate: Option<Tensor>,
}

/// One block's weights in the form the fused kernels take (shared with the block's tensors, no
/// copy): stacked bf16 experts, the f32 router and its correction bias.
#[derive(Debug, Clone)]
pub struct FusedMoe {
    layer: usize,
    shape: MoeShape,
    router: RouterParams,
    /// [n_experts, hidden] f32.
    gate: Tensor,
    /// [n_experts] f32 (noaux_tc selection bias).
    bias: Option<Tensor>,
    /// [n_experts, 2·inter, hidden] bf16.
    gate_up: Tensor,
    /// [n_experts, hidden, inter] bf16.
    down: Tensor,
    shared: Option<SharedExpert>,
}

/// The pieces of a block [`FusedMoe::new`] takes: every tensor already on the GPU.
#[derive(Debug)]
pub struct FusedParts<'a> {
    /// The model layer (the row of the step's expert counts).
    pub layer: usize,
    /// The routing variant.
    pub router: &'a RouterConfig,
    /// [n_experts, hidden] router weights (f32).
    pub gate: &'a Tensor,
    /// The noaux_tc correction bias.
    pub bias: Option<&'a [f32]>,
    /// Stacked experts [n, 2I, H] and [n, H, I] (bf16).
    pub experts: (&'a Tensor, &'a Tensor),
    /// The shared experts' stacked weights (one expert) and their gate, if any.
    pub shared: Option<(&'a Tensor, &'a Tensor, Option<&'a Tensor>)>,
}

fn bf16_of(t: &Tensor) -> Result<&CudaSlice<bf16>> {
    gpu(t)?
        .bf16_slice()
        .ok_or_else(|| Error::Device(format!("a bf16 weight was expected, got f32 {}", t.shape())))
}

fn f32_of(t: &Tensor) -> Result<&CudaSlice<f32>> {
    gpu(t)?.f32_slice().ok_or_else(|| {
        Error::Device(format!(
            "an f32 tensor was expected, got bf16 {}",
            t.shape()
        ))
    })
}

/// The shape of a stacked bank, or why the fused kernels cannot take it.
fn bank_shape(gate_up: &Tensor, down: &Tensor, top_k: usize) -> Option<MoeShape> {
    let (g, d) = (gate_up.dims(), down.dims());
    if g.len() != 3 || d.len() != 3 || g[0] != d[0] || g[1] != 2 * d[2] || g[2] != d[1] {
        return None;
    }
    let shape = MoeShape {
        hidden: d[1],
        inter: d[2],
        n_experts: d[0],
        top_k,
    };
    let on_gpu = |t: &Tensor| gpu(t).is_ok_and(|s| s.is_bf16());
    (shape.validate().is_ok() && on_gpu(gate_up) && on_gpu(down)).then_some(shape)
}

impl FusedMoe {
    /// The fused form of a block, or `None` where the kernels' constraints do not hold (widths
    /// not multiples of the tiles, weights not bf16 on a GPU, too many experts or groups): such
    /// a block keeps the general path.
    pub fn new(p: FusedParts) -> Result<Option<Self>> {
        let Some(shape) = bank_shape(p.experts.0, p.experts.1, p.router.top_k) else {
            return Ok(None);
        };
        if shape.n_experts != p.router.n_experts {
            return Ok(None);
        }
        let Ok(router) = RouterParams::new(p.router) else {
            return Ok(None);
        };
        let shared = match p.shared {
            None => None,
            Some((gate_up, down, gate)) => {
                let Some(shape) = bank_shape(gate_up, down, 1).filter(|s| s.n_experts == 1) else {
                    return Ok(None);
                };
                let mut cfg = RouterConfig::qwen_moe(1, 1, false);
                if gate.is_some() {
                    cfg.score = switchyard_experts::ScoreFunction::Sigmoid;
                }
                Some(SharedExpert {
                    shape,
                    router: RouterParams::new(&cfg)?,
                    gate_up: gate_up.clone(),
                    down: down.clone(),
                    gate: gate.cloned(),
                })
            }
        };
        let dev = gpu(p.gate)?.device().clone();
        let bias = match p.bias {
            Some(b) => Some(wrap(
                &dev,
                [b.len()],
                DType::F32,
                DevBuf::F32(dev.upload(b)?),
            )),
            None => None,
        };
        f32_of(p.gate)?;
        Ok(Some(Self {
            layer: p.layer,
            shape,
            router,
            gate: p.gate.clone(),
            bias,
            gate_up: p.experts.0.clone(),
            down: p.experts.1.clone(),
            shared,
        }))
    }

    /// The layer's dimensions.
    pub fn shape(&self) -> MoeShape {
        self.shape
    }

    /// The block for the rows of `x` [T, hidden] (f32): the routed experts' weighted sum plus the
    /// shared experts, [T, hidden] f32. Queues everything on the device's stream; the step's
    /// expert counts wait in `scratch`.
    pub fn forward(&self, x: &Tensor, scratch: &mut MoeScratch) -> Result<Tensor> {
        let dev = gpu(x)?.device().clone();
        let (t, h) = (x.dims()[0], self.shape.hidden);
        if x.dims() != [t, h] {
            return Err(Error::Shape(format!(
                "MoE block of width {h}: input {}",
                x.shape()
            )));
        }
        if t == 0 {
            scratch.record_empty(self.layer, self.shape.n_experts);
            return Tensor::zeros_on([0, h], &crate::backend::Device::Cuda(dev));
        }
        let xb = super::ops::bf16_copy(&dev, raw(&dev, f32_of(x)?), t * h)?;
        let shared = match &self.shared {
            None => None,
            Some(s) => {
                let gate_logits = s
                    .gate
                    .as_ref()
                    .map(|g| ops::linear(x, g, None))
                    .transpose()?;
                if gate_logits.is_none() {
                    scratch.ensure_zeros(t)?;
                }
                let i = scratch.workspace(s.shape, t)?;
                let (ws, zeros) = (&mut scratch.workspaces[i], &scratch.zeros);
                let logits = match &gate_logits {
                    Some(g) => f32_of(g)?,
                    None => zeros.as_ref().expect("made by ensure_zeros"),
                };
                let mut out = alloc::<bf16>(&dev, t * h)?;
                let path = GemmPath::for_load(t, 1);
                ws.route_and_permute(&dev, logits, None, &s.router, t, path)?;
                ws.gate_up(&dev, &xb, bf16_of(&s.gate_up)?, t, path)?;
                ws.down(&dev, bf16_of(&s.down)?, t, path)?;
                ws.combine(&dev, t, None, &mut out)?;
                Some(out)
            }
        };
        let logits = ops::linear(x, &self.gate, None)?;
        let bias = self.bias.as_ref().map(f32_of).transpose()?;
        let s = self.shape;
        let path = GemmPath::for_load(t * s.top_k, s.n_experts);
        let i = scratch.workspace(s, t)?;
        let ws = &mut scratch.workspaces[i];
        ws.route_and_permute(&dev, f32_of(&logits)?, bias, &self.router, t, path)?;
        scratch.record_offsets(self.layer, i)?;
        let ws = &mut scratch.workspaces[i];
        ws.gate_up(&dev, &xb, bf16_of(&self.gate_up)?, t, path)?;
        ws.down(&dev, bf16_of(&self.down)?, t, path)?;
        let mut out = alloc::<bf16>(&dev, t * h)?;
        ws.combine(&dev, t, shared.as_ref(), &mut out)?;
        let y = alloc::<f32>(&dev, t * h)?;
        cast(&dev, "cast_bf16_f32", &out, &y, t * h)?;
        Ok(wrap(&dev, [t, h], DType::F32, DevBuf::F32(y)))
    }
}

fn cast<A, B>(
    dev: &CudaDevice,
    name: &str,
    src: &CudaSlice<A>,
    dst: &CudaSlice<B>,
    n: usize,
) -> Result<()> {
    let f = dev.function(Kernel::Ops, name)?;
    let (sp, dp, nn) = (raw(dev, src), raw(dev, dst), n as i64);
    let mut b = Args::new();
    b.arg(&sp).arg(&dp).arg(&nn);
    let cfg = LaunchConfig {
        grid_dim: (grid_for(n) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: both buffers hold at least n elements of the kernel's types (callers allocate
    // them for n), and the kernel touches elements 0..n only, after the previous kernel ends.
    unsafe { overlap::launch(dev, &f, cfg, &mut b, "launching a cast") }
}

/// Where one layer's routing of this step waits on the device.
#[derive(Debug, Clone, Copy)]
struct PendingCounts {
    layer: usize,
    n_experts: usize,
    /// First element of the layer's offsets in [`MoeScratch::counts`]; None when the layer
    /// had no tokens.
    at: Option<usize>,
}

/// What the fused blocks of one rank share across layers and steps: one workspace per layer
/// shape (grown to the largest step seen), the zeros an ungated shared expert routes by, and the
/// step's per-layer expert offsets.
#[derive(Debug)]
pub struct MoeScratch {
    dev: CudaHandle,
    workspaces: Vec<MoeWorkspace>,
    zeros: Option<CudaSlice<f32>>,
    /// Each fused layer's [n_experts + 1] offsets of this step, back to back.
    counts: CudaSlice<i32>,
    used: usize,
    pending: Vec<PendingCounts>,
}

impl MoeScratch {
    /// Empty scratch on `dev` (buffers come with the first step).
    pub fn new(dev: &CudaHandle) -> Result<Self> {
        Ok(Self {
            dev: dev.clone(),
            workspaces: Vec::new(),
            zeros: None,
            counts: alloc::<i32>(dev, 1024)?,
            used: 0,
            pending: Vec::new(),
        })
    }

    /// The index of the workspace for `shape`, holding at least `tokens` tokens (reallocated,
    /// rounded up to a power of two, when a step is larger than any before).
    fn workspace(&mut self, shape: MoeShape, tokens: usize) -> Result<usize> {
        let cap = tokens.next_power_of_two();
        match self.workspaces.iter().position(|w| w.shape == shape) {
            Some(i) => {
                if self.workspaces[i].max_tokens < tokens {
                    self.workspaces[i] = MoeWorkspace::new(&self.dev, shape, cap)?;
                }
                Ok(i)
            }
            None => {
                self.workspaces
                    .push(MoeWorkspace::new(&self.dev, shape, cap)?);
                Ok(self.workspaces.len() - 1)
            }
        }
    }

    /// At least `n` f32 zeros in [`Self::zeros`] (router logits of a one-expert softmax: weight 1).
    fn ensure_zeros(&mut self, n: usize) -> Result<()> {
        if self.zeros.as_ref().is_none_or(|z| z.len() < n) {
            self.zeros = Some(self.dev.zeros(n.next_power_of_two())?);
        }
        Ok(())
    }

    /// Copies workspace `ws`'s expert offsets into the step's counts (device to device).
    fn record_offsets(&mut self, layer: usize, ws: usize) -> Result<()> {
        let e = self.workspaces[ws].shape.n_experts;
        let need = self.used + e + 1;
        if self.counts.len() < need {
            let mut bigger = alloc::<i32>(&self.dev, need.next_power_of_two())?;
            if self.used > 0 {
                self.dev
                    .stream()
                    .memcpy_dtod(
                        &self.counts.slice(..self.used),
                        &mut bigger.slice_mut(..self.used),
                    )
                    .map_err(dev_err("growing the expert counts"))?;
            }
            self.counts = bigger;
        }
        let src = self.workspaces[ws].offsets.slice(..e + 1);
        self.dev
            .stream()
            .memcpy_dtod(&src, &mut self.counts.slice_mut(self.used..need))
            .map_err(dev_err("saving the expert offsets"))?;
        self.pending.push(PendingCounts {
            layer,
            n_experts: e,
            at: Some(self.used),
        });
        self.used = need;
        Ok(())
    }

    fn record_empty(&mut self, layer: usize, n_experts: usize) {
        self.pending.push(PendingCounts {
            layer,
            n_experts,
            at: None,
        });
    }

    /// The tokens each expert received in every fused layer since the last call, as (model
    /// layer, counts). One copy from the device (waiting for the stream), none when no fused
    /// layer ran; call it once per step, after the logits.
    pub fn take_counts(&mut self) -> Result<Vec<(usize, Vec<u64>)>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let host = if self.used > 0 {
            self.dev
                .stream()
                .clone_dtoh(&self.counts.slice(..self.used))
                .map_err(dev_err("reading the expert counts"))?
        } else {
            Vec::new()
        };
        let out = self
            .pending
            .drain(..)
            .map(|p| {
                let counts = match p.at {
                    Some(at) => host[at..=at + p.n_experts]
                        .windows(2)
                        .map(|w| (w[1] - w[0]) as u64)
                        .collect(),
                    None => vec![0; p.n_experts],
                };
                (p.layer, counts)
            })
            .collect();
        self.used = 0;
        Ok(out)
    }
}
