use crate::kv_cache::{BlockAllocator, BlockTable};

/// A sequence being generated: its tokens and the cache blocks that hold their keys/values.
#[derive(Debug)]
pub struct Sequence {
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose keys/values are in the cache.
    pub cached: usize,
    /// The cache blocks (returned to the pool on drop).
    pub table: BlockTable,
}

impl Sequence {
    /// A new sequence with no cached tokens.
    pub fn new(tokens: Vec<u32>, allocator: &BlockAllocator) -> Self {
        Self {
            tokens,
            cached: 0,
            table: allocator.new_table(),
        }
    }

    /// Tokens not yet in the cache.
    pub fn uncached(&self) -> &[u32] {
        &self.tokens[self.cached..]
    }
}
