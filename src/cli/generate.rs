//! `switchyard generate`: prefill a prompt, then decode.

use super::model_args::{parse_tokens, ModelArgs};
use anyhow::{bail, Context};
use clap::Args;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::engine::GenerateOptions;

/// Flags of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, comma-separated.
    #[arg(long, conflicts_with = "prompt")]
    tokens: Option<String>,
    /// Prompt text (needs the checkpoint's tokenizer.json).
    #[arg(long)]
    prompt: Option<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sample among the k most likely (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print JSON {"tokens": [...], "text": "..."}.
    #[arg(long)]
    json: bool,
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if a.temperature < 0.0 || !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let tokenizer = switchyard::tokenizer::Tokenizer::from_dir(&a.model.model)?;
    let prompt = match (&a.tokens, &a.prompt) {
        (Some(t), _) => parse_tokens(t)?,
        (None, Some(text)) => {
            let tok = tokenizer.as_ref().with_context(|| {
                format!(
                    "--prompt needs {}/tokenizer.json; pass --tokens instead",
                    a.model.model.display()
                )
            })?;
            tok.encode(text)?
        }
        (None, None) => bail!("give the prompt as --tokens 1,2,3 or --prompt TEXT"),
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
        },
        seed: a.seed,
        ignore_eos: a.ignore_eos,
    };
    let (mut engine, _) = a.model.engine(prompt.len() + a.max_tokens)?;
    let out = engine.generate(&prompt, &opts)?;
    let text = tokenizer
        .as_ref()
        .map(|t| t.decode(&out.tokens))
        .transpose()?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "tokens": out.tokens, "text": text })
        );
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!("{:?}", out.tokens),
        }
    }
    Ok(())
}
