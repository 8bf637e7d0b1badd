//! `switchyard plan`: what a layout costs each rank (weights, KV cache, All-to-All traffic), or
//! `--recommend` a layout for a set of GPUs. Needs only the model's config.json.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use switchyard::config::ModelConfig;
use switchyard::layout::plan::plan;
use switchyard::layout::recommend::recommend;
use switchyard::layout::LayoutOverrides;

/// Flags of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Model directory (only config.json is read).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    layout: LayoutOverrides,
    /// Tokens per step for the traffic estimate (default: the layout's max_batched_tokens).
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Memory of one GPU in GB (default: the layout's gpu_mem_gb).
    #[arg(long, value_name = "GB")]
    gpu_mem: Option<f64>,
    /// Propose a layout for --gpus GPUs of --gpu-mem GB instead of planning --layout.
    #[arg(long, requires_all = ["gpus", "gpu_mem"])]
    recommend: bool,
    /// GPUs for --recommend.
    #[arg(long)]
    gpus: Option<usize>,
    /// Nodes the GPUs are spread over, for --recommend.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `plan`.
pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let model = ModelConfig::from_dir(&a.model)
        .with_context(|| format!("reading {}", a.model.display()))?;
    if a.recommend {
        return run_recommend(&a, &model);
    }
    let layout = a.layout.resolve()?;
    layout.validate(&model, None)?;
    let batch = a
        .batch_tokens
        .unwrap_or(layout.scheduler.max_batched_tokens);
    let report = plan(&model, &layout, a.gpu_mem, batch);
    let fits = layout.validate(&model, a.gpu_mem);
    if a.json {
        let fit = fits.as_ref().err().map(|e| e.to_string());
        println!("{}", serde_json::json!({ "plan": report, "error": fit }));
    } else {
        println!("{report}");
    }
    fits?;
    Ok(())
}

fn run_recommend(a: &PlanArgs, model: &ModelConfig) -> anyhow::Result<()> {
    let (Some(gpus), Some(gpu_mem)) = (a.gpus, a.gpu_mem) else {
        bail!("--recommend needs --gpus N and --gpu-mem GB");
    };
    let rec = recommend(model, gpus, gpu_mem, a.nodes)?;
    let batch = a
        .batch_tokens
        .unwrap_or(rec.layout.scheduler.max_batched_tokens);
    let report = plan(model, &rec.layout, Some(gpu_mem), batch);
    let toml = rec.layout.to_toml();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "layout": toml, "reasons": rec.reasons, "plan": report })
        );
    } else {
        println!(
            "recommended layout (tp {}, ep {}, pp {}):",
            rec.layout.parallel.tp, rec.layout.parallel.ep, rec.layout.parallel.pp
        );
        for r in &rec.reasons {
            println!("  - {r}");
        }
        println!("\n{toml}\n{report}");
    }
    Ok(())
}
