//! `model.safetensors.index.json`: which file holds which tensor in a sharded checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use super::CheckpointError;

/// The index's file name in a Hugging Face model directory.
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(serde::Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

/// Reads the index at `path`: tensor name -> file name (relative to the model directory).
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw: RawIndex = serde_json::from_str(&text).map_err(|e| CheckpointError::BadIndex {
        index: path.to_path_buf(),
        reason: format!("expected a JSON object with a \"weight_map\" of tensor -> file: {e}"),
    })?;
    for file in raw.weight_map.values() {
        let p = Path::new(file);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(CheckpointError::BadIndex {
                index: path.to_path_buf(),
                reason: format!("file {file} is not a plain name inside the model directory"),
            });
        }
    }
    Ok(raw.weight_map)
}
