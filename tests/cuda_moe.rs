//! The CUDA MoE kernels against the CPU reference, on fresh random inputs at bf16 tolerances.
//! Every output is poisoned (NaN, or -1 for indices) before the launch, so an element a kernel
//! fails to write fails the test. Each test prints a message and passes where no GPU or driver is
//! present (CI), so the suite stays green there.
#![cfg(feature = "cuda")]

use half::bf16;
use switchyard::backend::cpu::moe::{
    combine, gather_rows, grouped_swiglu, permute_by_expert, ExpertWeights,
};
use switchyard::backend::cpu::norm::add_rms_norm as cpu_add_rms_norm;
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::cuda::{
    norm, CudaDevice, DeviceBuffer, ForcedTiles, GemmPath, MoeLayer, MoeShape, MoeWorkspace,
    RouterParams, WgmmaTile,
};
use switchyard_experts::{route, GroupMask, RoutedScaling, RouterConfig, TopkMethod};

fn device() -> Option<CudaDevice> {
    if let Some(why) = unavailable_reason() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(CudaDevice::new(0).expect("a GPU is present, so it must open"))
}

/// SplitMix64 uniform values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    /// Router logits with no near-ties: a shuffled ladder of distinct values plus small jitter.
    fn logits(&mut self, t: usize, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(t * n);
        for _ in 0..t {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                let j = ((self.next() + 1.0) * 0.5 * (i + 1) as f32) as usize;
                idx.swap(i, j.min(i));
            }
            out.extend(idx.iter().map(|&r| {
                (r as f32 - n as f32 / 2.0) * (8.0 / n as f32) + self.next() * 0.3 / n as f32
            }));
        }
        out
    }
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}
fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}
fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn poison_bf16(dev: &CudaDevice, n: usize) -> DeviceBuffer<bf16> {
    dev.upload(&vec![bf16::NAN; n]).unwrap()
}
fn poison(dev: &CudaDevice, buf: &mut DeviceBuffer<bf16>) {
    let n = buf.len();
    dev.stream().memcpy_htod(&vec![bf16::NAN; n], buf).unwrap();
}
fn poison_i32(dev: &CudaDevice, buf: &mut DeviceBuffer<i32>) {
    let n = buf.len();
    dev.stream().memcpy_htod(&vec![-1i32; n], buf).unwrap();
}

/// Relative L2 error, and every element finite.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflow)", got[i]);
    }
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) as f64).powi(2))
        .sum();
    let den: f64 = want
        .iter()
        .map(|w| (*w as f64).powi(2))
        .sum::<f64>()
        .max(1e-30);
    let rel = (num / den).sqrt();
    assert!(
        rel <= tol as f64,
        "{what}: relative error {rel:.3e} > {tol:.1e}"
    );
    println!("{what}: relative error {rel:.2e}");
}

fn router_variants() -> Vec<(&'static str, RouterConfig, bool)> {
    let mut v3_exclude = RouterConfig::deepseek_v3(256, 8, 8, 4, true, 2.5);
    v3_exclude.group_mask = GroupMask::Exclude;
    let mut v2_remote = RouterConfig::deepseek_v2(
        64,
        6,
        TopkMethod::GroupLimitedGreedy {
            n_group: 8,
            topk_group: 3,
        },
        16.0,
    );
    v2_remote.normalize = true;
    v2_remote.scaling = RoutedScaling::UnlessNormalized(16.0);
    let mut v2_glg_excl = RouterConfig::deepseek_v2(
        64,
        6,
        TopkMethod::GroupLimitedGreedy {
            n_group: 8,
            topk_group: 3,
        },
        16.0,
    );
    v2_glg_excl.group_mask = GroupMask::Exclude;
    vec![
        (
            "mixtral softmax top-2 renormalised",
            RouterConfig::mixtral(8, 2),
            false,
        ),
        (
            "qwen softmax top-4 not renormalised",
            RouterConfig::qwen_moe(60, 4, false),
            false,
        ),
        (
            "deepseek-v2 greedy scaled",
            RouterConfig::deepseek_v2(64, 6, TopkMethod::Greedy, 16.0),
            false,
        ),
        (
            "deepseek-v2 group-limited zero-fill",
            RouterConfig::deepseek_v2(
                64,
                6,
                TopkMethod::GroupLimitedGreedy {
                    n_group: 8,
                    topk_group: 3,
                },
                16.0,
            ),
            false,
        ),
        ("deepseek-v2 group-limited excluded", v2_glg_excl, false),
        ("deepseek-v2 remote code renormalised", v2_remote, false),
        (
            "deepseek-v3 noaux_tc with bias",
            RouterConfig::deepseek_v3(256, 8, 8, 4, true, 2.5),
            true,
        ),
        (
            "deepseek-v3 noaux_tc no bias, not renormalised",
            RouterConfig::deepseek_v3(256, 8, 8, 4, false, 2.5),
            false,
        ),
        ("deepseek-v3 noaux_tc excluded groups", v3_exclude, true),
        (
            "deepseek-v3 noaux_tc, 512 experts (the wide routing kernel)",
            RouterConfig::deepseek_v3(512, 8, 8, 4, true, 2.5),
            true,
        ),
        (
            "softmax greedy top-32 of 1024",
            RouterConfig::qwen_moe(1024, 32, true),
            false,
        ),
        (
            "sigmoid greedy",
            RouterConfig {
                score: switchyard_experts::ScoreFunction::Sigmoid,
                ..RouterConfig::mixtral(16, 3)
            },
            false,
        ),
    ]
}

#[test]
fn fused_routing_matches_the_reference_for_every_variant() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(1);
    for (name, cfg, with_bias) in router_variants() {
        let t = 77;
        let logits = rng.logits(t, cfg.n_experts);
        let bias = with_bias.then(|| rng.vec(cfg.n_experts, 0.05));
        let want = route(&logits, t, &cfg, bias.as_deref()).unwrap();
        let shape = MoeShape {
            hidden: 128,
            inter: 64,
            n_experts: cfg.n_experts,
            top_k: cfg.top_k,
        };
        let mut ws = MoeWorkspace::new(&dev, shape, t).unwrap();
        poison_i32(&dev, &mut ws.experts);
        dev.stream()
            .memcpy_htod(&vec![f32::NAN; ws.weights.len()], &mut ws.weights)
            .unwrap();
        let d_logits = dev.upload(&logits).unwrap();
        let d_bias = bias.as_ref().map(|b| dev.upload(b).unwrap());
        ws.route(
            &dev,
            &d_logits,
            d_bias.as_ref(),
            &RouterParams::new(&cfg).unwrap(),
            t,
        )
        .unwrap();
        let experts = dev.download(&ws.experts).unwrap();
        let weights = dev.download(&ws.weights).unwrap();
        let want_e: Vec<i32> = want.experts.iter().map(|&e| e as i32).collect();
        assert_eq!(experts, want_e, "{name}: experts");
        for (i, (g, w)) in weights.iter().zip(&want.weights).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{name}: weight {i}: {g} vs {w}"
            );
        }
        println!("{name}: {t} tokens equal");
        for t in [1, 5, 32] {
            check_route_and_permute(&dev, &cfg, &logits[..t * cfg.n_experts], d_bias.as_ref(), t);
        }
        println!("{name}: routed and permuted in one call at 1, 5 and 32 tokens, equal");
    }
}

/// `route_and_permute` (one launch for decode batches of up to 256 experts, two kernels
/// past that) against the reference routing and counting sort, every output poisoned first.
fn check_route_and_permute(
    dev: &CudaDevice,
    cfg: &RouterConfig,
    logits: &[f32],
    d_bias: Option<&DeviceBuffer<f32>>,
    t: usize,
) {
    let bias = d_bias.map(|b| dev.download(b).unwrap());
    let want = route(logits, t, cfg, bias.as_deref()).unwrap();
    let shape = MoeShape {
        hidden: 128,
        inter: 64,
        n_experts: cfg.n_experts,
        top_k: cfg.top_k,
    };
    let mut ws = MoeWorkspace::new(dev, shape, t).unwrap();
    poison_i32(dev, &mut ws.experts);
    poison_permutation(dev, &mut ws);
    dev.stream()
        .memcpy_htod(&vec![f32::NAN; ws.weights.len()], &mut ws.weights)
        .unwrap();
    let d_logits = dev.upload(logits).unwrap();
    let p = RouterParams::new(cfg).unwrap();
    ws.route_and_permute(dev, &d_logits, d_bias, &p, t, GemmPath::Small)
        .unwrap();
    let experts = dev.download(&ws.experts).unwrap();
    let want_e: Vec<i32> = want.experts.iter().map(|&e| e as i32).collect();
    assert_eq!(experts, want_e, "{t} tokens: experts");
    let weights = dev.download(&ws.weights).unwrap();
    for (i, (g, w)) in weights.iter().zip(&want.weights).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{t} tokens: weight {i}: {g} vs {w}"
        );
    }
    check_permutation(dev, &ws, &want.experts, t, GemmPath::Small);
}

fn poison_permutation(dev: &CudaDevice, ws: &mut MoeWorkspace) {
    poison_i32(dev, &mut ws.order);
    poison_i32(dev, &mut ws.row_of_pair);
    poison_i32(dev, &mut ws.offsets);
    poison_i32(dev, &mut ws.tile_offsets);
}

/// The workspace's permutation of `experts` (t tokens) against the CPU counting sort.
fn check_permutation(
    dev: &CudaDevice,
    ws: &MoeWorkspace,
    experts: &[u32],
    t: usize,
    path: GemmPath,
) {
    let (n_experts, top_k) = (ws.shape.n_experts, ws.shape.top_k);
    let want = permute_by_expert(experts, n_experts);
    let order = dev.download(&ws.order).unwrap();
    let offsets = dev.download(&ws.offsets).unwrap();
    let tiles = dev.download(&ws.tile_offsets).unwrap();
    let rows = dev.download(&ws.row_of_pair).unwrap();
    let want_order: Vec<i32> = want.order.iter().map(|&p| p as i32).collect();
    assert_eq!(
        &order[..t * top_k],
        &want_order[..],
        "order ({n_experts} experts, {t} tokens)"
    );
    let want_off: Vec<i32> = want.offsets.iter().map(|&o| o as i32).collect();
    assert_eq!(offsets, want_off, "offsets");
    let mut acc = 0;
    for e in 0..n_experts {
        assert_eq!(tiles[e], acc, "tile offset of expert {e}");
        acc += (want.offsets[e + 1] - want.offsets[e]).div_ceil(path.bm()) as i32;
    }
    assert_eq!(tiles[n_experts], acc);
    for (row, &p) in want.order.iter().enumerate() {
        assert_eq!(rows[p as usize], row as i32, "row_of_pair");
    }
}

#[test]
fn permutation_matches_the_counting_sort() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(2);
    for (n_experts, top_k, t) in [
        (8, 2, 1),
        (8, 2, 1000),
        (256, 8, 3),
        (256, 8, 700),
        (64, 6, 129),
    ] {
        // Skewed picks (distinct per token), so some experts get many rows and some none.
        let mut experts = Vec::new();
        for _ in 0..t {
            let mut chosen: Vec<u32> = Vec::new();
            while chosen.len() < top_k {
                let u = (rng.next() + 1.0) * 0.5;
                let e = ((u * u * n_experts as f32) as u32).min(n_experts as u32 - 1);
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            experts.extend(chosen);
        }
        let shape = MoeShape {
            hidden: 128,
            inter: 64,
            n_experts,
            top_k,
        };
        let mut ws = MoeWorkspace::new(&dev, shape, t).unwrap();
        let e_i32: Vec<i32> = experts.iter().map(|&e| e as i32).collect();
        dev.stream().memcpy_htod(&e_i32, &mut ws.experts).unwrap();
        for path in [GemmPath::Small, GemmPath::Large] {
            poison_permutation(&dev, &mut ws);
            ws.permute(&dev, t, path).unwrap();
            check_permutation(&dev, &ws, &experts, t, path);
        }
        println!("permutation {n_experts} experts top-{top_k} x {t} tokens equal");
    }
}

struct LayerCase {
    name: &'static str,
    shape: MoeShape,
    router: RouterConfig,
    bias: bool,
}

fn layer_cases() -> Vec<LayerCase> {
    vec![
        // hidden % 256 and inter % 128: the Large path runs the wgmma kernels on Hopper.
        LayerCase {
            name: "mixtral-like",
            shape: MoeShape {
                hidden: 256,
                inter: 384,
                n_experts: 8,
                top_k: 2,
            },
            router: RouterConfig::mixtral(8, 2),
            bias: false,
        },
        LayerCase {
            name: "deepseek-like",
            shape: MoeShape {
                hidden: 512,
                inter: 128,
                n_experts: 64,
                top_k: 6,
            },
            router: RouterConfig::deepseek_v3(64, 6, 8, 4, true, 2.5),
            bias: true,
        },
        // Neither divides the wgmma tiles: the Large path falls back to the mma.sync kernels.
        LayerCase {
            name: "odd-shape",
            shape: MoeShape {
                hidden: 384,
                inter: 448,
                n_experts: 8,
                top_k: 2,
            },
            router: RouterConfig::mixtral(8, 2),
            bias: false,
        },
    ]
}

/// Every stage and the whole layer against route -> permute -> grouped SwiGLU -> combine on the CPU.
#[test]
fn moe_layer_matches_the_cpu_path() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(3);
    for case in layer_cases() {
        let s = case.shape;
        let (h, i, e, k) = (s.hidden, s.inter, s.n_experts, s.top_k);
        let gate_up = round_bf16(&rng.vec(e * 2 * i * h, 1.0 / (h as f32).sqrt()));
        let down = round_bf16(&rng.vec(e * h * i, 1.0 / (i as f32).sqrt()));
        let bias = case.bias.then(|| rng.vec(e, 0.05));
        let layer = MoeLayer {
            shape: s,
            gate_up: dev.upload(&to_bf16(&gate_up)).unwrap(),
            down: dev.upload(&to_bf16(&down)).unwrap(),
            router: RouterParams::new(&case.router).unwrap(),
            bias: bias.as_ref().map(|b| dev.upload(b).unwrap()),
        };
        for t in [1usize, 5, 64, 300, 2000] {
            let x = round_bf16(&rng.vec(t * h, 1.0));
            let logits = rng.logits(t, e);
            let addend = round_bf16(&rng.vec(t * h, 0.5));
            // CPU reference.
            let r = route(&logits, t, &case.router, bias.as_deref()).unwrap();
            let perm = permute_by_expert(&r.experts, e);
            let xs = gather_rows(&x, h, &perm.order, k);
            let w = ExpertWeights {
                gate_up: &gate_up,
                down: &down,
                hidden: h,
                inter: i,
                gate_up_bias: None,
                down_bias: None,
            };
            let y = grouped_swiglu(&xs, &perm.offsets, w);
            let mut want = combine(&y, &perm.order, &r.weights, k, h);
            for (o, a) in want.iter_mut().zip(&addend) {
                *o += a;
            }
            // The intermediate act of the reference, per sorted row.
            let want_act: Vec<f32> = {
                let mut act = vec![0.0f32; t * k * i];
                for ex in 0..e {
                    let rows = perm.offsets[ex]..perm.offsets[ex + 1];
                    for row in rows {
                        let xr = &xs[row * h..][..h];
                        for c in 0..i {
                            let g: f32 = (0..h)
                                .map(|q| gate_up[(ex * 2 * i + c) * h + q] * xr[q])
                                .sum();
                            let u: f32 = (0..h)
                                .map(|q| gate_up[(ex * 2 * i + i + c) * h + q] * xr[q])
                                .sum();
                            act[row * i + c] = g / (1.0 + (-g).exp()) * u;
                        }
                    }
                }
                act
            };
            let d_x = dev.upload(&to_bf16(&x)).unwrap();
            let d_logits = dev.upload(&logits).unwrap();
            let d_add = dev.upload(&to_bf16(&addend)).unwrap();
            let mut ws = MoeWorkspace::new(&dev, s, t).unwrap();
            for path in [GemmPath::Small, GemmPath::Large] {
                poison(&dev, &mut ws.act);
                poison(&dev, &mut ws.y);
                let mut out = poison_bf16(&dev, t * h);
                ws.route(&dev, &d_logits, layer.bias.as_ref(), &layer.router, t)
                    .unwrap();
                ws.permute(&dev, t, path).unwrap();
                ws.gate_up(&dev, &d_x, &layer.gate_up, t, path).unwrap();
                let act = from_bf16(&dev.download(&ws.act).unwrap());
                assert_close(
                    &format!("{} T={t} {path:?} gate/up SiLU", case.name),
                    &act[..t * k * i],
                    &want_act,
                    1e-2,
                );
                ws.down(&dev, &layer.down, t, path).unwrap();
                ws.combine(&dev, t, Some(&d_add), &mut out).unwrap();
                let got = from_bf16(&dev.download(&out).unwrap());
                assert_close(
                    &format!("{} T={t} {path:?} layer", case.name),
                    &got,
                    &want,
                    1.5e-2,
                );
            }
            // The one-call path (picks its own tile shape), without an addend.
            let mut out = poison_bf16(&dev, t * h);
            layer
                .forward(&dev, &mut ws, &d_x, &d_logits, t, None, &mut out)
                .unwrap();
            let got = from_bf16(&dev.download(&out).unwrap());
            let want_plain: Vec<f32> = want.iter().zip(&addend).map(|(w, a)| w - a).collect();
            assert_close(
                &format!("{} T={t} forward", case.name),
                &got,
                &want_plain,
                1.5e-2,
            );
        }
    }
}

#[test]
fn rms_norm_with_residual_matches_the_reference() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(4);
    for (rows, hidden) in [(1usize, 4096usize), (33, 7168), (7, 96)] {
        let res = round_bf16(&rng.vec(rows * hidden, 2.0));
        let delta = round_bf16(&rng.vec(rows * hidden, 1.0));
        let w = round_bf16(&rng.vec(hidden, 1.0));
        let mut want_res = res.clone();
        let want = cpu_add_rms_norm(&mut want_res, &delta, &w, 1e-6);
        let mut d_res = dev.upload(&to_bf16(&res)).unwrap();
        let d_delta = dev.upload(&to_bf16(&delta)).unwrap();
        let d_w = dev.upload(&to_bf16(&w)).unwrap();
        let mut out = poison_bf16(&dev, rows * hidden);
        norm::add_rms_norm(
            &dev,
            &mut d_res,
            Some(&d_delta),
            &d_w,
            &mut out,
            rows,
            hidden,
            1e-6,
        )
        .unwrap();
        assert_close(
            &format!("add_rms_norm {rows}x{hidden} out"),
            &from_bf16(&dev.download(&out).unwrap()),
            &want,
            1e-2,
        );
        assert_close(
            &format!("add_rms_norm {rows}x{hidden} residual"),
            &from_bf16(&dev.download(&d_res).unwrap()),
            &want_res,
            1e-2,
        );
    }
}

/// The grouped GEMMs of both paths over groups chosen to hit the tile edges: experts with 0, 1,
/// 31, 33, 63, 65, 127, 129, 255, 257 rows and more (the 8-row passes and 32-row tiles of the
/// decode kernels, the 64- and 128-row wgmma tiles; the cluster pairs' 256-row super tiles with
/// tails of 1, 44 and 188 rows), an empty group between full ones, routed explicitly
/// (top-1, shuffled tokens), against the CPU path.
#[test]
fn grouped_gemms_handle_empty_single_and_ragged_groups() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(5);
    let sets: [&[usize]; 2] = [
        &[0, 1, 31, 33, 0, 63, 65, 127, 129, 300],
        &[0, 1, 129, 255, 257, 300, 0, 700],
    ];
    for (counts, (hidden, inter)) in sets
        .iter()
        .flat_map(|c| [(256usize, 384usize), (384, 448), (512, 512), (1024, 256)].map(|s| (c, s)))
    {
        let (h, i, e, k) = (hidden, inter, counts.len(), 1usize);
        let shape = MoeShape {
            hidden: h,
            inter: i,
            n_experts: e,
            top_k: k,
        };
        let t: usize = counts.iter().sum();
        let mut experts: Vec<u32> = counts
            .iter()
            .enumerate()
            .flat_map(|(ex, &c)| std::iter::repeat_n(ex as u32, c))
            .collect();
        for a in (1..t).rev() {
            let b = (((rng.next() + 1.0) * 0.5 * (a + 1) as f32) as usize).min(a);
            experts.swap(a, b);
        }
        let weights: Vec<f32> = (0..t).map(|_| 0.75 + 0.25 * rng.next()).collect();
        let gate_up = round_bf16(&rng.vec(e * 2 * i * h, 1.0 / (h as f32).sqrt()));
        let down = round_bf16(&rng.vec(e * h * i, 1.0 / (i as f32).sqrt()));
        let x = round_bf16(&rng.vec(t * h, 1.0));
        let perm = permute_by_expert(&experts, e);
        let xs = gather_rows(&x, h, &perm.order, k);
        let w = ExpertWeights {
            gate_up: &gate_up,
            down: &down,
            hidden: h,
            inter: i,
            gate_up_bias: None,
            down_bias: None,
        };
        let y = grouped_swiglu(&xs, &perm.offsets, w);
        let want = combine(&y, &perm.order, &weights, k, h);
        let d_gu = dev.upload(&to_bf16(&gate_up)).unwrap();
        let d_down = dev.upload(&to_bf16(&down)).unwrap();
        let d_x = dev.upload(&to_bf16(&x)).unwrap();
        let mut ws = MoeWorkspace::new(&dev, shape, t).unwrap();
        let e_i32: Vec<i32> = experts.iter().map(|&v| v as i32).collect();
        // The decode path, and every Hopper tile (where the device has none, the mma.sync
        // kernels run each time).
        // The cluster pairs and quads run with and without multicast (bits: weights, token
        // rows); shapes whose N tiles do not come in groups of the cluster fall back to the
        // next smaller tile (quads to pairs to one CTA a unit).
        // The one-CTA tiles run expert by expert, 128 x 256 also in one global raster.
        let runs = [
            (GemmPath::Small, None, 3, true),
            (GemmPath::Large, None, 3, true),
            (GemmPath::Large, Some(WgmmaTile::Rows64), 3, true),
            (GemmPath::Large, Some(WgmmaTile::Rows128), 3, true),
            (GemmPath::Large, Some(WgmmaTile::Rows128), 3, false),
            (GemmPath::Large, Some(WgmmaTile::Pairs), 3, true),
            (GemmPath::Large, Some(WgmmaTile::Pairs), 0, true),
            (GemmPath::Large, Some(WgmmaTile::Pairs), 1, true),
            (GemmPath::Large, Some(WgmmaTile::Quads), 3, true),
            (GemmPath::Large, Some(WgmmaTile::Quads), 0, true),
        ];
        for (path, tile, multicast, expert_raster) in runs {
            ws.wgmma_tile = ForcedTiles::both(tile);
            ws.wgmma_multicast = multicast;
            ws.wgmma_expert_raster = expert_raster;
            dev.stream().memcpy_htod(&e_i32, &mut ws.experts).unwrap();
            dev.stream().memcpy_htod(&weights, &mut ws.weights).unwrap();
            poison(&dev, &mut ws.act);
            poison(&dev, &mut ws.y);
            let mut out = poison_bf16(&dev, t * h);
            ws.permute(&dev, t, path).unwrap();
            ws.gate_up(&dev, &d_x, &d_gu, t, path).unwrap();
            ws.down(&dev, &d_down, t, path).unwrap();
            ws.combine(&dev, t, None, &mut out).unwrap();
            let got = from_bf16(&dev.download(&out).unwrap());
            assert_close(
                &format!(
                    "groups {counts:?} {h}x{i} {path:?} {tile:?} multicast {multicast} expert raster {expert_raster}"
                ),
                &got,
                &want,
                1.5e-2,
            );
        }
    }
}
