use super::prefix::PrefixIndex;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Hands out cache blocks; blocks come back when their [`BlockTable`] is dropped, so a
/// finished, failed or cancelled sequence can never leak cache. With a prefix cache
/// ([`Self::with_prefix_cache`]) full blocks are shared by the sequences whose tokens they hold
/// (`kv_cache::prefix`).
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    inner: Arc<Mutex<Pool>>,
    block_size: usize,
}

#[derive(Debug)]
struct Pool {
    /// Free blocks holding nothing findable; the last is handed out first.
    fresh: Vec<u32>,
    /// Tables holding each block.
    holders: Vec<u32>,
    total: usize,
    prefix: Option<PrefixIndex>,
}

impl Pool {
    fn free(&self) -> usize {
        self.fresh.len() + self.prefix.as_ref().map_or(0, PrefixIndex::parked)
    }

    /// A block for a table's own use: a fresh one, else the longest-parked cached one.
    fn take(&mut self) -> Option<u32> {
        let b = match self.fresh.pop() {
            Some(b) => b,
            None => self.prefix.as_mut()?.evict_oldest()?,
        };
        if let Some(p) = self.prefix.as_mut() {
            p.renew(b);
        }
        self.holders[b as usize] = 1;
        Some(b)
    }

    /// One more table holds findable block `b`.
    fn share(&mut self, b: u32) {
        if self.holders[b as usize] == 0 {
            if let Some(p) = self.prefix.as_mut() {
                p.unpark(b);
            }
        }
        self.holders[b as usize] += 1;
    }

    /// A table lets go of block `b`.
    fn release(&mut self, b: u32) {
        let h = &mut self.holders[b as usize];
        *h -= 1;
        if *h == 0 && !self.prefix.as_mut().is_some_and(|p| p.park(b)) {
            self.fresh.push(b);
        }
    }
}

impl BlockAllocator {
    /// `num_blocks` blocks of `block_size` token slots, each sequence's its own.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::build(num_blocks, block_size, None)
    }

    /// [`Self::new`] with a prefix cache: full blocks shared by the sequences that start with
    /// the tokens they hold, and kept after their sequences end until their slots are needed.
    pub fn with_prefix_cache(num_blocks: usize, block_size: usize) -> Self {
        Self::build(num_blocks, block_size, Some(PrefixIndex::new(num_blocks)))
    }

    fn build(num_blocks: usize, block_size: usize, prefix: Option<PrefixIndex>) -> Self {
        let fresh = (0..num_blocks as u32).rev().collect();
        Self {
            inner: Arc::new(Mutex::new(Pool {
                fresh,
                holders: vec![0; num_blocks],
                total: num_blocks,
                prefix,
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
        p.total - p.free()
    }

    /// Blocks no sequence holds (some may hold cached tokens, given up when needed).
    pub fn free_blocks(&self) -> usize {
        self.lock().free()
    }

    /// Blocks a later sequence can find by their tokens, held or not (0 without a prefix
    /// cache).
    pub fn cached_blocks(&self) -> usize {
        self.lock().prefix.as_ref().map_or(0, PrefixIndex::findable)
    }

    /// An empty table that allocates from this pool.
    pub fn new_table(&self) -> BlockTable {
        BlockTable {
            blocks: Vec::new(),
            known: 0,
            allocator: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic elsewhere cannot leave the pool half-updated (no op panics between its
        // writes), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The blocks of one sequence, in position order. Dropping it returns them to the pool.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// Leading blocks already findable or offered to the prefix cache.
    known: usize,
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
        let needed = self.blocks_needed(tokens);
        if needed == 0 {
            return Ok(());
        }
        let mut pool = self.allocator.lock();
        if pool.free() < needed {
            return Err(Error::CacheFull(format!(
                "{tokens} tokens need {needed} more blocks of {bs}, {} of {} are free",
                pool.free(),
                pool.total
            )));
        }
        for _ in 0..needed {
            let b = pool.take().expect("counted free");
            self.blocks.push(b);
        }
        Ok(())
    }

    /// Blocks needed beyond the current ones to hold `tokens` positions.
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        tokens
            .div_ceil(self.allocator.block_size)
            .saturating_sub(self.blocks.len())
    }

    /// For an empty table: shares the cached blocks that hold the whole blocks of `tokens`
    /// from the start, and returns how many tokens they hold (0 without a prefix cache, or for
    /// a table that already has blocks).
    pub fn share_prefix(&mut self, tokens: &[u32]) -> usize {
        if !self.blocks.is_empty() {
            return 0;
        }
        let bs = self.allocator.block_size;
        let mut pool = self.allocator.lock();
        let Some(found) = pool.prefix.as_ref().map(|p| p.lookup(tokens, bs)) else {
            return 0;
        };
        for &b in &found {
            pool.share(b);
        }
        self.blocks = found;
        self.known = self.blocks.len();
        self.blocks.len() * bs
    }

    /// Offers the prefix cache the full blocks among the first `tokens.len()` positions, whose
    /// keys and values are computed: later sequences starting with these tokens share them.
    pub fn offer_full_blocks(&mut self, tokens: &[u32]) {
        let bs = self.allocator.block_size;
        let full = (tokens.len() / bs).min(self.blocks.len());
        if full <= self.known {
            return;
        }
        let mut pool = self.allocator.lock();
        if let Some(p) = pool.prefix.as_mut() {
            for i in self.known..full {
                let parent = i.checked_sub(1).map(|j| self.blocks[j]);
                p.register(self.blocks[i], parent, &tokens[i * bs..(i + 1) * bs]);
            }
        }
        self.known = full;
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        let mut pool = self.allocator.lock();
        // Last block first: it is parked first, so evicted before the blocks it extends.
        for &b in self.blocks.iter().rev() {
            pool.release(b);
        }
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

    /// A table over `tokens` with their keys and values "computed" and offered to the cache.
    fn computed(alloc: &BlockAllocator, tokens: &[u32]) -> BlockTable {
        let mut t = alloc.new_table();
        let shared = t.share_prefix(tokens);
        t.reserve(tokens.len()).unwrap();
        t.offer_full_blocks(tokens);
        assert!(shared <= tokens.len());
        t
    }

    #[test]
    fn a_later_table_shares_the_whole_blocks_of_a_common_prefix() {
        let alloc = BlockAllocator::with_prefix_cache(8, 4);
        let a: Vec<u32> = (0..10).collect();
        let ta = computed(&alloc, &a);
        assert_eq!((alloc.used_blocks(), alloc.cached_blocks()), (3, 2));
        // Same first 6 tokens: only the first whole block is common.
        let mut b = a[..6].to_vec();
        b.extend([90, 91, 92]);
        let mut tb = alloc.new_table();
        assert_eq!(tb.share_prefix(&b), 4);
        assert_eq!(tb.blocks(), &ta.blocks()[..1]);
        tb.reserve(b.len()).unwrap();
        assert_ne!(tb.blocks()[1], ta.blocks()[1]);
        assert_eq!(alloc.used_blocks(), 3 + 2);
        // A different first block finds nothing, even with the same second block.
        let c: Vec<u32> = [7, 7, 7, 7].into_iter().chain(4..8).collect();
        assert_eq!(alloc.new_table().share_prefix(&c), 0);
        drop((ta, tb));
        assert_eq!(alloc.used_blocks(), 0);
    }

    #[test]
    fn released_blocks_stay_findable_until_their_slots_are_needed() {
        let alloc = BlockAllocator::with_prefix_cache(6, 4);
        let a: Vec<u32> = (0..8).collect();
        drop(computed(&alloc, &a));
        assert_eq!((alloc.free_blocks(), alloc.cached_blocks()), (6, 2));
        let mut again = alloc.new_table();
        assert_eq!(again.share_prefix(&a), 8);
        assert_eq!(alloc.used_blocks(), 2);
        drop(again);
        // Four fresh blocks go first; the cached ones only when nothing else is free, the
        // block that extends the other first.
        let mut big = alloc.new_table();
        big.reserve(16).unwrap();
        assert_eq!(alloc.cached_blocks(), 2);
        big.reserve(20).unwrap();
        assert_eq!(alloc.cached_blocks(), 1);
        assert_eq!(alloc.new_table().share_prefix(&a), 4);
        big.reserve(24).unwrap();
        assert_eq!((alloc.cached_blocks(), alloc.free_blocks()), (0, 0));
        drop(big);
        assert_eq!(alloc.new_table().share_prefix(&a), 0);
    }

    #[test]
    fn a_block_computed_twice_is_found_once_and_chains_do_not_cross() {
        let alloc = BlockAllocator::with_prefix_cache(8, 2);
        // Two tables compute the same first block before either offers it.
        let (mut t1, mut t2) = (alloc.new_table(), alloc.new_table());
        t1.reserve(4).unwrap();
        t2.reserve(4).unwrap();
        t1.offer_full_blocks(&[1, 2, 3, 4]);
        t2.offer_full_blocks(&[1, 2, 5, 6]);
        // t2's first block stays private, so its second is not findable either: a chain found
        // from the first block is one table's chain.
        assert_eq!(alloc.cached_blocks(), 2);
        let mut t3 = alloc.new_table();
        assert_eq!(t3.share_prefix(&[1, 2, 5, 6]), 2);
        assert_eq!(t3.blocks(), &t1.blocks()[..1]);
    }

    #[test]
    fn without_a_prefix_cache_nothing_is_shared() {
        let alloc = BlockAllocator::new(4, 2);
        let t = computed(&alloc, &[1, 2, 3, 4]);
        assert_eq!(alloc.cached_blocks(), 0);
        assert_eq!(alloc.new_table().share_prefix(&[1, 2, 3, 4]), 0);
        drop(t);
        assert_eq!(alloc.free_blocks(), 4);
    }
}
