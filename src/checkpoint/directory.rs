//! [`Checkpoint`]: a Hugging Face model directory of safetensors files, memory-mapped.
//!
//! Every header is parsed once at [`Checkpoint::open`]; loading a tensor slices the mapping and
//! widens it to f32. All the cross-file checks (index vs headers, duplicates) happen at open, so a
//! bad checkpoint fails before the first layer is built.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;

use super::header::{self, TensorEntry};
use super::{fp8, index, similar, widen, CheckpointError, WeightSource};
use crate::config::Fp8Scales;
use crate::tensor::{DType, Tensor};

/// One memory-mapped safetensors file.
struct ShardFile {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor lives.
struct Located {
    file: usize,
    entry: TensorEntry,
}

/// A Hugging Face model directory of `*.safetensors` files (sharded with
/// `model.safetensors.index.json` or not), memory-mapped.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<ShardFile>,
    tensors: HashMap<String, Located>,
    total_bytes: u64,
    progress: ProgressBar,
    /// How FP8 weights are scaled, from config.json's `quantization_config`.
    fp8_scales: Option<Fp8Scales>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpoint {
    /// Opens the model directory `dir`: maps its safetensors files and checks every header.
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let index_path = dir.join(index::INDEX_FILE);
        let weight_map = if index_path.is_file() {
            Some(index::read(&index_path)?)
        } else {
            None
        };
        let file_names = match &weight_map {
            Some(map) => files_named_in_index(dir, &index_path, map)?,
            None => safetensors_in(dir)?,
        };

        let mut files: Vec<ShardFile> = Vec::with_capacity(file_names.len());
        let mut tensors: HashMap<String, Located> = HashMap::new();
        for (i, name) in file_names.iter().enumerate() {
            let path = dir.join(name);
            let map = map_file(&path)?;
            let parsed = header::parse(&path, &map)?;
            for (tensor, entry) in parsed.tensors {
                if let Some(prev) = tensors.get(&tensor) {
                    return Err(CheckpointError::DuplicateTensor {
                        tensor,
                        first: files[prev.file].path.clone(),
                        second: path,
                    });
                }
                tensors.insert(tensor, Located { file: i, entry });
            }
            files.push(ShardFile { path, map });
        }

        if let Some(map) = &weight_map {
            for (tensor, file) in map {
                let in_file = tensors.get(tensor).map(|l| l.file);
                if in_file.map(|f| file_names[f].as_str()) != Some(file.as_str()) {
                    return Err(CheckpointError::IndexTensorNotInFile {
                        index: index_path,
                        tensor: tensor.clone(),
                        file: dir.join(file),
                        actual_file: match in_file {
                            Some(f) => Some(files[f].path.clone()),
                            None => find_outside_index(dir, &file_names, tensor),
                        },
                    });
                }
            }
        }

        let total_bytes = tensors.values().map(|l| l.entry.bytes.len() as u64).sum();
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            tensors,
            total_bytes,
            progress: progress_bar(total_bytes),
            fp8_scales: None,
        })
    }

    /// Reads FP8 weights scaled as `scales` says (config.json's `quantization_config`; without
    /// it an FP8 weight is an error naming it).
    pub fn with_quantization(mut self, scales: Option<Fp8Scales>) -> Self {
        self.fp8_scales = scales;
        self
    }

    /// Every tensor name, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The stored shape of tensor `name`, without loading it.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|l| l.entry.shape.as_slice())
    }

    /// The stored dtype of tensor `name` as the header writes it (`BF16`, `F8_E4M3`, ...).
    pub fn dtype_of(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|l| l.entry.dtype.as_str())
    }

    /// Bytes of tensor data in all files (what the progress bar counts up to).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the progress bar; call once the model is built.
    pub fn finish_progress(&self) {
        self.progress.finish_and_clear();
    }

    fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            tensor: name.to_string(),
            dir: self.dir.clone(),
            similar: similar::closest(name, self.tensors.keys().map(String::as_str), 3),
        }
    }
}

impl Checkpoint {
    /// Where tensor `name` is, and its file's path, checked to have `shape`.
    fn locate(&self, name: &str, shape: &[usize]) -> Result<(&Located, &Path), CheckpointError> {
        let located = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[located.file].path;
        let entry = &located.entry;
        if entry.shape != shape {
            return Err(CheckpointError::ShapeMismatch {
                tensor: name.to_string(),
                file: file.clone(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok((located, file))
    }

    /// The stored bytes of a tensor, counted on the progress bar (`header::parse` checked the
    /// range against the file length).
    fn read(&self, at: &Located) -> &[u8] {
        self.progress.inc(at.entry.bytes.len() as u64);
        &self.files[at.file].map[at.entry.bytes.clone()]
    }

    /// Tensor `name` of `shape` stored as bf16, f16 or f32, widened.
    fn widened(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, DType), CheckpointError> {
        let (at, file) = self.locate(name, shape)?;
        let Some(dtype) = widen::supported(&at.entry.dtype) else {
            return Err(CheckpointError::UnsupportedDtype {
                tensor: name.to_string(),
                file: file.to_path_buf(),
                dtype: at.entry.dtype.clone(),
            });
        };
        Ok((widen::to_f32(self.read(at), dtype), dtype))
    }

    /// FP8 weight `name` of `shape`, widened with its scales.
    fn dequantized(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let (at, file) = self.locate(name, shape)?;
        let fp8_err = |reason: String| CheckpointError::Fp8 {
            tensor: name.to_string(),
            file: file.to_path_buf(),
            reason,
        };
        let Some(scales) = self.fp8_scales else {
            return Err(fp8_err(
                "config.json has no quantization_config (quant_method \"fp8\") to say how it is \
                 scaled"
                    .into(),
            ));
        };
        if shape.len() != 2 {
            return Err(fp8_err(format!(
                "FP8 tensors must be matrices, this one has shape {shape:?}"
            )));
        }
        let (scale, blocks) = (fp8::scale_name(name, scales), fp8::blocks(shape, scales));
        let want = fp8::scale_shape(shape, blocks);
        let Some(found) = self.shape_of(&scale).map(<[usize]>::to_vec) else {
            return Err(fp8_err(format!(
                "its scales {scale} are not in the checkpoint"
            )));
        };
        let fits = match scales {
            Fp8Scales::Blocks(_) => found == want,
            Fp8Scales::PerTensor => found.iter().product::<usize>() == 1,
        };
        if !fits {
            let per = match scales {
                Fp8Scales::Blocks(b) => format!(
                    "one per {} x {} block (config.json's weight_block_size)",
                    b.rows, b.cols
                ),
                Fp8Scales::PerTensor => "one (config.json has no weight_block_size)".into(),
            };
            return Err(fp8_err(format!(
                "its scales {scale} have shape {found:?}, expected {want:?}: {per} of {shape:?}"
            )));
        }
        let (scales, _) = self.widened(&scale, &found)?;
        Ok(fp8::dequantize(self.read(at), shape[1], &scales, blocks))
    }
}

impl WeightSource for Checkpoint {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError> {
        let stored = self.dtype_of(name).ok_or_else(|| self.missing(name))?;
        // FP8 weights are held as bf16 once dequantized (on a GPU: the tensor cores' input).
        let (values, dtype) = if stored == fp8::DTYPE {
            (self.dequantized(name, shape)?, DType::BF16)
        } else {
            self.widened(name, shape)?
        };
        Tensor::from_f32_stored_as(shape, values, dtype).map_err(|e| CheckpointError::Tensor {
            tensor: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        format!("checkpoint {}", self.dir.display())
    }
}

/// The distinct files an index names, sorted; each must exist.
fn files_named_in_index(
    dir: &Path,
    index_path: &Path,
    map: &BTreeMap<String, String>,
) -> Result<Vec<String>, CheckpointError> {
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, file) in map {
        by_file.entry(file).or_default().push(tensor);
    }
    for (file, tensors) in &by_file {
        if !dir.join(file).is_file() {
            return Err(CheckpointError::IndexMissingFile {
                index: index_path.to_path_buf(),
                dir: dir.to_path_buf(),
                file: file.to_string(),
                tensor: tensors[0].to_string(),
                others: tensors.len() - 1,
            });
        }
    }
    Ok(by_file.keys().map(|f| f.to_string()).collect())
}

/// Every `*.safetensors` file in `dir`, sorted; none is an error.
fn safetensors_in(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut names = Vec::new();
    let mut has_pytorch_bin = false;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && entry.path().is_file() {
            names.push(name);
        } else if name.starts_with("pytorch_model") && name.ends_with(".bin") {
            has_pytorch_bin = true;
        }
    }
    if names.is_empty() {
        return Err(CheckpointError::NoWeights {
            dir: dir.to_path_buf(),
            has_pytorch_bin,
        });
    }
    names.sort();
    Ok(names)
}

/// On the error path: a `*.safetensors` file of `dir` the index does not name that holds `tensor`.
fn find_outside_index(dir: &Path, indexed: &[String], tensor: &str) -> Option<PathBuf> {
    let others = safetensors_in(dir)
        .ok()?
        .into_iter()
        .filter(|n| !indexed.contains(n));
    others.map(|n| dir.join(n)).find(|path| {
        let Ok(map) = map_file(path) else {
            return false;
        };
        header::parse(path, &map).is_ok_and(|h| h.tensors.iter().any(|(t, _)| t == tensor))
    })
}

fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the mapping is read-only and lives as long as the checkpoint. Another process
    // rewriting the file while we serve would change the bytes under us; like every safetensors
    // loader we accept that (checkpoints are not edited in place while a model is served).
    unsafe { Mmap::map(&file) }.map_err(io_err(path))
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "loading weights [{bar:40}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
