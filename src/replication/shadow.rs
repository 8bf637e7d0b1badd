//! `RankReplica`: one rank's side of a migration. It copies the experts of its slots that
//! change into shadow slots (double-buffered: the live bank keeps serving from the old ones)
//! and writes them into the bank when the driver names the new epoch. The extra memory is only
//! the slots that change, and the switch copies only those.

use super::{Directive, LayerMigration, MigrationChunk, ReplicationError};
use crate::comm::Communicator;
use crate::model::Model;
use crate::moe::ExpertBank;
use switchyard_experts::Placement;

/// The epoch a rank runs and the shadow slots it staged for the next one.
#[derive(Debug, Default)]
pub struct RankReplica {
    epoch: u64,
    staged: Option<Staged>,
}

#[derive(Debug)]
struct Staged {
    epoch: u64,
    /// Per migrated layer of this rank: the new placement and the weights of this rank's slots
    /// that change, by local slot.
    layers: Vec<(usize, Placement, Vec<(usize, Vec<f32>)>)>,
}

impl RankReplica {
    /// The placement epoch this rank runs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Applies a step's directive before the step runs: switches to the directive's epoch
    /// (installing the staged shadows), then copies the step's chunk. Every rank of the EP
    /// group applies the same directive at the same step. Returns the bytes this rank sent.
    pub fn apply(
        &mut self,
        d: &Directive,
        model: &mut Model,
        ep: &dyn Communicator,
    ) -> Result<u64, ReplicationError> {
        if d.epoch != self.epoch {
            self.switch(d.epoch, model, ep.rank())?;
        }
        match &d.migrate {
            Some(chunk) => self.copy_chunk(chunk, model, ep),
            None => Ok(0),
        }
    }

    fn switch(
        &mut self,
        epoch: u64,
        model: &mut Model,
        rank: usize,
    ) -> Result<(), ReplicationError> {
        let fail = |message: String| ReplicationError::Migration { rank, message };
        let staged = match self.staged.take() {
            Some(s) if s.epoch == epoch => s,
            Some(s) => {
                return Err(fail(format!(
                    "asked to run epoch {epoch}, but shadows of epoch {} are staged",
                    s.epoch
                )))
            }
            None if epoch == self.epoch + 1 => Staged {
                epoch,
                layers: Vec::new(),
            },
            None => {
                return Err(fail(format!(
                    "asked to run epoch {epoch} while on epoch {}",
                    self.epoch
                )))
            }
        };
        for (layer, placement, slots) in staged.layers {
            let block = model
                .ffn_mut(layer)
                .ok_or_else(|| fail(format!("layer {layer} is not on this rank")))?;
            block.switch_placement(placement, slots)?;
        }
        self.epoch = epoch;
        Ok(())
    }

    fn copy_chunk(
        &mut self,
        chunk: &MigrationChunk,
        model: &Model,
        ep: &dyn Communicator,
    ) -> Result<u64, ReplicationError> {
        let rank = ep.rank();
        if chunk.epoch != self.epoch + 1 {
            let message = format!(
                "copies for epoch {} arrived while running epoch {}",
                chunk.epoch, self.epoch
            );
            return Err(ReplicationError::Migration { rank, message });
        }
        let staged = self.staged.get_or_insert_with(|| Staged {
            epoch: chunk.epoch,
            layers: Vec::new(),
        });
        let before = ep.bytes_moved();
        for m in &chunk.layers {
            // Layers of other pipeline stages are migrated by their own EP group.
            let Some(block) = model.ffn(m.layer) else {
                continue;
            };
            let shadow = copy_layer(m, block.experts(), rank, ep)?;
            staged.layers.push((m.layer, m.placement.clone(), shadow));
        }
        Ok(ep.bytes_moved() - before)
    }
}

/// Sends the experts other ranks need from this rank's live bank, then receives (or copies
/// locally) the ones this rank's changed slots will hold. Sends go first and never block, and
/// every pair of ranks sends and receives in transfer order, so no rank waits on another that
/// waits on it.
fn copy_layer(
    m: &LayerMigration,
    live: &ExpertBank,
    rank: usize,
    ep: &dyn Communicator,
) -> Result<Vec<(usize, Vec<f32>)>, ReplicationError> {
    let spr = m.placement.slots_per_rank();
    let on = |slot: u32| (slot as usize / spr, slot as usize % spr);
    for t in &m.transfers {
        let ((src, local), (dst, _)) = (on(t.from_slot), on(t.to_slot));
        if src == rank && dst != rank {
            ep.send(&live.slot_weights(local)?, dst)?;
        }
    }
    let mut staged = Vec::new();
    for t in m.transfers.iter().filter(|t| on(t.to_slot).0 == rank) {
        let ((src, from), (_, to)) = (on(t.from_slot), on(t.to_slot));
        let weights = if src == rank {
            live.slot_weights(from)?
        } else {
            ep.recv(src)?
        };
        if weights.len() != live.slot_len() {
            let message = format!(
                "rank {src} sent {} weights for an expert of {}",
                weights.len(),
                live.slot_len()
            );
            return Err(ReplicationError::Migration { rank, message });
        }
        staged.push((to, weights));
    }
    Ok(staged)
}
