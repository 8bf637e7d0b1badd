//! Which weights a placement change copies: for every physical slot whose expert changes, a
//! slot that holds that expert now.

use super::ReplicationError;
use switchyard_experts::{Placement, EMPTY_SLOT};

/// One expert's weights copied into a slot that changes expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The logical expert.
    pub expert: u32,
    /// Physical slot that holds it under the current placement (read from the live bank).
    pub from_slot: u32,
    /// Physical slot that holds it under the new placement (written into the shadow bank).
    pub to_slot: u32,
}

/// The copies one MoE layer needs to go from its current placement to `placement`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMigration {
    /// Model layer index.
    pub layer: usize,
    /// The new placement.
    pub placement: Placement,
    /// One per slot whose (non-empty) expert changes, in slot order.
    pub transfers: Vec<Transfer>,
}

impl LayerMigration {
    /// Plans the copies from `old` to `new` for model layer `layer`. Only slots whose expert
    /// changes are copied. A copy's source is, in this order of preference, a replica on the
    /// receiving rank itself (a local copy), on its node (`ranks_per_node` consecutive ranks),
    /// or anywhere; among equals the rank that has sent least so far in this layer, then the
    /// lowest slot. Deterministic.
    pub fn plan(
        layer: usize,
        old: &Placement,
        new: Placement,
        ranks_per_node: usize,
    ) -> Result<Self, ReplicationError> {
        if old.n_logical() != new.n_logical()
            || old.n_ranks() != new.n_ranks()
            || old.n_slots() != new.n_slots()
        {
            return Err(ReplicationError::Shape(format!(
                "layer {layer}: a placement of {} experts in {} slots over {} ranks cannot become one of {} in {} over {}",
                old.n_logical(),
                old.n_slots(),
                old.n_ranks(),
                new.n_logical(),
                new.n_slots(),
                new.n_ranks()
            )));
        }
        let spr = old.slots_per_rank();
        let per_node = ranks_per_node.max(1);
        let mut sent = vec![0usize; old.n_ranks()];
        let mut transfers = Vec::new();
        for (slot, (&was, &now)) in old.slots().iter().zip(new.slots()).enumerate() {
            if now == EMPTY_SLOT || now == was {
                continue;
            }
            let dst = slot / spr;
            let sources = old.replicas(now as usize);
            let tier = |s: u32| {
                let r = s as usize / spr;
                if r == dst {
                    0
                } else if r / per_node == dst / per_node {
                    1
                } else {
                    2
                }
            };
            let from = sources
                .iter()
                .copied()
                .min_by_key(|&s| {
                    (
                        tier(s),
                        if tier(s) == 0 {
                            0
                        } else {
                            sent[s as usize / spr]
                        },
                        s,
                    )
                })
                .ok_or_else(|| {
                    ReplicationError::Shape(format!("layer {layer}: expert {now} has no slot now"))
                })?;
            if tier(from) != 0 {
                sent[from as usize / spr] += 1;
            }
            transfers.push(Transfer {
                expert: now,
                from_slot: from,
                to_slot: slot as u32,
            });
        }
        Ok(Self {
            layer,
            placement: new,
            transfers,
        })
    }

    /// Copies whose source and destination are on different ranks (they cross the network).
    pub fn remote_transfers(&self) -> usize {
        let spr = self.placement.slots_per_rank();
        self.transfers
            .iter()
            .filter(|t| t.from_slot as usize / spr != t.to_slot as usize / spr)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_slots_are_copied_from_the_nearest_least_busy_holder() {
        // 4 experts + 4 replicas over 4 ranks of 2 slots: rank r holds slots 2r, 2r + 1.
        let old = Placement::from_slots(vec![0, 1, 2, 3, 0, 1, 2, 3], 4, 4).unwrap();
        let new = Placement::from_slots(vec![0, 3, 2, 3, 0, 1, 0, 0], 4, 4).unwrap();
        let t = |expert, from_slot, to_slot| Transfer {
            expert,
            from_slot,
            to_slot,
        };
        // One rank per node: slot 6 and 7 both want expert 0 (slots 0 and 4 hold it); rank 0
        // sends the first, rank 2 (which has sent nothing yet) the second.
        let m = LayerMigration::plan(7, &old, new.clone(), 1).unwrap();
        assert_eq!(m.transfers, vec![t(3, 3, 1), t(0, 0, 6), t(0, 4, 7)]);
        assert_eq!(m.remote_transfers(), 3);
        assert_eq!(
            m.transfers.len(),
            switchyard_experts::moved_slots(&old, &m.placement)
        );
        // Two ranks per node: rank 3 gets both copies from rank 2, its node peer.
        let m = LayerMigration::plan(7, &old, new, 2).unwrap();
        assert_eq!(m.transfers, vec![t(3, 3, 1), t(0, 4, 6), t(0, 4, 7)]);
    }

    #[test]
    fn a_replica_on_the_receiving_rank_is_copied_locally() {
        let old = Placement::from_slots(vec![0, 1, 1, 2, 3, 0], 4, 3).unwrap();
        let new = Placement::from_slots(vec![0, 0, 1, 2, 3, 1], 4, 3).unwrap();
        let m = LayerMigration::plan(0, &old, new, 1).unwrap();
        assert_eq!(
            m.transfers,
            vec![
                Transfer {
                    expert: 0,
                    from_slot: 0,
                    to_slot: 1
                },
                Transfer {
                    expert: 1,
                    from_slot: 1,
                    to_slot: 5
                },
            ]
        );
        assert_eq!(m.remote_transfers(), 1);
    }
}
