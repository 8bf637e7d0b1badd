//! End-to-end decode on the GPU at batch 1: a Mixtral-8x7B-shaped model (configs/models, with
//! fewer layers so that its f32 random weights fit the host) with random weights, tokens per
//! second against the HBM roofline (weight bytes one step reads / the copy bandwidth measured in
//! the same run). A measurement, not a check: run it with
//! `cargo test --release --features cuda --test cuda_decode -- --ignored --nocapture`.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::time::Instant;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::backend::Device;
use switchyard::engine::{Engine, GenerateOptions};
use switchyard::model::ModelSource;

const LAYERS: usize = 2;

/// Device-to-device copy rate of a 4 GiB buffer, bytes read + written per second.
fn copy_bandwidth(device: &Device) -> f64 {
    let Device::Cuda(d) = device else {
        unreachable!()
    };
    let n = 1usize << 30;
    let src = d.zeros::<f32>(n).unwrap();
    let mut dst = d.zeros::<f32>(n).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        d.synchronize().unwrap();
        let t = Instant::now();
        d.stream().memcpy_dtod(&src, &mut dst).unwrap();
        d.synchronize().unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * 4) as f64 / best
}

#[test]
#[ignore = "a measurement on the GPU machine"]
fn mixtral_shaped_decode_at_batch_1() {
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            return;
        }
    };
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/models/Mixtral-8x7B-v0.1/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    cfg["num_hidden_layers"] = LAYERS.into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let t = Instant::now();
    let mut model = ModelSource {
        dir: dir.path().into(),
        random_weights: Some(0),
    }
    .load()
    .unwrap()
    .model;
    let c = model.config().clone();
    model.to_device(&device).unwrap();
    eprintln!(
        "built and uploaded {LAYERS} layers in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut engine = Engine::new(model, 256, 16);
    let prompt = [1u32, 415, 2936, 9060];
    let run = |e: &mut Engine, n: usize| {
        let opts = GenerateOptions {
            max_tokens: n,
            sampling: SamplingParams::default(),
            seed: 0,
            ignore_eos: true,
        };
        let t = Instant::now();
        let g = e.generate(&prompt, &opts).unwrap();
        assert_eq!(g.tokens.len(), n);
        t.elapsed().as_secs_f64()
    };
    run(&mut engine, 4); // warm-up: kernels, cuBLAS
    let (short, long) = (run(&mut engine, 4), run(&mut engine, 132));
    let step = (long - short) / 128.0;
    // Bytes one decode step reads at batch 1: attention, the router (f32) and two experts per
    // layer, the lm_head; bf16.
    let (h, moe) = (c.hidden_size, c.moe.as_ref().unwrap());
    let attn = h * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * h;
    let experts = moe.router.top_k * 3 * h * moe.intermediate_size;
    let bytes =
        (LAYERS * (2 * (attn + experts) + 4 * moe.n_experts * h) + 2 * c.vocab_size * h) as f64;
    let bw = copy_bandwidth(&device);
    let floor = bytes / bw;
    eprintln!(
        "decode batch 1, {LAYERS} Mixtral-8x7B layers: {:.3} ms/token = {:.1} tokens/s; reads {:.2} GB/step; copy bandwidth {:.2} TB/s; roofline {:.3} ms/token; {:.1}% of roofline",
        step * 1e3,
        1.0 / step,
        bytes / 1e9,
        bw / 1e12,
        floor * 1e3,
        100.0 * floor / step
    );
}
