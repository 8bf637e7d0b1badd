//! `RankDevices`: where a layout's ranks run (CPU, or which GPU each rank uses), and how GPU
//! ranks of one process talk: NCCL when every rank has a GPU of its own, device-to-device
//! copies between rank buffers when ranks share GPUs (what one GPU tests).

use super::RankContext;
use crate::backend::Device;
use crate::comm::{Communicator, RankComms, World};
use crate::error::{Error, Result};

/// Where the ranks of a layout run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RankDevices {
    /// Every rank on the CPU (the f32 reference).
    #[default]
    Cpu,
    /// GPU ranks: (local) rank `r` on GPU `ids[r % ids.len()]` (with more ranks than GPUs,
    /// ranks share GPUs, each on its own stream), exchanging tensors as `comm` says.
    Gpus {
        /// The GPU ordinals.
        ids: Vec<usize>,
        /// How the ranks exchange tensors.
        comm: GpuComm,
    },
}

/// How GPU ranks exchange tensors (`--gpu-comm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GpuComm {
    /// NCCL when every rank (of each node) has a GPU of its own and NCCL loads; otherwise
    /// device copies between the ranks of one process, and the host between nodes.
    #[default]
    Auto,
    /// One NCCL communicator per group (an error when NCCL cannot be used).
    Nccl,
    /// Device-to-device copies between the ranks of one process (ranks may share GPUs).
    Copies,
    /// Staged through the host by the CPU communicators (in-process channels, or TCP between
    /// nodes): what several processes sharing one GPU use.
    Host,
}

impl RankDevices {
    /// `--device cuda` over `ranks` ranks: the GPUs `gpus` names, or GPUs 0..n-1 with n the
    /// smaller of the rank count and the GPUs this machine has. Checks the ordinals exist.
    pub fn cuda(gpus: &[usize], ranks: usize) -> Result<Self> {
        let count = crate::backend::cuda_device_count()?;
        let ids = if gpus.is_empty() {
            (0..ranks.clamp(1, count.max(1))).collect()
        } else {
            if let Some(bad) = gpus.iter().find(|&&g| g >= count) {
                return Err(Error::Device(format!(
                    "--gpus names GPU {bad} but this machine has {count} GPU(s)"
                )));
            }
            let mut seen = gpus.to_vec();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != gpus.len() {
                return Err(Error::Input(format!("--gpus {gpus:?} names a GPU twice")));
            }
            gpus.to_vec()
        };
        Ok(RankDevices::Gpus {
            ids,
            comm: GpuComm::Auto,
        })
    }

    /// The same GPUs exchanging tensors as `comm` says (no change for CPU ranks).
    pub fn with_comm(self, comm: GpuComm) -> Self {
        match self {
            RankDevices::Gpus { ids, .. } => RankDevices::Gpus { ids, comm },
            cpu => cpu,
        }
    }

    /// Whether the ranks run on GPUs.
    pub fn is_gpu(&self) -> bool {
        matches!(self, RankDevices::Gpus { .. })
    }

    /// The GPU of (local) rank `rank`, if the ranks run on GPUs.
    pub fn gpu(&self, rank: usize) -> Option<usize> {
        match self {
            RankDevices::Cpu => None,
            RankDevices::Gpus { ids, .. } => ids.get(rank % ids.len().max(1)).copied(),
        }
    }

    /// How `ranks` GPU ranks of this process (all of them, or one node's when
    /// `!in_process`) exchange tensors: never [`GpuComm::Auto`]; an error when the choice
    /// cannot work (NCCL missing or ranks sharing a GPU under NCCL; device copies across
    /// processes).
    pub fn resolve(&self, ranks: usize, in_process: bool) -> Result<GpuComm> {
        let RankDevices::Gpus { ids, comm } = self else {
            return Ok(GpuComm::Host);
        };
        let own = ids.len() >= ranks;
        Ok(match comm {
            GpuComm::Auto if own && nccl_unavailable().is_none() => GpuComm::Nccl,
            GpuComm::Auto if in_process => GpuComm::Copies,
            GpuComm::Auto => GpuComm::Host,
            GpuComm::Nccl => {
                if let Some(why) = nccl_unavailable() {
                    return Err(Error::Device(why));
                }
                if !own {
                    return Err(Error::Device(format!(
                        "NCCL needs a GPU per rank, but {ranks} ranks run on GPUs {ids:?} \
                         (use --gpu-comm copies to share GPUs)"
                    )));
                }
                GpuComm::Nccl
            }
            GpuComm::Copies if !in_process => {
                return Err(Error::Device(
                    "device copies connect the ranks of one process; across nodes use \
                     --gpu-comm nccl or host"
                        .into(),
                ))
            }
            other => *other,
        })
    }

    /// What the ranks run on, as the rendezvous compares it between nodes (every node must
    /// agree, or their collectives would not match).
    pub fn describe(&self, ranks: usize, in_process: bool) -> Result<String> {
        Ok(match self {
            RankDevices::Cpu => "cpu".into(),
            RankDevices::Gpus { .. } => {
                format!("cuda, {:?}", self.resolve(ranks, in_process)?).to_lowercase()
            }
        })
    }

    /// Every rank's setup for `world` (all ranks in this process), to open in the rank's own
    /// thread with [`RankSetup::open`].
    pub fn setups(&self, world: &World) -> Result<Vec<RankSetup>> {
        let comm = self.resolve(world.grid().world(), true)?;
        #[cfg(feature = "cuda")]
        let mut links: Vec<Option<crate::comm::RankLinks>> =
            if self.is_gpu() && comm == GpuComm::Copies {
                world.device_links().into_iter().map(Some).collect()
            } else {
                Vec::new()
            };
        Ok(world
            .communicators()
            .into_iter()
            .enumerate()
            .map(|(rank, comms)| RankSetup {
                gpu: self.gpu(rank),
                comm,
                #[cfg(feature = "cuda")]
                links: links.get_mut(rank).and_then(Option::take),
                comms,
            })
            .collect())
    }
}

/// A GPU rank's device and context over host communicators `tp`, `ep`, `pp` (TCP between
/// nodes): NCCL communicators set up over them (their rank 0 hands out the unique id), or the
/// host communicators themselves, staging tensors. A CPU rank (`gpu` None) uses them as they
/// are. Every rank of every group must call this together.
pub fn open_over_host<C: Communicator + 'static>(
    [tp, ep, pp]: [C; 3],
    gpu: Option<usize>,
    comm: GpuComm,
) -> Result<(Device, RankContext)> {
    let host = |tp: C, ep: C, pp: C| RankContext {
        tp: Box::new(tp),
        ep: Box::new(ep),
        pp: Box::new(pp),
        clock: None,
    };
    let Some(gpu) = gpu else {
        return Ok((Device::Cpu, host(tp, ep, pp)));
    };
    let device = Device::cuda_rank(gpu)?;
    let ctx = match comm {
        GpuComm::Nccl => nccl_context([&tp, &ep, &pp], &device)?,
        GpuComm::Host => host(tp, ep, pp),
        other => {
            return Err(Error::Device(format!(
                "GPU ranks over host communicators cannot use {other:?}"
            )))
        }
    };
    Ok((device, ctx))
}

#[cfg(feature = "cuda")]
fn nccl_context(groups: [&dyn Communicator; 3], device: &Device) -> Result<RankContext> {
    use crate::comm::gpu::NcclComm;
    let Device::Cuda(dev) = device else {
        return Err(Error::Device("an NCCL rank needs a GPU".into()));
    };
    let [tp, ep, pp] = groups;
    Ok(RankContext {
        tp: Box::new(NcclComm::over(tp, "tp", dev.clone())?),
        ep: Box::new(NcclComm::over(ep, "ep", dev.clone())?),
        pp: Box::new(NcclComm::over(pp, "pp", dev.clone())?),
        clock: None,
    })
}

#[cfg(not(feature = "cuda"))]
fn nccl_context(_groups: [&dyn Communicator; 3], _device: &Device) -> Result<RankContext> {
    Err(no_cuda())
}

#[cfg(not(feature = "cuda"))]
fn no_cuda() -> Error {
    Error::Device(
        "this build of switchyard has no CUDA support (rebuild with `--features cuda`)".into(),
    )
}

#[cfg(feature = "cuda")]
fn nccl_unavailable() -> Option<String> {
    crate::comm::gpu::nccl_unavailable_reason()
}

#[cfg(not(feature = "cuda"))]
fn nccl_unavailable() -> Option<String> {
    Some("this build of switchyard has no CUDA support".into())
}

/// One rank's communicators and GPU before its thread opens them.
pub struct RankSetup {
    comms: RankComms,
    gpu: Option<usize>,
    comm: GpuComm,
    #[cfg(feature = "cuda")]
    links: Option<crate::comm::RankLinks>,
}

impl std::fmt::Debug for RankSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RankSetup(rank {}, gpu {:?}, {:?})",
            self.comms.coords.global, self.gpu, self.comm
        )
    }
}

impl RankSetup {
    /// In the rank's own thread (every rank of the world at once: NCCL communicators are
    /// created together): the rank's device and its communicators.
    pub fn open(self) -> Result<(Device, RankContext)> {
        let c = self.comms;
        match (self.gpu, self.comm) {
            (Some(gpu), GpuComm::Copies) => {
                #[cfg(feature = "cuda")]
                {
                    use crate::comm::gpu::GpuLocalComm;
                    use crate::comm::DEFAULT_TIMEOUT as T;
                    let device = Device::cuda_rank(gpu)?;
                    let (Device::Cuda(dev), Some(l)) = (&device, self.links) else {
                        return Err(Error::Ranks("a GPU rank without device links".into()));
                    };
                    let ctx = RankContext {
                        tp: Box::new(GpuLocalComm::new(c.tp, l.tp, dev.clone(), T)?),
                        ep: Box::new(GpuLocalComm::new(c.ep, l.ep, dev.clone(), T)?),
                        pp: Box::new(GpuLocalComm::new(c.pp, l.pp, dev.clone(), T)?),
                        clock: None,
                    };
                    Ok((device, ctx))
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = gpu;
                    Err(no_cuda())
                }
            }
            (gpu, comm) => open_over_host([c.tp, c.ep, c.pp], gpu, comm),
        }
    }
}
