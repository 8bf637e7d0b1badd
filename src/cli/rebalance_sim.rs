//! `switchyard rebalance-sim`: the rebalancer offline. A recorded routing trace (`--trace`, as
//! `serve --record-routing` writes it) or a synthetic Zipf skew in; per-layer imbalance (max
//! over mean rank load) before and after, slots moved and the algorithm's time out.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use switchyard_experts::sim::{parse_trace, simulate, zipf_loads, SimReport};

/// Flags of `rebalance-sim`.
#[derive(Debug, Args)]
pub struct RebalanceSimArgs {
    /// A routing trace: JSON lines `{"step": n, "layers": [[tokens per expert], ...]}`.
    #[arg(long, conflicts_with = "zipf")]
    trace: Option<PathBuf>,
    /// Synthetic loads: expert i of every layer (shuffled per layer) carries 1 / (i + 1)^S.
    #[arg(long, value_name = "S", requires_all = ["experts", "layers"])]
    zipf: Option<f64>,
    /// Logical experts per layer (with --zipf).
    #[arg(long)]
    experts: Option<usize>,
    /// MoE layers (with --zipf).
    #[arg(long)]
    layers: Option<usize>,
    /// EP ranks.
    #[arg(long)]
    ranks: usize,
    /// Spare slots per layer for replicas.
    #[arg(long, default_value_t = 0)]
    redundant: usize,
    /// Nodes the ranks span (replicas prefer their node's ranks).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Seed of the per-layer shuffle of --zipf loads.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `rebalance-sim`.
pub fn run(a: RebalanceSimArgs) -> anyhow::Result<()> {
    let (loads, source) = match (&a.trace, a.zipf) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let loads =
                parse_trace(&text).with_context(|| format!("reading {}", path.display()))?;
            if loads.is_empty() {
                bail!("{} holds no step", path.display());
            }
            (loads, format!("trace {}", path.display()))
        }
        (None, Some(s)) => {
            let (Some(experts), Some(layers)) = (a.experts, a.layers) else {
                bail!("--zipf needs --experts E and --layers L");
            };
            if !(s.is_finite() && s >= 0.0) {
                bail!("--zipf {s}: the exponent must be a number >= 0");
            }
            (
                zipf_loads(experts, s, layers, a.seed),
                format!("zipf {s}, seed {}", a.seed),
            )
        }
        _ => bail!("give --trace FILE or --zipf S --experts E --layers L"),
    };
    let report = simulate(&loads, a.ranks, a.nodes, a.redundant)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report, &source));
    }
    Ok(())
}

fn render(r: &SimReport, source: &str) -> String {
    let mut s = format!(
        "{} MoE layers of {} experts over {} ranks ({} node{}), {} redundant slots ({} per rank); loads: {source}\n",
        r.layers,
        r.experts,
        r.ranks,
        r.nodes,
        if r.nodes == 1 { "" } else { "s" },
        r.redundant,
        r.slots_per_rank
    );
    s += "imbalance (max over mean rank load):\n";
    s += &format!(
        "  before  max {:.4}  mean {:.4}\n",
        r.before_max, r.before_mean
    );
    s += &format!(
        "  after   max {:.4}  mean {:.4}\n",
        r.after_max, r.after_mean
    );
    s += &format!(
        "slots moved: {} of {}\n",
        r.moved_slots,
        r.layers * r.ranks * r.slots_per_rank
    );
    s += &format!("algorithm: {:.2} ms\n", r.elapsed_ms);
    const SHOWN: usize = 16;
    s += "layer  before   after\n";
    for (l, (b, a)) in r
        .imbalance_before
        .iter()
        .zip(&r.imbalance_after)
        .enumerate()
        .take(SHOWN)
    {
        s += &format!("{l:>5}  {b:>6.4}  {a:>6.4}\n");
    }
    if r.layers > SHOWN {
        s += &format!(
            "  ... {} more layers (--json prints all)\n",
            r.layers - SHOWN
        );
    }
    s
}
