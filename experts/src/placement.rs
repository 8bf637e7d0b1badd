//! Placement of one MoE layer: physical expert slots <-> logical experts.
//!
//! Every rank owns the same number of slots (`slots_per_rank`); rank `r` owns the physical slots
//! `[r * slots_per_rank, (r + 1) * slots_per_rank)`. A slot holds one logical expert or is empty
//! ([`EMPTY_SLOT`]). Empty slots let layouts such as DeepSeek-V3's 256 experts + 32 replicas over
//! 64 ranks (4.5 per rank) work: every rank allocates 5 slots and 32 of them stay empty. A GPU
//! allocates its slots up front anyway, so equal slot counts cost no memory over uneven ones and
//! keep the buffers of every rank the same shape. Ranks are grouped into nodes by the caller
//! ([`crate::Topology`]), not here.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Marks a physical slot that holds no expert.
pub const EMPTY_SLOT: u32 = u32::MAX;

/// Errors building a [`Placement`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Slots cannot be split evenly over the ranks.
    #[error("experts ({experts}) + redundant ({redundant}) = {slots} slots is not divisible by ep {ranks}; use redundant {suggestion}")]
    NotDivisible {
        /// Logical experts.
        experts: usize,
        /// Redundant slots asked for.
        redundant: usize,
        /// Their sum.
        slots: usize,
        /// Ranks.
        ranks: usize,
        /// The redundant counts that would fit, e.g. "0 or 4".
        suggestion: String,
    },
    /// Any other inconsistency; the message names the number.
    #[error("invalid placement: {0}")]
    Invalid(String),
}

/// Physical slots of one MoE layer and the logical experts they hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    slots: Vec<u32>,
    n_logical: usize,
    n_ranks: usize,
    slots_per_rank: usize,
    /// `replicas[e]`: physical slots holding logical expert `e`, ascending.
    replicas: Vec<Vec<u32>>,
}

/// How many of `n` items the `r`-th of `parts` parts gets when spread as evenly as possible,
/// the first `n % parts` parts getting one more.
pub(crate) fn even_share(n: usize, parts: usize, r: usize) -> usize {
    n / parts + usize::from(r < n % parts)
}

impl Placement {
    /// Logical experts in order plus `redundant` replicas; `experts + redundant` must be a
    /// multiple of `n_ranks` (see [`Placement::padded`] otherwise).
    pub fn contiguous(
        n_logical: usize,
        n_ranks: usize,
        redundant: usize,
    ) -> Result<Self, PlacementError> {
        if n_ranks == 0 {
            return Err(PlacementError::Invalid("ep (ranks) is 0".into()));
        }
        let slots = n_logical + redundant;
        if !slots.is_multiple_of(n_ranks) {
            let lower_total = (slots / n_ranks) * n_ranks;
            let upper = (slots / n_ranks + 1) * n_ranks - n_logical;
            let suggestion = if lower_total >= n_logical {
                format!("{} or {upper}", lower_total - n_logical)
            } else {
                upper.to_string()
            };
            return Err(PlacementError::NotDivisible {
                experts: n_logical,
                redundant,
                slots,
                ranks: n_ranks,
                suggestion,
            });
        }
        Self::padded(n_logical, n_ranks, redundant)
    }

    /// Like [`Placement::contiguous`] but rounds the slots per rank up and leaves the surplus
    /// slots empty (the last slot of the last ranks).
    ///
    /// Layout: rank `r` gets `even_share(n_logical)` primaries, a contiguous block of logical
    /// experts in order, followed by its share of the replicas. The `j`-th replica (in slot
    /// order) copies logical expert `(n_logical / 2 + j * max(1, n_logical / redundant)) %
    /// n_logical`: replicas spread evenly over the expert ids and, when everything divides, each
    /// lands half the world away from its primary. Before any load statistic exists nothing
    /// better is known; [`crate::rebalance`] replaces it.
    pub fn padded(
        n_logical: usize,
        n_ranks: usize,
        redundant: usize,
    ) -> Result<Self, PlacementError> {
        if n_logical == 0 {
            return Err(PlacementError::Invalid("0 logical experts".into()));
        }
        if n_ranks == 0 {
            return Err(PlacementError::Invalid("ep (ranks) is 0".into()));
        }
        let used = n_logical + redundant;
        let spr = used.div_ceil(n_ranks);
        let step = (n_logical / redundant.max(1)).max(1);
        let mut slots = Vec::with_capacity(spr * n_ranks);
        let mut next_primary = 0usize;
        let mut j = 0usize;
        for r in 0..n_ranks {
            let primaries = even_share(n_logical, n_ranks, r);
            let used_here = even_share(used, n_ranks, r);
            for _ in 0..primaries {
                slots.push(next_primary as u32);
                next_primary += 1;
            }
            for _ in primaries..used_here {
                slots.push(((n_logical / 2 + j * step) % n_logical) as u32);
                j += 1;
            }
            slots.extend(std::iter::repeat_n(EMPTY_SLOT, spr - used_here));
        }
        Self::from_slots(slots, n_logical, n_ranks)
    }

    /// An explicit slot map (`slots[p]` = logical expert of physical slot `p`, or
    /// [`EMPTY_SLOT`]). Every logical expert must appear at least once and the slot count must be
    /// a multiple of `n_ranks`.
    pub fn from_slots(
        slots: Vec<u32>,
        n_logical: usize,
        n_ranks: usize,
    ) -> Result<Self, PlacementError> {
        if n_ranks == 0 {
            return Err(PlacementError::Invalid("ep (ranks) is 0".into()));
        }
        if n_logical == 0 || n_logical >= EMPTY_SLOT as usize {
            return Err(PlacementError::Invalid(format!(
                "{n_logical} logical experts"
            )));
        }
        if slots.is_empty() || !slots.len().is_multiple_of(n_ranks) {
            return Err(PlacementError::Invalid(format!(
                "{} slots is not a positive multiple of ep {n_ranks}",
                slots.len()
            )));
        }
        if u32::try_from(slots.len()).is_err() {
            return Err(PlacementError::Invalid(format!(
                "{} slots overflow u32",
                slots.len()
            )));
        }
        let mut replicas = vec![Vec::new(); n_logical];
        for (p, &e) in slots.iter().enumerate() {
            if e == EMPTY_SLOT {
                continue;
            }
            match replicas.get_mut(e as usize) {
                Some(r) => r.push(p as u32),
                None => {
                    return Err(PlacementError::Invalid(format!(
                        "slot {p} holds expert {e} but there are only {n_logical} logical experts"
                    )))
                }
            }
        }
        if let Some(e) = replicas.iter().position(|r| r.is_empty()) {
            return Err(PlacementError::Invalid(format!(
                "logical expert {e} has no slot"
            )));
        }
        Ok(Placement {
            slots_per_rank: slots.len() / n_ranks,
            slots,
            n_logical,
            n_ranks,
            replicas,
        })
    }

    /// Logical expert of every physical slot ([`EMPTY_SLOT`] for an empty one).
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Logical expert held by physical slot `slot`, `None` if empty or out of range.
    pub fn expert_of_slot(&self, slot: usize) -> Option<u32> {
        self.slots.get(slot).copied().filter(|&e| e != EMPTY_SLOT)
    }

    /// Number of logical experts.
    pub fn n_logical(&self) -> usize {
        self.n_logical
    }

    /// Number of physical slots, empty ones included.
    pub fn n_slots(&self) -> usize {
        self.slots.len()
    }

    /// Number of slots that hold an expert.
    pub fn n_used_slots(&self) -> usize {
        self.slots.iter().filter(|&&e| e != EMPTY_SLOT).count()
    }

    /// Number of ranks (the EP group size).
    pub fn n_ranks(&self) -> usize {
        self.n_ranks
    }

    /// Physical slots per rank.
    pub fn slots_per_rank(&self) -> usize {
        self.slots_per_rank
    }

    /// The rank owning physical slot `slot`, `None` if out of range.
    pub fn rank_of_slot(&self, slot: usize) -> Option<usize> {
        (slot < self.slots.len()).then(|| slot / self.slots_per_rank)
    }

    /// Physical slots holding logical expert `logical` (ascending; empty if out of range).
    pub fn replicas(&self, logical: usize) -> &[u32] {
        self.replicas.get(logical).map_or(&[], |r| r.as_slice())
    }

    /// The physical slots of `rank` (empty range if out of range).
    pub fn local_slots(&self, rank: usize) -> std::ops::Range<usize> {
        if rank >= self.n_ranks {
            return 0..0;
        }
        rank * self.slots_per_rank..(rank + 1) * self.slots_per_rank
    }

    /// Logical experts of `rank`'s slots in local slot order.
    pub fn rank_experts(&self, rank: usize) -> &[u32] {
        &self.slots[self.local_slots(rank)]
    }
}
