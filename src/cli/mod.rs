//! Subcommands. Each parses its flags, calls the library and prints; errors surface here as
//! anyhow with the library's message.

mod generate;
mod model_args;
mod plan;
mod rebalance_sim;
mod score;
mod serve;

use clap::{Parser, Subcommand};

/// switchyard: an MoE-first expert-parallel inference engine.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the logits at every prompt position.
    Score(score::ScoreArgs),
    /// Generate tokens after a prompt.
    Generate(generate::GenerateArgs),
    /// Per-rank memory and All-to-All traffic of a layout, or a layout for a set of GPUs.
    Plan(plan::PlanArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Rebalance a routing trace or a Zipf skew offline: imbalance before/after, slots moved.
    RebalanceSim(rebalance_sim::RebalanceSimArgs),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(a) => score::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Serve(a) => serve::run(a),
        Command::RebalanceSim(a) => rebalance_sim::run(a),
    }
}
