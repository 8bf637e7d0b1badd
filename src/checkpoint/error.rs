//! What can go wrong while opening a checkpoint or loading a tensor from it.
//!
//! Every variant names the file and/or the tensor and says what was expected, so a user can act on
//! the message without reading the code.

use std::path::PathBuf;

/// A checkpoint that cannot be opened, or a tensor that cannot be loaded from it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file or directory could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The directory holds no safetensors file.
    #[error(
        "no *.safetensors files in {}{}",
        dir.display(),
        if *has_pytorch_bin {
            " (it has pytorch_model.bin: .bin checkpoints are not supported, convert them to \
             safetensors first, e.g. with `transformers`' save_pretrained(safe_serialization=True))"
        } else {
            ""
        }
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
        /// Whether a `pytorch_model*.bin` file is there instead.
        has_pytorch_bin: bool,
    },
    /// `model.safetensors.index.json` is not valid.
    #[error("bad index {}: {reason}", index.display())]
    BadIndex {
        /// The index file.
        index: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The index maps a tensor to a file that is not in the directory.
    #[error(
        "index {} maps tensor {tensor} (and {others} more) to file {file}, which does not exist in {}",
        index.display(),
        dir.display()
    )]
    IndexMissingFile {
        /// The index file.
        index: PathBuf,
        /// The model directory.
        dir: PathBuf,
        /// The missing file name, as written in the index.
        file: String,
        /// One tensor mapped to it.
        tensor: String,
        /// How many other tensors are mapped to it.
        others: usize,
    },
    /// The index maps a tensor to a file whose header does not list it.
    #[error(
        "index {} maps tensor {tensor} to {}, but that file does not contain it{}",
        index.display(),
        file.display(),
        match actual_file {
            Some(f) => format!(" (it is in {})", f.display()),
            None => " (no file of the checkpoint does)".to_string(),
        }
    )]
    IndexTensorNotInFile {
        /// The index file.
        index: PathBuf,
        /// The tensor.
        tensor: String,
        /// The file the index names.
        file: PathBuf,
        /// The file that really holds the tensor, if any.
        actual_file: Option<PathBuf>,
    },
    /// A safetensors file whose header or size is wrong (corrupt, truncated, not safetensors).
    #[error("corrupt safetensors file {}: {reason}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong, with the numbers.
        reason: String,
    },
    /// The same tensor name is stored in two files.
    #[error(
        "tensor {tensor} is stored twice: in {} and in {}",
        first.display(),
        second.display()
    )]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it.
        second: PathBuf,
    },
    /// The model asks for a tensor the checkpoint lacks.
    #[error(
        "tensor {tensor} not found in checkpoint {}{}",
        dir.display(),
        similar_hint(similar)
    )]
    MissingTensor {
        /// The tensor asked for.
        tensor: String,
        /// The model directory.
        dir: PathBuf,
        /// Up to three tensors with similar names that do exist.
        similar: Vec<String>,
    },
    /// The stored shape is not the one the model config implies.
    #[error(
        "tensor {tensor} in {} has shape {found:?}, expected {expected:?} (from the model config)",
        file.display()
    )]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// The tensor is stored in a dtype the loader cannot widen to f32.
    #[error(
        "tensor {tensor} in {} has dtype {dtype}, which is not supported (supported: {})",
        file.display(),
        SUPPORTED_DTYPES.join(", ")
    )]
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// The stored dtype, as written in the header (e.g. `F8_E4M3`).
        dtype: String,
    },
    /// An FP8 weight that cannot be dequantized: no `quantization_config`, no scales, scales of
    /// the wrong shape, or not a matrix.
    #[error("tensor {tensor} in {} is stored as F8_E4M3, but {reason}", file.display())]
    Fp8 {
        /// The weight.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// What is missing or wrong, with the shapes.
        reason: String,
    },
    /// The loaded values could not be made into a tensor.
    #[error("tensor {tensor}: {reason}")]
    Tensor {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
}

/// The safetensors dtypes [`super::Checkpoint`] can widen to f32 (F8_E4M3 with its scales).
pub const SUPPORTED_DTYPES: [&str; 4] = ["BF16", "F16", "F32", "F8_E4M3"];

fn similar_hint(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!("; similar names that exist: {}", similar.join(", "))
    }
}
