//! Parsing and validating one safetensors header.
//!
//! Format: 8 bytes little-endian `n`, `n` bytes of JSON `{name: {dtype, shape, data_offsets},
//! "__metadata__": {..}}`, then the data; offsets are relative to the end of the header. We parse it
//! ourselves (rather than `SafeTensors::read_metadata`) to say *which* number is wrong, to keep
//! going on dtypes we cannot load until someone asks for them, and to accept files with padding
//! between tensors.

use std::ops::Range;
use std::path::Path;

use super::CheckpointError;

/// Headers past this size are corrupt (safetensors itself refuses more than 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor as listed in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorEntry {
    /// The dtype exactly as written (`BF16`, `F8_E4M3`, ...).
    pub dtype: String,
    /// Dims, outermost first.
    pub shape: Vec<usize>,
    /// Byte range in the whole file (header included).
    pub bytes: Range<usize>,
}

/// The tensors of one file, sorted by name.
#[derive(Debug)]
pub(crate) struct Header {
    pub tensors: Vec<(String, TensorEntry)>,
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn corrupt(file: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Bits per element of a safetensors dtype name, `None` when safetensors does not know it.
fn dtype_bits(dtype: &str) -> Option<usize> {
    serde_json::from_value::<safetensors::Dtype>(serde_json::Value::String(dtype.to_string()))
        .ok()
        .map(|d| d.bitsize())
}

/// Parses and validates the header of the safetensors file `file` whose full contents are `buf`.
pub(crate) fn parse(file: &Path, buf: &[u8]) -> Result<Header, CheckpointError> {
    let file_len = buf.len() as u64;
    let Some(len_bytes) = buf.get(..8) else {
        return Err(corrupt(
            file,
            format!("file is {file_len} bytes, shorter than the 8-byte header length"),
        ));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if n > file_len - 8 {
        return Err(corrupt(
            file,
            format!(
                "header length is {n} bytes but the file holds only {} bytes after it \
                 (truncated, or not a safetensors file)",
                file_len - 8
            ),
        ));
    }
    if n > MAX_HEADER_BYTES {
        return Err(corrupt(
            file,
            format!("header length is {n} bytes, more than the {MAX_HEADER_BYTES} allowed"),
        ));
    }
    let data_start = 8 + n as usize;
    let data_len = buf.len() - data_start;
    let json = std::str::from_utf8(&buf[8..data_start])
        .map_err(|e| corrupt(file, format!("header is not UTF-8: {e}")))?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json.trim_end())
        .map_err(|e| {
            corrupt(
                file,
                format!("header ({n} bytes) is not a JSON object: {e}"),
            )
        })?;

    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawInfo = serde_json::from_value(value).map_err(|e| {
            corrupt(
                file,
                format!(
                    "header entry for tensor {name} is not {{dtype, shape, data_offsets}}: {e}"
                ),
            )
        })?;
        let [begin, end] = raw.data_offsets;
        if begin > end {
            return Err(corrupt(
                file,
                format!("tensor {name} has data offsets [{begin}, {end}]: begin is after end"),
            ));
        }
        if end > data_len as u64 {
            return Err(corrupt(
                file,
                format!(
                    "tensor {name} data ends at byte {end} of the data section, but the file holds \
                     only {data_len} bytes of data (file truncated?)"
                ),
            ));
        }
        if let Some(bits) = dtype_bits(&raw.dtype) {
            let expected = raw
                .shape
                .iter()
                .try_fold(bits as u64, |acc, &d| acc.checked_mul(d as u64))
                .map(|b| b.div_ceil(8));
            if expected != Some(end - begin) {
                return Err(corrupt(
                    file,
                    format!(
                        "tensor {name} ({} {:?}) needs {} bytes but its data offsets [{begin}, {end}] \
                         span {} bytes",
                        raw.dtype,
                        raw.shape,
                        expected.map_or("overflowing".to_string(), |b| b.to_string()),
                        end - begin
                    ),
                ));
            }
        }
        let bytes = data_start + begin as usize..data_start + end as usize;
        tensors.push((
            name,
            TensorEntry {
                dtype: raw.dtype,
                shape: raw.shape,
                bytes,
            },
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Header { tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data_len: usize) -> Vec<u8> {
        let mut buf = (header.len() as u64).to_le_bytes().to_vec();
        buf.extend_from_slice(header.as_bytes());
        buf.resize(buf.len() + data_len, 0);
        buf
    }

    #[test]
    fn parses_entries_and_skips_metadata() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let buf = file_with(h, 28);
        let parsed = parse(Path::new("x.safetensors"), &buf).unwrap();
        let names: Vec<_> = parsed.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let start = 8 + h.len();
        assert_eq!(parsed.tensors[1].1.bytes, start + 16..start + 28);
        assert_eq!(parsed.tensors[1].1.shape, [2, 3]);
    }

    #[test]
    fn rejects_short_and_absurd_lengths() {
        let e = parse(Path::new("f"), &[1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("3 bytes"), "{e}");
        let mut buf = u64::MAX.to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let e = parse(Path::new("f"), &buf).unwrap_err().to_string();
        assert!(
            e.contains(&u64::MAX.to_string()) && e.contains("only 2 bytes"),
            "{e}"
        );
    }

    #[test]
    fn rejects_offsets_not_matching_shape_and_overflowing_shapes() {
        let h = r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#;
        let e = parse(Path::new("f"), &file_with(h, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs 6 bytes") && e.contains("span 8 bytes"),
            "{e}"
        );
        let h = r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#;
        let e = parse(Path::new("f"), &file_with(h, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflowing"), "{e}");
    }

    #[test]
    fn unknown_dtypes_parse_and_are_refused_later() {
        let h = r#"{"a":{"dtype":"F3_FUTURE","shape":[3],"data_offsets":[0,5]}}"#;
        let parsed = parse(Path::new("f"), &file_with(h, 5)).unwrap();
        assert_eq!(parsed.tensors[0].1.dtype, "F3_FUTURE");
    }
}
