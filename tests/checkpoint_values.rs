//! The checkpoint loader's values: exact round trips of every dtype, names and sizes, sharded
//! equal to unsharded, sharing across threads, and the seeded random-weight source.

mod common;

use common::safetensors_files::*;
use half::{bf16, f16};
use switchyard::checkpoint::{Checkpoint, RandomWeights, WeightSource};
use switchyard::tensor::DType;

// ---------------------------------------------------------------- values

#[test]
fn bf16_f16_f32_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<f32> = vec![
        0.0, -0.0, 1.0, -1.5, 3.3, 1e-3, -65504.0, 1e-7, 2.5e4, 0.1, 7.0, -8.125,
    ];
    write(
        dir.path(),
        "model.safetensors",
        &[
            bf16s("b", &[3, 4], &vals),
            f16s("h", &[3, 4], &vals),
            f32s("f", &[2, 6], &vals),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();

    let b = ck.load("b", &[3, 4]).unwrap();
    let want: Vec<f32> = vals.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(b.dims(), [3, 4]);
    assert_eq!(bits(b.as_slice()), bits(&want));

    let h = ck.load("h", &[3, 4]).unwrap();
    let want: Vec<f32> = vals.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(bits(h.as_slice()), bits(&want));

    let f = ck.load("f", &[2, 6]).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    assert_eq!(bits(f.as_slice()), bits(&vals));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn names_contains_and_total_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "model.safetensors", &small_model());
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(
        ck.tensor_names(),
        [
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.norm.weight"
        ]
    );
    assert!(ck.contains("model.norm.weight"));
    assert!(!ck.contains("lm_head.weight"));
    assert_eq!(ck.total_bytes(), 24 * 2 + 12 * 2 + 6 * 4);
    assert_eq!(
        ck.shape_of("model.layers.0.self_attn.k_proj.weight"),
        Some(&[2, 6][..])
    );
    assert_eq!(ck.dtype_of("model.norm.weight"), Some("F32"));
    assert_eq!(
        ck.describe(),
        format!("checkpoint {}", dir.path().display())
    );
    ck.finish_progress();
}

#[test]
fn sharded_with_index_equals_unsharded() {
    let one = tempfile::tempdir().unwrap();
    let many = tempfile::tempdir().unwrap();
    let specs = || {
        vec![
            bf16s("model.embed_tokens.weight", &[10, 8], &ramp(80)),
            bf16s(
                "model.layers.0.mlp.experts.0.gate_proj.weight",
                &[16, 8],
                &ramp(128),
            ),
            f16s(
                "model.layers.0.mlp.experts.1.gate_proj.weight",
                &[16, 8],
                &ramp(128),
            ),
            f32s("model.norm.weight", &[8], &ramp(8)),
            bf16s("lm_head.weight", &[10, 8], &ramp(80)),
        ]
    };
    write(one.path(), "model.safetensors", &specs());
    let mut all = specs();
    let second = all.split_off(2);
    write(many.path(), "model-00001-of-00002.safetensors", &all);
    write(many.path(), "model-00002-of-00002.safetensors", &second);
    let mut map: Vec<(&str, &str)> = all
        .iter()
        .map(|s| (s.name, "model-00001-of-00002.safetensors"))
        .collect();
    map.extend(
        second
            .iter()
            .map(|s| (s.name, "model-00002-of-00002.safetensors")),
    );
    write_index(many.path(), &map);
    // A stray file the index does not name is ignored.
    write(
        many.path(),
        "zz-unrelated.safetensors",
        &[f32s("model.norm.weight", &[1], &[9.0])],
    );

    let a = Checkpoint::open(one.path()).unwrap();
    let b = Checkpoint::open(many.path()).unwrap();
    assert_eq!(a.tensor_names(), b.tensor_names());
    assert_eq!(a.total_bytes(), b.total_bytes());
    for s in specs() {
        let (x, y) = (
            a.load(s.name, &s.shape).unwrap(),
            b.load(s.name, &s.shape).unwrap(),
        );
        assert_eq!(x, y, "{}", s.name);
    }
}

#[test]
fn checkpoint_is_a_shareable_weight_source() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "model.safetensors", &small_model());
    let source: std::sync::Arc<dyn WeightSource> =
        std::sync::Arc::new(Checkpoint::open(dir.path()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = source.clone();
            std::thread::spawn(move || s.load("model.norm.weight", &[6]).unwrap().into_vec())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![1.0; 6]);
    }
}

// ---------------------------------------------------------------- random weights

#[test]
fn random_weights_are_deterministic_per_seed_and_name() {
    let w = RandomWeights::new(7);
    let name = "model.layers.0.mlp.experts.3.down_proj.weight";
    let shape = [300, 700]; // several parallel chunks
    let a = w.load(name, &shape).unwrap();
    let b = RandomWeights::new(7).load(name, &shape).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.dtype(), DType::BF16);
    assert_ne!(a, RandomWeights::new(8).load(name, &shape).unwrap());
    let other = w
        .load("model.layers.0.mlp.experts.4.down_proj.weight", &shape)
        .unwrap();
    assert_ne!(a, other);
    assert_eq!(w.describe(), "random weights, seed 7");
}

#[test]
fn random_weights_have_the_right_std_and_are_bf16_values() {
    let w = RandomWeights::new(42);
    let cols = 256;
    let t = w
        .load("model.layers.1.self_attn.o_proj.weight", &[1024, cols])
        .unwrap();
    let v = t.as_slice();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let want = 1.0 / (cols as f64).sqrt();
    assert!(mean.abs() < 0.01 * want, "mean {mean}");
    assert!(
        (var.sqrt() / want - 1.0).abs() < 0.01,
        "std {} want {want}",
        var.sqrt()
    );
    // Roughly Gaussian: ~68% within one std.
    let within = v.iter().filter(|&&x| (x as f64).abs() < want).count() as f64 / n;
    assert!((within - 0.6827).abs() < 0.01, "within 1 std: {within}");
    assert!(
        v.iter().all(|&x| bf16::from_f32(x).to_f32() == x),
        "values are bf16-representable"
    );
}

#[test]
fn random_norms_are_one_and_biases_zero() {
    let w = RandomWeights::new(1);
    for name in [
        "model.norm.weight",
        "model.layers.2.input_layernorm.weight",
        "model.layers.2.self_attn.k_norm.weight",
    ] {
        assert_eq!(
            w.load(name, &[16]).unwrap().into_vec(),
            vec![1.0; 16],
            "{name}"
        );
    }
    for name in [
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.3.mlp.gate.e_score_correction_bias",
    ] {
        assert_eq!(
            w.load(name, &[16]).unwrap().into_vec(),
            vec![0.0; 16],
            "{name}"
        );
    }
}
