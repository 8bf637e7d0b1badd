//! The paged KV cache (Kwon et al. 2023, vLLM): fixed-size blocks of token slots, handed to
//! sequences through block tables, so memory is never reserved for tokens not yet generated;
//! full blocks shared between sequences by their tokens (automatic prefix caching).

mod allocator;
mod layer;
mod prefix;

pub use allocator::{BlockAllocator, BlockTable};
pub use layer::{KvCache, KvDtype, LayerCache};
