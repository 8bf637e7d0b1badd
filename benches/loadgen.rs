//! Load generator for a running OpenAI-compatible server (`switchyard serve`, or vLLM, or any
//! other), in the manner of vLLM's benchmark_serving: requests arrive as a Poisson process at
//! `--request-rate` per second (or all at once with `inf`), at most `--max-concurrency` in
//! flight, with prompt and output lengths drawn uniformly from [len·(1−r), len·(1+r)]. Prompts
//! are random token ids sent to /v1/completions (so their lengths are exact); answers are
//! streamed with `ignore_eos` so every request generates its drawn output length. Reports
//! request and token throughput, and TTFT, TPOT, ITL and end-to-end latency as mean and
//! p50/p90/p99.
//!
//!     switchyard serve &                      # default model, http://127.0.0.1:8000
//!     cargo bench --bench loadgen -- --num-prompts 200 --request-rate 20 \
//!         --input-len 32 --output-len 64 --range-ratio 0.5
//!     cargo bench --bench loadgen -- --max-concurrency 64 --request-rate inf
//!
//! Plain `cargo bench` runs it with the defaults; when no server answers at --url it says so
//! and exits 0 (with an explicit --url it fails instead).

use clap::Parser;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(about = "Poisson / fixed-concurrency load against an OpenAI-compatible server")]
struct Args {
    /// Base URL of the server.
    #[arg(long)]
    url: Option<String>,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// `Authorization: Bearer` key.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 200)]
    num_prompts: usize,
    /// Mean arrivals per second of the Poisson process; `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    request_rate: f64,
    /// Requests in flight at most (default: no limit).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Mean prompt length in tokens (after the shared prefix).
    #[arg(long, default_value_t = 32)]
    input_len: usize,
    /// Tokens every prompt starts with, the same for all (a shared system prompt: what prefix
    /// caching saves).
    #[arg(long, default_value_t = 0)]
    prefix_len: usize,
    /// Mean output length in tokens.
    #[arg(long, default_value_t = 64)]
    output_len: usize,
    /// Lengths are drawn uniformly from [len·(1−r), len·(1+r)].
    #[arg(long, default_value_t = 0.0)]
    range_ratio: f64,
    /// Prompt token ids are drawn from [--min-token-id, --max-token-id).
    #[arg(long, default_value_t = 5)]
    min_token_id: u32,
    /// Upper end of the prompt token ids (keep it inside the model's vocabulary).
    #[arg(long, default_value_t = 2000)]
    max_token_id: u32,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the arrivals, lengths and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One request's timeline.
#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: bool,
    error: String,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: f64,
    latency: f64,
    /// Gaps between streamed chunks after the first.
    itl: Vec<f64>,
}

struct Request {
    prompt: Vec<u32>,
    max_tokens: usize,
}

fn draw_len(rng: &mut ChaCha8Rng, mean: usize, ratio: f64) -> usize {
    let lo = ((mean as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let hi = ((mean as f64) * (1.0 + ratio)).round().max(lo as f64) as usize;
    rng.random_range(lo..=hi)
}

fn workload(a: &Args) -> (Vec<Request>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let ids = |rng: &mut ChaCha8Rng, n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(a.min_token_id..a.max_token_id))
            .collect()
    };
    let prefix = ids(&mut rng, a.prefix_len);
    let reqs = (0..a.num_prompts)
        .map(|_| {
            let n = draw_len(&mut rng, a.input_len, a.range_ratio);
            let prompt = [&prefix[..], &ids(&mut rng, n)[..]].concat();
            Request {
                prompt,
                max_tokens: draw_len(&mut rng, a.output_len, a.range_ratio),
            }
        })
        .collect();
    // Arrival offsets: exponential gaps of mean 1/rate (a Poisson process).
    let mut t = 0.0;
    let arrivals = (0..a.num_prompts)
        .map(|_| {
            if a.request_rate.is_finite() && a.request_rate > 0.0 {
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                t += -u.ln() / a.request_rate;
            }
            t
        })
        .collect();
    (reqs, arrivals)
}

async fn one(
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    body: Value,
    prompt_tokens: usize,
) -> Outcome {
    let mut out = Outcome {
        prompt_tokens,
        ..Default::default()
    };
    let start = Instant::now();
    let mut req = client.post(&url).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            out.error = e.to_string();
            return out;
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        out.error = format!("HTTP {status}: {}", resp.text().await.unwrap_or_default());
        return out;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                out.error = e.to_string();
                return out;
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = match serde_json::from_str(data) {
                    Ok(v) => v,
                    Err(e) => {
                        out.error = format!("bad event {data:?}: {e}");
                        return out;
                    }
                };
                if let Some(err) = v.get("error") {
                    out.error = err.to_string();
                    return out;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    out.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                }
                let has_token = v["choices"].as_array().is_some_and(|c| !c.is_empty());
                if has_token {
                    let now = Instant::now();
                    match last {
                        None => out.ttft = (now - start).as_secs_f64(),
                        Some(prev) => out.itl.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                }
            }
        }
    }
    out.latency = start.elapsed().as_secs_f64();
    out.ok = done && last.is_some();
    if !out.ok && out.error.is_empty() {
        out.error = "the stream ended without [DONE]".into();
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Linear interpolation between closest ranks (numpy's default).
    let x = p / 100.0 * (sorted.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x - x.floor());
    sorted[i] + (sorted[(i + 1).min(sorted.len() - 1)] - sorted[i]) * f
}

struct Stat {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    Stat {
        mean,
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
    }
}

async fn model_name(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
) -> Result<String, String> {
    let mut req = client.get(format!("{base}/v1/models"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let v: Value = req
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no model in /v1/models: {v}"))
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let explicit = a.url.is_some();
    let base = a
        .url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into())
        .trim_end_matches('/')
        .to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client");
    let model = match &a.model {
        Some(m) => m.clone(),
        None => match model_name(&client, &base, a.api_key.as_deref()).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("loadgen: no server answers at {base} ({e}); start one with `switchyard serve` and pass --url");
                std::process::exit(if explicit { 1 } else { 0 });
            }
        },
    };
    let (reqs, arrivals) = workload(&a);
    let limit = Arc::new(Semaphore::new(
        a.max_concurrency.unwrap_or(Semaphore::MAX_PERMITS).max(1),
    ));
    let url = format!("{base}/v1/completions");
    println!(
        "loadgen: {} requests to {url} (model {model}), rate {}, concurrency {}, input {}±{:.0}%, output {}±{:.0}%",
        a.num_prompts,
        if a.request_rate.is_finite() { format!("{}/s (Poisson)", a.request_rate) } else { "inf".into() },
        a.max_concurrency.map_or("unlimited".into(), |c| c.to_string()),
        a.input_len,
        a.range_ratio * 100.0,
        a.output_len,
        a.range_ratio * 100.0
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(reqs.len());
    for (r, at) in reqs.into_iter().zip(arrivals) {
        let wait = Duration::from_secs_f64(at).saturating_sub(start.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let body = json!({
            "model": model, "prompt": r.prompt, "max_tokens": r.max_tokens, "temperature": a.temperature,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
        });
        let (client, url, key, n) = (
            client.clone(),
            url.clone(),
            a.api_key.clone(),
            r.prompt.len(),
        );
        tasks.push(tokio::spawn(async move {
            let o = one(client, url, key, body, n).await;
            drop(permit);
            o
        }));
    }
    let mut outs = Vec::with_capacity(tasks.len());
    for t in tasks {
        outs.push(t.await.expect("request task"));
    }
    let duration = start.elapsed().as_secs_f64();
    report(&a, &model, &outs, duration);
}

fn report(a: &Args, model: &str, outs: &[Outcome], duration: f64) {
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.ok).collect();
    let failed = outs.len() - ok.len();
    let input: usize = ok.iter().map(|o| o.prompt_tokens).sum();
    let output: usize = ok.iter().map(|o| o.output_tokens).sum();
    let ttft = stat(ok.iter().map(|o| o.ttft * 1e3).collect());
    let tpot = stat(
        ok.iter()
            .filter(|o| o.output_tokens > 1)
            .map(|o| (o.latency - o.ttft) / (o.output_tokens - 1) as f64 * 1e3)
            .collect(),
    );
    let itl = stat(
        ok.iter()
            .flat_map(|o| o.itl.iter().map(|x| x * 1e3))
            .collect(),
    );
    let e2e = stat(ok.iter().map(|o| o.latency * 1e3).collect());
    println!("============ Serving Benchmark Result ============");
    println!("{:<40}{:>10}", "Successful requests:", ok.len());
    println!("{:<40}{:>10}", "Failed requests:", failed);
    println!("{:<40}{:>10.2}", "Benchmark duration (s):", duration);
    println!("{:<40}{:>10}", "Total input tokens:", input);
    println!("{:<40}{:>10}", "Total generated tokens:", output);
    println!(
        "{:<40}{:>10.2}",
        "Request throughput (req/s):",
        ok.len() as f64 / duration
    );
    println!(
        "{:<40}{:>10.2}",
        "Output token throughput (tok/s):",
        output as f64 / duration
    );
    println!(
        "{:<40}{:>10.2}",
        "Total token throughput (tok/s):",
        (input + output) as f64 / duration
    );
    for (name, s) in [
        ("Time to First Token", &ttft),
        ("Time per Output Token (excl. 1st token)", &tpot),
        ("Inter-token Latency", &itl),
        ("End-to-end Latency", &e2e),
    ] {
        let short = match name.chars().next() {
            Some('T') if name.starts_with("Time to") => "TTFT",
            Some('T') => "TPOT",
            Some('I') => "ITL",
            _ => "E2EL",
        };
        println!("{:-^50}", name);
        println!("{:<40}{:>10.2}", format!("Mean {short} (ms):"), s.mean);
        println!("{:<40}{:>10.2}", format!("P50 {short} (ms):"), s.p50);
        println!("{:<40}{:>10.2}", format!("P90 {short} (ms):"), s.p90);
        println!("{:<40}{:>10.2}", format!("P99 {short} (ms):"), s.p99);
    }
    println!("==================================================");
    if let Some(e) = outs.iter().find(|o| !o.ok) {
        println!("first error: {}", e.error);
    }
    if let Some(path) = &a.json {
        let s = |x: &Stat| json!({"mean_ms": x.mean, "p50_ms": x.p50, "p90_ms": x.p90, "p99_ms": x.p99});
        let v = json!({
            "model": model, "num_prompts": a.num_prompts, "request_rate": if a.request_rate.is_finite() { json!(a.request_rate) } else { json!("inf") },
            "max_concurrency": a.max_concurrency, "input_len": a.input_len, "output_len": a.output_len, "range_ratio": a.range_ratio,
            "completed": ok.len(), "failed": failed, "duration_s": duration, "total_input_tokens": input, "total_output_tokens": output,
            "request_throughput": ok.len() as f64 / duration, "output_throughput": output as f64 / duration,
            "total_token_throughput": (input + output) as f64 / duration,
            "ttft": s(&ttft), "tpot": s(&tpot), "itl": s(&itl), "e2el": s(&e2e),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
