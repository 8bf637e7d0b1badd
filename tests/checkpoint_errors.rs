//! The checkpoint loader against small checkpoints written with the `safetensors` crate: one test
//! per way a checkpoint can be wrong (each message must name the file/tensor and the numbers).
//! Round trips, sharding and the random-weight source: tests/checkpoint_values.rs.

mod common;

use common::safetensors_files::*;
use safetensors::tensor::Dtype;
use std::path::Path;
use switchyard::checkpoint::{Checkpoint, CheckpointError, WeightSource};
use switchyard::config::{BlockFp8, Fp8Scales};
use switchyard::tensor::DType;

fn open_err(dir: &Path) -> (CheckpointError, String) {
    let e = Checkpoint::open(dir).expect_err("open should fail");
    let msg = e.to_string();
    (e, msg)
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

// ---------------------------------------------------------------- errors

#[test]
fn missing_tensor_names_tensor_dir_and_similar_names() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "model.safetensors", &small_model());
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = ck
        .load("model.layers.0.self_attn.v_proj.weight", &[2, 6])
        .unwrap_err();
    assert!(matches!(e, CheckpointError::MissingTensor { ref similar, .. } if similar.len() <= 3));
    let msg = e.to_string();
    assert_has(
        &msg,
        &[
            "model.layers.0.self_attn.v_proj.weight",
            &dir.path().display().to_string(),
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ],
    );
}

#[test]
fn wrong_shape_names_file_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "model.safetensors", &small_model());
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = ck
        .load("model.layers.0.self_attn.q_proj.weight", &[6, 4])
        .unwrap_err();
    assert!(matches!(e, CheckpointError::ShapeMismatch { .. }));
    assert_has(
        &e.to_string(),
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "model.safetensors",
            "[6, 4]",
            "[4, 6]",
        ],
    );
}

#[test]
fn unsupported_dtypes_name_tensor_file_dtype_and_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let i64s = Spec {
        name: "ids",
        dtype: Dtype::I64,
        shape: vec![3],
        bytes: vec![0; 24],
    };
    let fp8 = Spec {
        name: "w_fp8",
        dtype: Dtype::F8_E5M2,
        shape: vec![2, 2],
        bytes: vec![0x3C; 4],
    };
    let int8 = Spec {
        name: "w_i8",
        dtype: Dtype::I8,
        shape: vec![4],
        bytes: vec![1; 4],
    };
    write(dir.path(), "model.safetensors", &[i64s, fp8, int8]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    for (name, shape, dtype) in [
        ("ids", &[3][..], "I64"),
        ("w_fp8", &[2, 2][..], "F8_E5M2"),
        ("w_i8", &[4][..], "I8"),
    ] {
        let e = ck.load(name, shape).unwrap_err();
        assert!(matches!(e, CheckpointError::UnsupportedDtype { .. }), "{e}");
        assert_has(
            &e.to_string(),
            &[
                name,
                "model.safetensors",
                dtype,
                "BF16",
                "F16",
                "F32",
                "F8_E4M3",
            ],
        );
    }
}

#[test]
fn fp8_weights_take_their_block_scales_and_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let scales = [0.5, 2.0, -1.0, 4.0];
    write(
        dir.path(),
        "model.safetensors",
        &[
            fp8s("w", &[4, 6]),
            f32s("w_scale_inv", &[2, 2], &scales),
            fp8s("no_scales", &[4, 6]),
            fp8s("bad_scales", &[4, 6]),
            f32s("bad_scales_scale_inv", &[1, 2], &[1.0, 1.0]),
            fp8s("cube", &[2, 2, 2]),
        ],
    );
    let blocks = BlockFp8 { rows: 2, cols: 3 };
    let unconfigured = Checkpoint::open(dir.path()).unwrap();
    let e = unconfigured.load("w", &[4, 6]).unwrap_err().to_string();
    assert_has(
        &e,
        &["w", "model.safetensors", "F8_E4M3", "quantization_config"],
    );

    let ck = Checkpoint::open(dir.path())
        .unwrap()
        .with_quantization(Some(Fp8Scales::Blocks(blocks)));
    let w = ck.load("w", &[4, 6]).unwrap();
    let want: Vec<f32> = (0..24)
        .map(|k| scales[(k / 6 / 2) * 2 + k % 6 / 3])
        .collect();
    assert_eq!(w.as_slice(), want);
    assert_eq!(w.dtype(), DType::BF16);
    let e = ck.load("w", &[6, 4]).unwrap_err().to_string();
    assert_has(&e, &["w", "[6, 4]", "[4, 6]"]);
    let e = ck.load("no_scales", &[4, 6]).unwrap_err().to_string();
    assert_has(
        &e,
        &["no_scales", "no_scales_scale_inv", "not in the checkpoint"],
    );
    let e = ck.load("bad_scales", &[4, 6]).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "bad_scales_scale_inv",
            "[1, 2]",
            "[2, 2]",
            "2 x 3",
            "weight_block_size",
        ],
    );
    let e = ck.load("cube", &[2, 2, 2]).unwrap_err().to_string();
    assert_has(&e, &["cube", "matrices", "[2, 2, 2]"]);
}

#[test]
fn per_tensor_fp8_weights_take_their_one_scale() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "model.safetensors",
        &[
            fp8s("w", &[3, 5]),
            f32s("w_scale", &[], &[0.25]),
            fp8s("v", &[2, 2]),
            f32s("v_scale", &[1], &[-3.0]),
            fp8s("two_scales", &[2, 2]),
            f32s("two_scales_scale", &[2], &[1.0, 2.0]),
            fp8s("no_scale", &[2, 2]),
        ],
    );
    let ck = Checkpoint::open(dir.path())
        .unwrap()
        .with_quantization(Some(Fp8Scales::PerTensor));
    assert_eq!(ck.load("w", &[3, 5]).unwrap().as_slice(), [0.25; 15]);
    assert_eq!(ck.load("v", &[2, 2]).unwrap().as_slice(), [-3.0; 4]);
    let e = ck.load("two_scales", &[2, 2]).unwrap_err().to_string();
    assert_has(&e, &["two_scales_scale", "[2]", "no weight_block_size"]);
    let e = ck.load("no_scale", &[2, 2]).unwrap_err().to_string();
    assert_has(&e, &["no_scale_scale", "not in the checkpoint"]);
}

#[test]
fn truncated_file_names_file_and_byte_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = serialize(&small_model());
    let full = bytes.len();
    bytes.truncate(full - 10);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::Corrupt { .. }));
    // The last tensor by offset is the f32 norm (24 bytes) after 48 + 24 bytes of bf16.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_len = full - 10 - 8 - header_len;
    assert_has(
        &msg,
        &[
            "model.safetensors",
            "truncated",
            &data_len.to_string(),
            "96",
        ],
    );
}

#[test]
fn file_shorter_than_the_length_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), [7u8, 0, 0]).unwrap();
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", "3 bytes"]);
}

#[test]
fn garbage_json_header_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let junk = b"{\"a\": [1, 2,, oops";
    let mut bytes = (junk.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(junk);
    std::fs::write(dir.path().join("broken.safetensors"), &bytes).unwrap();
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::Corrupt { .. }));
    assert_has(&msg, &["broken.safetensors", "JSON"]);
}

#[test]
fn header_entry_of_the_wrong_form_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":"big","data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", "tensor w"]);
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = serialize(&small_model());
    bytes[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let after = bytes.len() - 8;
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", "1000000", &after.to_string()]);

    // An absurd length (u64::MAX) must not overflow or allocate.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", &u64::MAX.to_string()]);
}

#[test]
fn data_offsets_past_the_end_or_not_matching_dtype_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let write_raw = |header: &str, data: usize| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    };
    write_raw(
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        12,
    );
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", "tensor w", "16", "12"]);

    write_raw(
        r#"{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]}}"#,
        16,
    );
    let (_, msg) = open_err(dir.path());
    assert_has(
        &msg,
        &[
            "model.safetensors",
            "tensor w",
            "needs 12 bytes",
            "span 16 bytes",
        ],
    );

    write_raw(
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
        16,
    );
    let (_, msg) = open_err(dir.path());
    assert_has(&msg, &["model.safetensors", "tensor w", "[8, 4]"]);
}

#[test]
fn index_naming_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &small_model()[..2],
    );
    write_index(
        dir.path(),
        &[
            (
                "model.layers.0.self_attn.q_proj.weight",
                "model-00001-of-00002.safetensors",
            ),
            (
                "model.layers.0.self_attn.k_proj.weight",
                "model-00001-of-00002.safetensors",
            ),
            ("model.norm.weight", "model-00002-of-00002.safetensors"),
        ],
    );
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::IndexMissingFile { .. }));
    assert_has(
        &msg,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "model.norm.weight",
        ],
    );
}

#[test]
fn index_naming_a_tensor_the_file_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = small_model();
    let norm = specs.pop().unwrap();
    write(dir.path(), "a.safetensors", &specs);
    write(dir.path(), "b.safetensors", &[norm]);
    write_index(
        dir.path(),
        &[
            ("model.layers.0.self_attn.q_proj.weight", "a.safetensors"),
            ("model.layers.0.self_attn.k_proj.weight", "a.safetensors"),
            ("model.norm.weight", "a.safetensors"), // really in b
            ("lm_head.weight", "b.safetensors"),    // nowhere
        ],
    );
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::IndexTensorNotInFile { .. }));
    // Tensors are checked in name order: lm_head.weight first.
    assert_has(
        &msg,
        &[
            "model.safetensors.index.json",
            "lm_head.weight",
            "b.safetensors",
            "no file",
        ],
    );

    write_index(
        dir.path(),
        &[
            ("model.layers.0.self_attn.q_proj.weight", "a.safetensors"),
            ("model.norm.weight", "a.safetensors"),
        ],
    );
    let (_, msg) = open_err(dir.path());
    assert_has(
        &msg,
        &[
            "model.norm.weight",
            "a.safetensors",
            "it is in",
            "b.safetensors",
        ],
    );
}

#[test]
fn bad_index_json_names_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "model.safetensors", &small_model());
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"weights\": {}}",
    )
    .unwrap();
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::BadIndex { .. }));
    assert_has(&msg, &["model.safetensors.index.json", "weight_map"]);
}

#[test]
fn tensor_in_two_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.safetensors", &small_model());
    write(
        dir.path(),
        "b.safetensors",
        &[f32s("model.norm.weight", &[6], &[2.0; 6])],
    );
    let (e, msg) = open_err(dir.path());
    assert!(matches!(e, CheckpointError::DuplicateTensor { .. }));
    assert_has(
        &msg,
        &["model.norm.weight", "a.safetensors", "b.safetensors"],
    );
}

#[test]
fn empty_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let (e, msg) = open_err(dir.path());
    assert!(matches!(
        e,
        CheckpointError::NoWeights {
            has_pytorch_bin: false,
            ..
        }
    ));
    assert_has(&msg, &[&dir.path().display().to_string(), "*.safetensors"]);
    assert!(!msg.contains(".bin"), "{msg}");
}

#[test]
fn pytorch_bin_only_says_convert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), [0u8; 16]).unwrap();
    let (e, msg) = open_err(dir.path());
    assert!(matches!(
        e,
        CheckpointError::NoWeights {
            has_pytorch_bin: true,
            ..
        }
    ));
    assert_has(
        &msg,
        &[
            &dir.path().display().to_string(),
            "pytorch_model.bin",
            "not supported",
            "safetensors",
        ],
    );
}

#[test]
fn missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such-model");
    let (e, msg) = open_err(&gone);
    assert!(matches!(e, CheckpointError::Io { .. }));
    assert_has(&msg, &["no-such-model"]);
}

#[test]
fn errors_convert_into_the_crate_error() {
    let dir = tempfile::tempdir().unwrap();
    let e: switchyard::error::Error = Checkpoint::open(dir.path()).unwrap_err().into();
    assert!(e.to_string().contains("*.safetensors"), "{e}");
}
