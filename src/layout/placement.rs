//! `[experts] placement`: contiguous, or explicit physical-slot maps (inline or from a JSON file),
//! turned into one `switchyard_experts::Placement` per MoE layer.

use super::file::PlacementValue;
use super::LayoutError;
use std::path::{Path, PathBuf};
use switchyard_experts::{Placement, EMPTY_SLOT};

/// How the physical expert slots of each MoE layer are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementSpec {
    /// Logical experts in order, then the redundant replicas ([`Placement::padded`]).
    Contiguous,
    /// One slot map per MoE layer in layer order, or a single map used by every MoE layer;
    /// `maps[l][p]` is the logical expert of physical slot `p` ([`EMPTY_SLOT`] for none).
    Explicit(Vec<Vec<u32>>),
}

impl PlacementSpec {
    /// Parses the file's value; a string other than "contiguous" is a JSON file of slot maps
    /// (`[[3, 0, -1, ...], ...]`), relative to `base` (the layout file's folder).
    pub(crate) fn from_value(
        value: Option<PlacementValue>,
        base: &Path,
    ) -> Result<Self, LayoutError> {
        match value {
            None => Ok(PlacementSpec::Contiguous),
            Some(PlacementValue::Name(s)) if s == "contiguous" => Ok(PlacementSpec::Contiguous),
            Some(PlacementValue::Name(s)) => Self::from_json_file(&base.join(s)),
            Some(PlacementValue::Maps(maps)) => {
                Self::from_maps(maps, Path::new("[experts] placement"))
            }
        }
    }

    fn from_json_file(path: &Path) -> Result<Self, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let maps: Vec<Vec<i64>> = serde_json::from_str(&text).map_err(|e| LayoutError::Parse {
            path: path.to_path_buf(),
            message: format!("expected a JSON list of slot maps ([[expert or -1, ...], ...]): {e}"),
        })?;
        Self::from_maps(maps, path)
    }

    fn from_maps(maps: Vec<Vec<i64>>, origin: &Path) -> Result<Self, LayoutError> {
        if maps.is_empty() {
            return Err(parse_err(origin, "placement lists no slot map".into()));
        }
        let mut out = Vec::with_capacity(maps.len());
        for (l, map) in maps.into_iter().enumerate() {
            let slots = map
                .into_iter()
                .map(|e| match e {
                    -1 => Ok(EMPTY_SLOT),
                    e if e >= 0 && e < i64::from(EMPTY_SLOT) => Ok(e as u32),
                    e => Err(parse_err(
                        origin,
                        format!("map {l}: {e} is not an expert id or -1"),
                    )),
                })
                .collect::<Result<Vec<u32>, _>>()?;
            out.push(slots);
        }
        Ok(PlacementSpec::Explicit(out))
    }

    /// The placement of the `i`-th MoE layer (model layer `layer`) of `n_moe` MoE layers.
    pub(crate) fn build(
        &self,
        i: usize,
        n_moe: usize,
        layer: usize,
        n_experts: usize,
        groups: usize,
        redundant: usize,
    ) -> Result<Placement, LayoutError> {
        let refused = |source| LayoutError::PlacementRefused { layer, source };
        match self {
            PlacementSpec::Contiguous => {
                Placement::padded(n_experts, groups, redundant).map_err(refused)
            }
            PlacementSpec::Explicit(maps) => {
                if maps.len() != 1 && maps.len() != n_moe {
                    return Err(LayoutError::Placement {
                        layer,
                        message: format!(
                            "{} slot maps given; give 1 (for every MoE layer) or {n_moe} (one per MoE layer)",
                            maps.len()
                        ),
                    });
                }
                let map = if maps.len() == 1 { &maps[0] } else { &maps[i] };
                let want = (n_experts + redundant).div_ceil(groups) * groups;
                if map.len() != want {
                    return Err(LayoutError::Placement {
                        layer,
                        message: format!(
                            "{} slots but experts ({n_experts}) + redundant ({redundant}) over \
                             {groups} expert groups needs {want}",
                            map.len()
                        ),
                    });
                }
                Placement::from_slots(map.clone(), n_experts, groups).map_err(refused)
            }
        }
    }
}

fn parse_err(path: &Path, message: String) -> LayoutError {
    LayoutError::Parse {
        path: PathBuf::from(path),
        message,
    }
}
