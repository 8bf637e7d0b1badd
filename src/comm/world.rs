//! `World`: every rank's communicators, and a helper that runs one thread per rank.

use super::{LocalComm, RankCoords, RankGrid};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

/// How long an in-process receive waits for a live but silent peer before failing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// One rank's communicators: the whole world and its TP, EP and PP groups.
#[derive(Debug)]
pub struct RankComms {
    /// Where this rank sits in the grid.
    pub coords: RankCoords,
    /// All `ep * pp` ranks.
    pub world: LocalComm,
    /// The `tp` ranks sharing this rank's attention heads.
    pub tp: LocalComm,
    /// The `ep` ranks of this rank's pipeline stage.
    pub ep: LocalComm,
    /// The `pp` ranks with this rank's index, one per stage.
    pub pp: LocalComm,
}

/// One rank's device channels for its TP, EP and PP groups (see [`World::device_links`]).
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub struct RankLinks {
    /// The TP group's.
    pub tp: super::gpu::DeviceLinks,
    /// The EP group's.
    pub ep: super::gpu::DeviceLinks,
    /// The PP group's.
    pub pp: super::gpu::DeviceLinks,
}

/// Why a rank thread did not finish.
#[derive(Debug)]
pub enum RankFailure<E> {
    /// The closure returned an error.
    Error(E),
    /// The closure panicked; the panic message.
    Panic(String),
}

/// A run in which some ranks failed. The reported rank is the first that panicked, or else the
/// first that returned an error: a failed rank drops its communicators, so its peers then fail
/// with [`super::CommError::PeerGone`], which can race with the cause being recorded; every
/// failure is kept in `others` for the caller to inspect.
#[derive(Debug)]
pub struct RunError<E> {
    /// The reported rank (global id).
    pub rank: usize,
    /// How it failed.
    pub failure: RankFailure<E>,
    /// Every other failed rank and how, in the order they were recorded.
    pub others: Vec<(usize, RankFailure<E>)>,
}

impl<E: std::fmt::Display> std::fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failure {
            RankFailure::Error(e) => write!(f, "rank {} failed: {e}", self.rank)?,
            RankFailure::Panic(m) => write!(f, "rank {} panicked: {m}", self.rank)?,
        }
        if !self.others.is_empty() {
            let ranks: Vec<usize> = self.others.iter().map(|(r, _)| *r).collect();
            write!(f, " (ranks {ranks:?} failed too)")?;
        }
        Ok(())
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for RunError<E> {}

/// A world of in-process ranks laid out by a [`RankGrid`].
#[derive(Debug, Clone, Copy)]
pub struct World {
    grid: RankGrid,
    timeout: Duration,
}

impl World {
    /// A world for `grid` with [`DEFAULT_TIMEOUT`].
    pub fn new(grid: RankGrid) -> Self {
        World {
            grid,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same world with another receive timeout.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        World { timeout, ..self }
    }

    /// The grid.
    pub fn grid(&self) -> RankGrid {
        self.grid
    }

    /// Every rank's communicators, indexed by global rank; hand each to its own thread.
    pub fn communicators(&self) -> Vec<RankComms> {
        let g = self.grid;
        let n = g.world();
        let mut world: Vec<Option<LocalComm>> = LocalComm::group("world", n, self.timeout)
            .into_iter()
            .map(Some)
            .collect();
        let mut tp = self.groups("tp", |r| g.tp_group(r));
        let mut ep = self.groups("ep", |r| g.ep_group(r));
        let mut pp = self.groups("pp", |r| g.pp_group(r));
        (0..n)
            .map(|r| RankComms {
                coords: g.coords(r),
                world: world[r].take().expect("one world comm per rank"),
                tp: tp[r].take().expect("one tp comm per rank"),
                ep: ep[r].take().expect("one ep comm per rank"),
                pp: pp[r].take().expect("one pp comm per rank"),
            })
            .collect()
    }

    /// One communicator per global rank for the groups `members` describes.
    fn groups(&self, name: &str, members: impl Fn(usize) -> Vec<usize>) -> Vec<Option<LocalComm>> {
        self.groups_of(members, |size| LocalComm::group(name, size, self.timeout))
    }

    /// One end per global rank of the groups `members` describes, each group made by `make`.
    fn groups_of<T>(
        &self,
        members: impl Fn(usize) -> Vec<usize>,
        make: impl Fn(usize) -> Vec<T>,
    ) -> Vec<Option<T>> {
        let n = self.grid.world();
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        for r in 0..n {
            let group = members(r);
            if group[0] != r {
                continue; // built by the group's first rank
            }
            for (g, end) in group.iter().zip(make(group.len())) {
                out[*g] = Some(end);
            }
        }
        out
    }

    /// Every rank's device channels for its TP, EP and PP groups (the same groups as
    /// [`World::communicators`]), for GPU ranks sharing this process.
    #[cfg(feature = "cuda")]
    pub fn device_links(&self) -> Vec<RankLinks> {
        use super::gpu::DeviceLinks;
        let g = self.grid;
        let mut tp = self.groups_of(|r| g.tp_group(r), DeviceLinks::group);
        let mut ep = self.groups_of(|r| g.ep_group(r), DeviceLinks::group);
        let mut pp = self.groups_of(|r| g.pp_group(r), DeviceLinks::group);
        (0..g.world())
            .map(|r| RankLinks {
                tp: tp[r].take().expect("one tp end per rank"),
                ep: ep[r].take().expect("one ep end per rank"),
                pp: pp[r].take().expect("one pp end per rank"),
            })
            .collect()
    }

    /// Runs `f` on one thread per rank with that rank's communicators and joins them all.
    /// Returns the results in global rank order, or which ranks failed (see [`RunError`]). A failed rank drops its communicators, so its peers fail too instead of hanging.
    pub fn run<R, E, F>(&self, f: F) -> Result<Vec<R>, RunError<E>>
    where
        R: Send,
        E: Send,
        F: Fn(RankComms) -> Result<R, E> + Sync,
    {
        let failures: Mutex<Vec<(usize, RankFailure<E>)>> = Mutex::new(Vec::new());
        let results: Vec<Option<R>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .communicators()
                .into_iter()
                .enumerate()
                .map(|(rank, comms)| {
                    let (f, failures) = (&f, &failures);
                    std::thread::Builder::new()
                        .name(format!("rank-{rank}"))
                        .spawn_scoped(s, move || {
                            let failure = match catch_unwind(AssertUnwindSafe(|| f(comms))) {
                                Ok(Ok(r)) => return Some(r),
                                Ok(Err(e)) => RankFailure::Error(e),
                                Err(p) => RankFailure::Panic(panic_message(p.as_ref())),
                            };
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((rank, failure));
                            None
                        })
                        .expect("spawn a rank thread")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
        if failures.is_empty() {
            return Ok(results
                .into_iter()
                .map(|r| r.expect("no failure, so a result"))
                .collect());
        }
        let first = failures
            .iter()
            .position(|(_, f)| matches!(f, RankFailure::Panic(_)))
            .unwrap_or(0);
        let (rank, failure) = failures.remove(first);
        Err(RunError {
            rank,
            failure,
            others: failures,
        })
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
