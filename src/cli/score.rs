//! `switchyard score`: logits at every prompt position.

use super::model_args::{parse_tokens, ModelArgs};
use clap::Args;

/// Flags of `score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, comma-separated.
    #[arg(long)]
    tokens: String,
    /// Print JSON {"logits": [[f32; vocab]; n_tokens]}.
    #[arg(long)]
    json: bool,
}

/// Runs `score`.
pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    let tokens = parse_tokens(&a.tokens)?;
    let (mut engine, _) = a.model.engine(tokens.len())?;
    let logits = engine.score(&tokens)?;
    let vocab = logits.dims()[1];
    let rows: Vec<&[f32]> = logits.as_slice().chunks_exact(vocab).collect();
    if a.json {
        println!("{}", serde_json::json!({ "logits": rows }));
    } else {
        for (i, row) in rows.iter().enumerate() {
            let best = switchyard::backend::cpu::sample::argmax(row);
            println!(
                "position {i}: token {} -> argmax {best} (logit {:.4})",
                tokens[i], row[best as usize]
            );
        }
    }
    Ok(())
}
