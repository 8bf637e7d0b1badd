use std::path::PathBuf;

/// A config.json that cannot be used, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid JSON, or a field has the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
    /// `model_type` is not one switchyard runs.
    #[error("{path}: unknown model_type {found:?}; supported: {supported}")]
    UnknownModelType {
        /// The config file.
        path: PathBuf,
        /// The model_type found.
        found: String,
        /// The supported list.
        supported: String,
    },
    /// A field the model cannot be built without.
    #[error("{path}: missing field `{field}` (required for model_type {model_type})")]
    MissingField {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// The model_type.
        model_type: String,
    },
    /// A field whose value does not fit the others.
    #[error("{path}: field `{field}` = {value}: {why}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// The value found.
        value: String,
        /// Why it does not fit.
        why: String,
    },
}
