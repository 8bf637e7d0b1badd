//! Layouts that cannot work fail with the number that is wrong and what would fit.

use std::path::{Path, PathBuf};
use switchyard::config::ModelConfig;
use switchyard::layout::Layout;

fn model(dir: &str) -> ModelConfig {
    ModelConfig::from_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap()
}

fn err(toml: &str, model_dir: &str, gpu: Option<f64>) -> String {
    let l =
        Layout::from_toml(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("parse: {e}"));
    l.validate(&model(model_dir), gpu).unwrap_err().to_string()
}

const MIXTRAL: &str = "configs/models/Mixtral-8x7B-v0.1";
const V3: &str = "configs/models/DeepSeek-V3";

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

#[test]
fn tp_not_dividing_heads_lists_the_divisors() {
    let e = err("[parallel]\ntp = 3\nep = 6", MIXTRAL, None);
    assert_has(
        &e,
        &[
            "tp 3 does not divide num_attention_heads 32",
            "1, 2, 4, 8, 16 or 32",
        ],
    );
}

#[test]
fn tp_not_dividing_ep() {
    let e = err("[parallel]\ntp = 4\nep = 6", MIXTRAL, None);
    assert_has(&e, &["tp 4 does not divide ep 6", "4, 8, 12 or 16"]);
}

#[test]
fn experts_plus_redundant_not_divisible_says_which_redundant_would() {
    let e = err(
        "[parallel]\nep = 8\n[experts]\nredundant = 3",
        MIXTRAL,
        None,
    );
    assert_has(
        &e,
        &[
            "experts (8) + redundant (3) = 11 slots",
            "not divisible by 8 expert groups",
            "0, 8 or 16",
        ],
    );
    let e = err("[parallel]\nep = 3", MIXTRAL, None);
    assert_has(&e, &["experts (8) + redundant (0) = 8", "1, 4 or 7"]);
}

#[test]
fn moe_tp_that_does_not_tile() {
    let e = err("[parallel]\nep = 8\nmoe_tp = 3", MIXTRAL, None);
    assert_has(&e, &["moe_tp 3 must divide ep 8", "1, 2, 4 or 8"]);
}

#[test]
fn pp_beyond_the_layers() {
    let e = err("[parallel]\npp = 64", MIXTRAL, None);
    assert_has(&e, &["pp 64 is more than num_hidden_layers 32"]);
}

#[test]
fn explicit_pipeline_split_must_sum_to_the_layers() {
    let e = err(
        "[parallel]\npp = 2\n[pipeline]\nlayers = [16, 15]",
        MIXTRAL,
        None,
    );
    assert_has(
        &e,
        &[
            "[16, 15]",
            "sums to 31 but the model has 32 layers",
            "[16, 16]",
        ],
    );
    let e = err(
        "[parallel]\npp = 2\n[pipeline]\nlayers = [32]",
        MIXTRAL,
        None,
    );
    assert_has(&e, &["has 1 stages but pp is 2"]);
}

#[test]
fn world_size_must_match_the_machines() {
    let e = err(
        "[parallel]\nep = 8\npp = 2\nnodes = 1\ngpus_per_node = 8",
        V3,
        None,
    );
    assert_has(
        &e,
        &[
            "ep 8 x pp 2 = 16 ranks",
            "nodes 1 x gpus_per_node 8 = 8 GPUs",
        ],
    );
}

#[test]
fn too_little_memory_says_how_much_is_needed() {
    let e = err("[parallel]\ntp = 8\nep = 8", V3, Some(80.0));
    assert_has(
        &e,
        &[
            "stage 0 needs",
            "GB per rank",
            "72.00 GB (80.00 GB x memory_fraction 0.9)",
            "raise ep (now 8) or pp (now 1)",
        ],
    );
    // Mixtral on one 80 GB GPU: 93 GB of weights.
    let e = err("", MIXTRAL, Some(80.0));
    assert_has(&e, &["weights 93.41 GB", "GPUs of at least 10"]);
}

#[test]
fn explicit_placement_of_the_wrong_size() {
    let e = err(
        "[parallel]\nep = 2\n[experts]\nredundant = 2\nplacement = [[0, 1, 2, 3, 4, 5, 6, 7]]",
        MIXTRAL,
        None,
    );
    assert_has(
        &e,
        &[
            "placement of MoE layer 0",
            "8 slots but experts (8) + redundant (2)",
            "needs 10",
        ],
    );
    let e = Layout::from_toml(
        "[experts]\nplacement = \"missing.json\"",
        Path::new("configs/t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert_has(&e, &["missing.json"]);
}

#[test]
fn explicit_placement_missing_an_expert() {
    let e = err(
        "[parallel]\nep = 2\n[experts]\nplacement = [[0, 1, 2, 3, 4, 5, 6, 6]]",
        MIXTRAL,
        None,
    );
    assert_has(
        &e,
        &["placement of MoE layer 0", "logical expert 7 has no slot"],
    );
}

#[test]
fn unknown_fields_and_bad_ranges_are_refused() {
    let parse = Layout::from_toml("[parallel]\ntpp = 2", Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert_has(&parse, &["bad.toml", "tpp"]);
    let e = err("[scheduler]\nmemory_fraction = 1.5", MIXTRAL, None);
    assert_has(&e, &["scheduler.memory_fraction = 1.5", "(0, 1]"]);
    let e = err("[parallel]\nep = 0", MIXTRAL, None);
    assert_has(&e, &["parallel.ep = 0"]);
}

#[test]
fn tp_that_neither_splits_nor_replicates_kv_heads() {
    let mut cfg = model(MIXTRAL);
    cfg.num_heads = 12;
    cfg.num_kv_heads = 4;
    let l = Layout::from_toml("[parallel]\ntp = 6", Path::new("t.toml")).unwrap();
    let e = l.validate(&cfg, None).unwrap_err().to_string();
    assert_has(&e, &["tp 6 and num_key_value_heads 4", "1, 2, 4 or 12"]);
}

/// Mixtral-8x7B's bf16 weights on one rank holding `experts` of its 8 experts in every layer,
/// counted from its config.json by hand: embedding and lm_head, then per layer q/o (4096²), k/v
/// (4096 x 8 KV heads x 128), the experts' gate/up/down (3 x 4096 x 14336 each), the router
/// (4096 x 8) and two norms, and the final norm.
fn mixtral_weight_bytes(experts: u64) -> u64 {
    let (h, kv, inter, vocab, layers) = (4096u64, 8 * 128u64, 14336u64, 32000u64, 32u64);
    let layer = 2 * h * h + 2 * h * kv + experts * 3 * h * inter + h * 8 + 2 * h;
    2 * (2 * vocab * h + layers * layer + h)
}

#[test]
fn ranks_too_big_for_their_gpu_say_what_they_need_and_what_to_do() {
    use switchyard::layout::memory::{check_gpu_room, gpu_rank_bytes};
    let m = model(MIXTRAL);
    let one = Layout::default();
    let ep2 = Layout::from_toml("[parallel]\nep = 2", Path::new("ep2.toml")).unwrap();
    // bf16 K and V of 8 heads x 128 in 32 layers: 131,072 bytes a cached token.
    let kv_per_token = 2 * 8 * 128 * 2 * 32u64;
    assert_eq!(
        gpu_rank_bytes(&m, &one, 0, 4096),
        (mixtral_weight_bytes(8), 4096 * kv_per_token)
    );
    assert_eq!(
        gpu_rank_bytes(&m, &ep2, 0, 4096),
        (mixtral_weight_bytes(4), 4096 * kv_per_token)
    );

    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    // An 80 GB H100 with 79.1 GB free: the whole model's weights alone do not fit.
    let h100 = (79_100_000_000u64, 85_000_000_000u64);
    let (w, kv) = gpu_rank_bytes(&m, &one, 0, 4096);
    let who = "the one rank holding the whole model";
    let e = check_gpu_room("cuda:0 (NVIDIA H100 80GB HBM3)", who, (w, kv), 4096, h100)
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "cuda:0 (NVIDIA H100 80GB HBM3) has 79.1 GB free of 85.0 GB",
            &format!("{who} need at least {}", gb(w + kv)),
            &format!("bf16 weights {}", gb(w)),
            &format!("cache for 4096 tokens a rank {}", gb(kv)),
            "raise --ep or --pp",
        ],
    );
    // Half the experts each, one rank a GPU: fits.
    check_gpu_room(
        "cuda:1",
        "rank 1",
        gpu_rank_bytes(&m, &ep2, 0, 4096),
        4096,
        h100,
    )
    .unwrap();
    // An H200 with 139 GB free holds the whole model and 4096 cached tokens, but not a cache
    // one token past what is left beside the weights.
    let h200 = (139_000_000_000u64, 150_000_000_000u64);
    let fit = |tokens| {
        check_gpu_room(
            "cuda:0",
            who,
            gpu_rank_bytes(&m, &one, 0, tokens),
            tokens,
            h200,
        )
    };
    fit(4096).unwrap();
    let tokens = (h200.0 - w) / kv_per_token;
    fit(tokens).unwrap();
    let e = fit(tokens + 1).unwrap_err().to_string();
    assert_has(&e, &[&format!("cache for {} tokens", tokens + 1)]);
    // A cache too large to count in 64 bits is refused, not wrapped around to a small number.
    assert!(fit(u64::MAX / 1000).is_err());
    // MLA's latent rows at DeepSeek's widths are bf16 on a GPU (the tensor-core kernel reads
    // them so): DeepSeek-V3's 61 layers x (512 + 64) x 2 bytes.
    let v3 = model(V3);
    assert_eq!(gpu_rank_bytes(&v3, &one, 0, 1000).1, 1000 * 61 * 576 * 2);
}
