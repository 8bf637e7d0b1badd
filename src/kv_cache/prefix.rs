//! Automatic prefix caching (vLLM's, SGLang's RadixAttention in spirit): a full cache block is
//! known by what it holds — the block before it and its tokens — so a sequence whose prompt
//! starts with tokens already computed shares those blocks instead of computing them again.
//! Blocks no table holds stay findable until their slots are needed (least recently released
//! first).
//!
//! A block's key names the block before it, so a chain found from the first block is always a
//! chain one sequence computed, and every block of it lives where that sequence's first block
//! does (one data-parallel attention group, `parallel::dp_group_of`). The parent is named by id
//! and by the generation that id had: a block handed out afresh gets a new generation, so keys
//! made under its old contents (children of what it held before) can never match again.

use std::collections::{BTreeMap, HashMap};

/// What a full block holds: the block before it (id, generation) and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    parent: Option<(u32, u32)>,
    tokens: Box<[u32]>,
}

/// The findable full blocks and the released ones kept for reuse.
#[derive(Debug)]
pub(super) struct PrefixIndex {
    by_key: HashMap<BlockKey, u32>,
    key_of: Vec<Option<BlockKey>>,
    generation: Vec<u32>,
    /// Findable blocks no table holds, by release order (oldest first: evicted first).
    parked: BTreeMap<u64, u32>,
    parked_at: Vec<Option<u64>>,
    clock: u64,
}

impl PrefixIndex {
    /// An empty index over `num_blocks` blocks.
    pub(super) fn new(num_blocks: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            key_of: vec![None; num_blocks],
            generation: vec![0; num_blocks],
            parked: BTreeMap::new(),
            parked_at: vec![None; num_blocks],
            clock: 0,
        }
    }

    /// How a child's key names block `b`.
    fn as_parent(&self, b: u32) -> (u32, u32) {
        (b, self.generation[b as usize])
    }

    /// The findable blocks holding the whole blocks of `tokens` from the start, in order.
    pub(super) fn lookup(&self, tokens: &[u32], block_size: usize) -> Vec<u32> {
        let mut found = Vec::new();
        for chunk in tokens.chunks_exact(block_size) {
            let key = BlockKey {
                parent: found.last().map(|&b| self.as_parent(b)),
                tokens: chunk.into(),
            };
            match self.by_key.get(&key) {
                Some(&b) => found.push(b),
                None => break,
            }
        }
        found
    }

    /// Makes block `b` findable as holding `tokens` after block `parent` (unless another block
    /// already holds the same, or the parent is not findable: then `b` stays private).
    pub(super) fn register(&mut self, b: u32, parent: Option<u32>, tokens: &[u32]) {
        if parent.is_some_and(|p| self.key_of[p as usize].is_none()) {
            return;
        }
        let key = BlockKey {
            parent: parent.map(|p| self.as_parent(p)),
            tokens: tokens.into(),
        };
        if self.key_of[b as usize].is_none() && !self.by_key.contains_key(&key) {
            self.by_key.insert(key.clone(), b);
            self.key_of[b as usize] = Some(key);
        }
    }

    /// Keeps released block `b` findable if it is; false when it holds nothing findable.
    pub(super) fn park(&mut self, b: u32) -> bool {
        if self.key_of[b as usize].is_none() {
            return false;
        }
        self.clock += 1;
        self.parked.insert(self.clock, b);
        self.parked_at[b as usize] = Some(self.clock);
        true
    }

    /// Takes parked block `b` back into use (a table shares it again).
    pub(super) fn unpark(&mut self, b: u32) {
        if let Some(t) = self.parked_at[b as usize].take() {
            self.parked.remove(&t);
        }
    }

    /// Forgets the longest-parked block and hands it out.
    pub(super) fn evict_oldest(&mut self) -> Option<u32> {
        let (_, b) = self.parked.pop_first()?;
        self.parked_at[b as usize] = None;
        if let Some(key) = self.key_of[b as usize].take() {
            self.by_key.remove(&key);
        }
        Some(b)
    }

    /// Block `b` is handed out afresh: keys naming it as a parent go stale.
    pub(super) fn renew(&mut self, b: u32) {
        let g = &mut self.generation[b as usize];
        *g = g.wrapping_add(1);
    }

    /// Parked blocks (free, but holding findable tokens).
    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Findable blocks, in use or parked.
    pub(super) fn findable(&self) -> usize {
        self.by_key.len()
    }
}
