//! `LayoutOverrides`: the layout flags every model-running subcommand shares.

use super::file::LayoutFile;
use super::{Layout, LayoutError};
use clap::Args;
use std::path::{Path, PathBuf};

/// `--layout FILE` and the flags that override it (flatten into a subcommand's args).
#[derive(Debug, Clone, Default, Args)]
pub struct LayoutOverrides {
    /// Parallel layout file (configs/*.toml); flags below override its values.
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
    /// Tensor-parallel ranks for attention.
    #[arg(long)]
    pub tp: Option<usize>,
    /// Expert-parallel ranks per pipeline stage (default: tp).
    #[arg(long)]
    pub ep: Option<usize>,
    /// Pipeline stages.
    #[arg(long)]
    pub pp: Option<usize>,
    /// Split of each expert's intermediate dim (default 1; a dense model's MLP: ep).
    #[arg(long)]
    pub moe_tp: Option<usize>,
    /// Redundant expert slots per MoE layer for replicas.
    #[arg(long)]
    pub redundant: Option<usize>,
}

impl LayoutOverrides {
    /// The layout: the file (if any) with the flags applied, defaults for the rest.
    pub fn resolve(&self) -> Result<Layout, LayoutError> {
        match &self.layout {
            Some(path) => Layout::from_file_with(path, self),
            None => Layout::resolve(LayoutFile::default(), self, Path::new(".")),
        }
    }
}
