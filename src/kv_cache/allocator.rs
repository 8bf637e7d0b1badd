use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Hands out cache blocks; blocks come back when their [`BlockTable`] is dropped, so a
/// finished, failed or cancelled sequence can never leak cache.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    inner: Arc<Mutex<Pool>>,
    block_size: usize,
}

#[derive(Debug)]
struct Pool {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    /// `num_blocks` blocks of `block_size` token slots.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        let free = (0..num_blocks as u32).rev().collect();
        Self {
            inner: Arc::new(Mutex::new(Pool {
                free,
                total: num_blocks,
            })),
            block_size,
        }
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.lock().total
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        let p = self.lock();
        p.total - p.free.len()
    }

    /// Blocks still free.
    pub fn free_blocks(&self) -> usize {
        self.lock().free.len()
    }

    /// An empty table that allocates from this pool.
    pub fn new_table(&self) -> BlockTable {
        BlockTable {
            blocks: Vec::new(),
            allocator: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic elsewhere cannot leave the free list half-updated (each op is one push/pop),
        // so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The blocks of one sequence, in position order. Dropping it returns them to the pool.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<u32>,
    allocator: BlockAllocator,
}

impl BlockTable {
    /// Block ids, position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Token slots the table covers.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.allocator.block_size
    }

    /// Grows the table to hold `tokens` positions; all or nothing.
    pub fn reserve(&mut self, tokens: usize) -> Result<()> {
        let bs = self.allocator.block_size;
        let needed = tokens.div_ceil(bs).saturating_sub(self.blocks.len());
        if needed == 0 {
            return Ok(());
        }
        let mut pool = self.allocator.lock();
        if pool.free.len() < needed {
            return Err(Error::CacheFull(format!(
                "{tokens} tokens need {needed} more blocks of {bs}, {} of {} are free",
                pool.free.len(),
                pool.total
            )));
        }
        let start = pool.free.len() - needed;
        self.blocks.extend(pool.free.drain(start..).rev());
        Ok(())
    }

    /// Blocks needed beyond the current ones to hold `tokens` positions.
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        tokens
            .div_ceil(self.allocator.block_size)
            .saturating_sub(self.blocks.len())
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        let mut pool = self.allocator.lock();
        pool.free.extend(self.blocks.drain(..).rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_return_to_the_pool_when_the_table_drops() {
        let alloc = BlockAllocator::new(4, 16);
        {
            let mut t = alloc.new_table();
            t.reserve(17).unwrap();
            assert_eq!(t.blocks().len(), 2);
            assert_eq!(alloc.used_blocks(), 2);
            t.reserve(33).unwrap();
            assert_eq!(alloc.used_blocks(), 3);
        }
        assert_eq!(alloc.used_blocks(), 0);
    }

    #[test]
    fn reserve_is_all_or_nothing_with_a_clear_error() {
        let alloc = BlockAllocator::new(2, 4);
        let mut a = alloc.new_table();
        a.reserve(5).unwrap();
        let mut b = alloc.new_table();
        let err = b.reserve(5).unwrap_err().to_string();
        assert!(
            err.contains("need 2 more blocks of 4, 0 of 2 are free"),
            "{err}"
        );
        assert_eq!(b.blocks().len(), 0);
    }
}
