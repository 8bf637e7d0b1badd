//! Router: hand-computed cases per variant and a brute-force property test.

use proptest::prelude::*;
use switchyard_experts::{
    expert_counts, route, GroupMask, RoutedScaling, RouterConfig, ScoreFunction, TopkMethod,
};

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn mixtral_hand_computed() {
    // logits ln(1), ln(2), ln(3), ln(4): softmax 0.1 0.2 0.3 0.4; top-2 = 3, 2; renormalised 4/7 3/7.
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
    let r = route(&logits, 1, &RouterConfig::mixtral(4, 2), None).unwrap();
    assert_eq!(r.experts, vec![3, 2]);
    assert!((r.weights[0] - 4.0 / 7.0).abs() < 1e-6 && (r.weights[1] - 3.0 / 7.0).abs() < 1e-6);
    assert_eq!(expert_counts(&r, 4), vec![0, 0, 1, 1]);
}

#[test]
fn qwen_without_norm_keeps_softmax_weights() {
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
    let r = route(&logits, 1, &RouterConfig::qwen_moe(4, 2, false), None).unwrap();
    assert_eq!(r.experts, vec![3, 2]);
    assert!((r.weights[0] - 0.4).abs() < 1e-6 && (r.weights[1] - 0.3).abs() < 1e-6);
}

#[test]
fn ties_go_to_the_lower_expert() {
    let r = route(&[0.0; 8], 2, &RouterConfig::mixtral(4, 2), None).unwrap();
    assert_eq!(r.experts, vec![0, 1, 0, 1]);
    assert_eq!(r.weights, vec![0.5; 4]);
}

#[test]
fn deepseek_v2_group_limited_hand_computed() {
    // 4 groups of 2. softmax of ln(p) = p for p summing to 1.
    let p = [0.05f32, 0.30, 0.10, 0.10, 0.25, 0.02, 0.08, 0.10];
    let logits: Vec<f32> = p.iter().map(|v| v.ln()).collect();
    let method = TopkMethod::GroupLimitedGreedy {
        n_group: 4,
        topk_group: 2,
    };
    let cfg = RouterConfig::deepseek_v2(8, 3, method, 16.0);
    let r = route(&logits, 1, &cfg, None).unwrap();
    // Group maxima 0.30, 0.10, 0.25, 0.10: keep groups 0 and 2 -> experts {0,1,4,5}; top-3: 1, 4, 0.
    assert_eq!(r.experts, vec![1, 4, 0]);
    let want = [0.30 * 16.0, 0.25 * 16.0, 0.05 * 16.0];
    for (w, x) in r.weights.iter().zip(want) {
        assert!((w - x).abs() < 1e-5, "{:?}", r.weights);
    }
    // Hub remote code: renormalised (+1e-20) and then not scaled.
    let remote = RouterConfig {
        normalize: true,
        scaling: RoutedScaling::UnlessNormalized(16.0),
        ..cfg
    };
    let r = route(&logits, 1, &remote, None).unwrap();
    assert!((r.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!((r.weights[0] - 0.5).abs() < 1e-6);
}

#[test]
fn deepseek_v3_noaux_tc_hand_computed() {
    // 8 experts, 4 groups of 2, top-2 groups, top-3, scaling 2.5, normalised.
    let s = [0.9f32, 0.1, 0.6, 0.5, 0.2, 0.3, 0.7, 0.05];
    let logits: Vec<f32> = s.iter().map(|p| (p / (1.0 - p)).ln()).collect();
    let bias = [0.0f32, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0];
    let cfg = RouterConfig::deepseek_v3(8, 3, 4, 2, true, 2.5);
    let r = route(&logits, 1, &cfg, Some(&bias)).unwrap();
    // Biased: 0.9 0.1 | 0.6 0.5 | 0.7 0.8 | 0.7 0.05. Group sums 1.0, 1.1, 1.5, 0.75 -> groups 2, 1.
    // Among {2,3,4,5} by biased score: 5 (0.8), 4 (0.7), 2 (0.6). Weights: unbiased 0.3 0.2 0.6.
    assert_eq!(r.experts, vec![5, 4, 2]);
    let sum = 0.3 + 0.2 + 0.6 + 1e-20;
    for (w, x) in r
        .weights
        .iter()
        .zip([0.3 / sum * 2.5, 0.2 / sum * 2.5, 0.6 / sum * 2.5])
    {
        assert!((w - x).abs() < 1e-5, "{:?}", r.weights);
    }
}

#[test]
fn v3_zero_fill_lets_a_dropped_expert_win_over_negative_scores() {
    // Kept group scores are negative after the bias; transformers' masked_fill(0.0) makes the
    // dropped experts (score 0.0) win; Exclude never picks them.
    let logits = [0.0f32; 4]; // sigmoid = 0.5 each
    let bias = [-0.6f32, -0.6, -0.7, -0.7]; // biased -0.1 -0.1 | -0.2 -0.2
    let cfg = RouterConfig::deepseek_v3(4, 2, 2, 1, false, 1.0);
    let r = route(&logits, 1, &cfg, Some(&bias)).unwrap();
    assert_eq!(r.experts, vec![2, 3]);
    assert_eq!(r.weights, vec![0.5, 0.5]);
    let excl = RouterConfig {
        group_mask: GroupMask::Exclude,
        ..cfg
    };
    assert_eq!(
        route(&logits, 1, &excl, Some(&bias)).unwrap().experts,
        vec![0, 1]
    );
}

#[test]
fn errors_name_the_numbers() {
    let e = route(&[0.0; 7], 2, &RouterConfig::mixtral(4, 2), None).unwrap_err();
    assert!(
        e.to_string().contains("7 values") && e.to_string().contains("= 8"),
        "{e}"
    );
    let e = route(&[0.0; 4], 1, &RouterConfig::mixtral(4, 5), None).unwrap_err();
    assert!(e.to_string().contains("top_k 5"), "{e}");
    let e = route(
        &[0.0; 6],
        1,
        &RouterConfig::deepseek_v3(6, 2, 4, 1, true, 1.0),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("n_group 4"), "{e}");
    let e = route(
        &[0.0; 8],
        1,
        &RouterConfig::deepseek_v3(8, 3, 4, 1, true, 1.0),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("< top_k 3"), "{e}");
    let e = route(
        &[0.0; 8],
        1,
        &RouterConfig::deepseek_v3(8, 2, 4, 2, true, 1.0),
        Some(&[0.0; 3]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("3 values"), "{e}");
    let e = route(&[0.0, f32::NAN], 1, &RouterConfig::mixtral(2, 1), None).unwrap_err();
    assert!(e.to_string().contains("expert 1"), "{e}");
    let e = route(&[0.0; 2], 1, &RouterConfig::mixtral(2, 1), Some(&[0.0; 2])).unwrap_err();
    assert!(e.to_string().contains("NoAuxTc"), "{e}");
}

/// Brute force: the kept subset of `k` among `values` (restricted to `allowed`) is the one
/// where every member beats every non-member (higher value, or equal and lower index).
fn brute_top(values: &[f32], allowed: &[usize], k: usize) -> Vec<usize> {
    let n = allowed.len();
    let beats = |a: usize, b: usize| values[a] > values[b] || (values[a] == values[b] && a < b);
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != k {
            continue;
        }
        let inside: Vec<usize> = (0..n)
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| allowed[i])
            .collect();
        let outside: Vec<usize> = (0..n)
            .filter(|i| mask >> i & 1 == 0)
            .map(|i| allowed[i])
            .collect();
        if inside.iter().all(|&a| outside.iter().all(|&b| beats(a, b))) {
            // Order inside by "beats" (a selection sort is plenty for brute force).
            let mut ordered = inside.clone();
            for i in 0..ordered.len() {
                for j in i + 1..ordered.len() {
                    if beats(ordered[j], ordered[i]) {
                        ordered.swap(i, j);
                    }
                }
            }
            return ordered;
        }
    }
    unreachable!("a dominating subset always exists")
}

fn reference(logits: &[f32], cfg: &RouterConfig, bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    let n = cfg.n_experts;
    let scores: Vec<f32> = match cfg.score {
        ScoreFunction::Softmax => softmax(logits),
        ScoreFunction::Sigmoid => logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
    };
    let all: Vec<usize> = (0..n).collect();
    let (chosen, w): (Vec<usize>, Vec<f32>) = match cfg.method {
        TopkMethod::Greedy => {
            let c = brute_top(&scores, &all, cfg.top_k);
            let w = c.iter().map(|&e| scores[e]).collect();
            (c, w)
        }
        TopkMethod::GroupLimitedGreedy {
            n_group,
            topk_group,
        }
        | TopkMethod::NoAuxTc {
            n_group,
            topk_group,
        } => {
            let v3 = matches!(cfg.method, TopkMethod::NoAuxTc { .. });
            let sel: Vec<f32> = if v3 {
                scores
                    .iter()
                    .enumerate()
                    .map(|(e, s)| s + bias.map_or(0.0, |b| b[e]))
                    .collect()
            } else {
                scores.clone()
            };
            let per = n / n_group;
            let gs: Vec<f32> = (0..n_group)
                .map(|g| {
                    let members: Vec<usize> = (g * per..(g + 1) * per).collect();
                    if v3 {
                        let t = brute_top(&sel, &members, 2);
                        sel[t[0]] + sel[t[1]]
                    } else {
                        members
                            .iter()
                            .map(|&e| sel[e])
                            .fold(f32::NEG_INFINITY, f32::max)
                    }
                })
                .collect();
            let kept = brute_top(&gs, &(0..n_group).collect::<Vec<_>>(), topk_group);
            let masked: Vec<f32> = (0..n)
                .map(|e| {
                    if kept.contains(&(e / per)) {
                        sel[e]
                    } else {
                        0.0
                    }
                })
                .collect();
            let c = brute_top(&masked, &all, cfg.top_k);
            let w = c
                .iter()
                .map(|&e| if v3 { scores[e] } else { masked[e] })
                .collect();
            (c, w)
        }
    };
    let mut w: Vec<f32> = w;
    if cfg.normalize {
        let d = w.iter().sum::<f32>() + cfg.norm_epsilon;
        w.iter_mut().for_each(|x| *x /= d);
    }
    match cfg.scaling {
        RoutedScaling::Always(f) => w.iter_mut().for_each(|x| *x *= f),
        RoutedScaling::UnlessNormalized(f) if !cfg.normalize => w.iter_mut().for_each(|x| *x *= f),
        _ => {}
    }
    (chosen.into_iter().map(|e| e as u32).collect(), w)
}

fn arb_case() -> impl Strategy<Value = (RouterConfig, Vec<f32>, Option<Vec<f32>>, usize)> {
    // (n_group, per_group) shapes, small value sets so ties are common.
    let shape = prop_oneof![
        Just((2usize, 2usize)),
        Just((2, 3)),
        Just((3, 2)),
        Just((4, 2)),
        Just((2, 4)),
        Just((4, 3))
    ];
    (
        shape,
        0usize..3,
        1usize..4,
        any::<bool>(),
        any::<bool>(),
        1usize..4,
    )
        .prop_flat_map(|((g, per), kind, n_tokens, norm, scale_always, tg)| {
            let n = g * per;
            let topk_group = tg.min(g);
            let max_k = if kind == 0 { n } else { topk_group * per };
            let vals = prop::sample::select(vec![-2.0f32, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]);
            let bias_vals = prop::sample::select(vec![-1.2f32, -0.7, -0.3, 0.0, 0.2]);
            (
                1..=max_k,
                prop::collection::vec(vals, n * n_tokens),
                prop::collection::vec(bias_vals, n),
                any::<bool>(),
            )
                .prop_map(move |(k, logits, bias, use_bias)| {
                    let method = match kind {
                        0 => TopkMethod::Greedy,
                        1 => TopkMethod::GroupLimitedGreedy {
                            n_group: g,
                            topk_group,
                        },
                        _ => TopkMethod::NoAuxTc {
                            n_group: g,
                            topk_group,
                        },
                    };
                    let cfg = RouterConfig {
                        n_experts: n,
                        top_k: k,
                        score: if kind == 2 {
                            ScoreFunction::Sigmoid
                        } else {
                            ScoreFunction::Softmax
                        },
                        method,
                        normalize: norm,
                        norm_epsilon: if kind == 0 { 0.0 } else { 1e-20 },
                        scaling: if scale_always {
                            RoutedScaling::Always(2.5)
                        } else {
                            RoutedScaling::UnlessNormalized(16.0)
                        },
                        group_mask: GroupMask::ZeroFill,
                    };
                    let bias = (kind == 2 && use_bias).then_some(bias);
                    (cfg, logits, bias, n_tokens)
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn route_matches_brute_force((cfg, logits, bias, n_tokens) in arb_case()) {
        let r = route(&logits, n_tokens, &cfg, bias.as_deref()).unwrap();
        let n = cfg.n_experts;
        for t in 0..n_tokens {
            let (e, w) = reference(&logits[t * n..(t + 1) * n], &cfg, bias.as_deref());
            prop_assert_eq!(&r.experts[t * cfg.top_k..(t + 1) * cfg.top_k], &e[..]);
            prop_assert_eq!(&r.weights[t * cfg.top_k..(t + 1) * cfg.top_k], &w[..]);
        }
        prop_assert_eq!(expert_counts(&r, n).iter().sum::<u64>(), (n_tokens * cfg.top_k) as u64);
    }
}
