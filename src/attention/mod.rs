//! Attention layers: grouped-query attention (Llama, Mistral, Mixtral, Qwen) over the paged
//! cache. Each layer writes its new keys/values into its own [`crate::kv_cache::LayerCache`].

mod gqa;

pub use gqa::GqaAttention;
