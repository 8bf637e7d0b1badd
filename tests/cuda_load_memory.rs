//! Loading onto a GPU moves each layer there as soon as it is read, so the host never holds the
//! whole model in f32 (twice a bf16 checkpoint's size: ~187 GB for Mixtral-8x7B, more than the
//! GPU machine's memory). A counting allocator measures the host heap's peak while a
//! Mixtral-shaped model loads from a host weight source (the path a safetensors checkpoint
//! takes: each tensor widened to f32 on the heap, then uploaded), and the model that arrives
//! must compute what the model loaded on the CPU and then moved computes.
//! Skips, saying so, where there is no GPU (CI). Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard::checkpoint::RandomWeights;
use switchyard::config::ModelConfig;
use switchyard::engine::Engine;
use switchyard::model::Model;

/// The system allocator, counting the bytes live now and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on to `System` unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above what was live when `f` started, and `f`'s result.
fn peak_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - base, out)
}

/// Mixtral's config file at widths where one MoE layer is ~350 MB in f32 and the model six
/// of them: a whole model on the heap and one layer on it differ by far more than noise.
fn mixtral_shaped() -> ModelConfig {
    let path = common::fixture_dir("mixtral").join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["hidden_size"] = 1024.into();
    cfg["intermediate_size"] = 3584.into();
    cfg["num_hidden_layers"] = 6.into();
    cfg["num_attention_heads"] = 8.into();
    cfg["num_key_value_heads"] = 2.into();
    cfg["vocab_size"] = 4096.into();
    ModelConfig::from_json(&cfg.to_string(), &path).unwrap()
}

#[test]
fn loading_onto_the_gpu_holds_about_one_layer_on_the_host() {
    let Some(device) = common::gpu() else { return };
    let cfg = mixtral_shaped();
    let (h, i, v) = (cfg.hidden_size, 3584, cfg.vocab_size);
    let moe = cfg.moe.as_ref().unwrap();
    let layer_f32 = moe.n_experts * 3 * h * i * 4;
    let model_f32 = cfg.num_layers * layer_f32 + 2 * v * h * 4;
    let src = RandomWeights::new(11);

    // The counter sees a whole model when one is built on the host.
    let (on_cpu_peak, on_cpu) = peak_during(|| Model::load(&cfg, &src).unwrap());
    assert!(
        on_cpu_peak >= model_f32,
        "a CPU model of {model_f32} f32 bytes peaked at only {on_cpu_peak}"
    );

    let (on_gpu_peak, on_gpu) = peak_during(|| Model::load_on(&cfg, &src, &device).unwrap());
    eprintln!(
        "host heap peak: load on the GPU {:.0} MB, on the CPU {:.0} MB (a layer {:.0} MB, the \
         model {:.0} MB in f32)",
        on_gpu_peak as f64 / 1e6,
        on_cpu_peak as f64 / 1e6,
        layer_f32 as f64 / 1e6,
        model_f32 as f64 / 1e6
    );
    // A layer's expert tensors and their stacked copy, plus one tensor's bf16 staging.
    assert!(
        on_gpu_peak <= 5 * layer_f32 / 2,
        "loading onto the GPU peaked at {on_gpu_peak} host bytes, more than 2.5 layers \
         ({layer_f32} bytes each)"
    );

    let mut moved = on_cpu;
    moved.to_device(&device).unwrap();
    let prompt = [1u32, 17, 300, 4000, 42, 7];
    let want = Engine::new(moved, 16, 16).score(&prompt).unwrap();
    let got = Engine::new(on_gpu, 16, 16).score(&prompt).unwrap();
    assert_eq!(
        got.as_slice(),
        want.as_slice(),
        "the model loaded onto the GPU computes what the moved CPU model computes"
    );
}
