//! `switchyard serve --device cuda`: the real binary serves the shipped model
//! (models/shakespeare-moe, whose widths put its MoE blocks on the fused GPU kernels) from the GPU;
//! one greedy completion equals the same model's greedy generation on the GPU in process, and
//! agrees with the CPU's greedy tokens up to the CPU's first small-margin step; a prompt sent
//! twice answers the same from the cache blocks the first computed. Skips, saying so, where
//! there is no GPU.
#![cfg(feature = "cuda")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard::backend::cpu::sample::SamplingParams;
use switchyard::backend::Device;
use switchyard::engine::{Engine, GenerateOptions};
use switchyard::model::ModelSource;
use switchyard::tokenizer::Tokenizer;

fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    (code, body.to_string())
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_on_the_gpu_completes_like_the_engine() {
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no GPU here ({e})");
            return;
        }
    };
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare-moe");
    let tokenizer = Tokenizer::from_dir(&model).unwrap().expect("a tokenizer");
    let prompt_text = "ROMEO:\nBut soft, what light";
    let prompt = tokenizer.encode(prompt_text).unwrap();
    let max_tokens = 24;

    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--device",
            "cuda",
            "--port",
            "0",
            "--max-num-seqs",
            "4",
        ])
        .arg("--model")
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("serve printed its address before exiting")
            .unwrap();
        if let Some(addr) = line.split("http://").nth(1) {
            let host_port = addr.split([' ', '/']).next().unwrap();
            break host_port.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    let req = serde_json::json!({
        "prompt": prompt_text, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true
    });
    let (code, body) = http_post(port, "/v1/completions", &req.to_string());
    assert_eq!(code, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let served = served["choices"][0]["text"].as_str().unwrap().to_string();

    // A longer prompt twice: the second shares the first's whole cache blocks on the GPU (its
    // suffix prefilled over them) and answers the same.
    let long = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and \
                Juliet is the sun.\nArise, fair sun";
    let n = tokenizer.encode(long).unwrap().len();
    assert!(n > 16, "{n} tokens: too few to fill a cache block");
    let req = serde_json::json!({
        "prompt": long, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true
    });
    let ask = || {
        let (code, body) = http_post(port, "/v1/completions", &req.to_string());
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let cached = &v["usage"]["prompt_tokens_details"]["cached_tokens"];
        (
            v["choices"][0]["text"].clone(),
            cached.as_u64().unwrap() as usize,
        )
    };
    let (first, second) = (ask(), ask());
    eprintln!("{n}-token prompt: {first:?} then, from cached blocks, {second:?}");
    assert_eq!(
        (first.1, second.1),
        (0, (n - 1) / 16 * 16),
        "cached prompt tokens"
    );
    assert_eq!(first.0, second.0, "the answer from cached blocks differs");

    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        seed: 0,
        ignore_eos: true,
    };
    let source = ModelSource {
        dir: model.clone(),
        random_weights: None,
    };
    let gpu_model = source.load_on(&device).unwrap().model;
    assert!(
        gpu_model.ffn(0).unwrap().is_fused(),
        "the shipped model's MoE blocks should take the fused kernels"
    );
    let on_gpu = Engine::new(gpu_model, 512, 16)
        .generate(&prompt, &opts)
        .unwrap();
    let on_cpu = Engine::new(source.load().unwrap().model, 512, 16)
        .generate(&prompt, &opts)
        .unwrap();
    let gpu_text = tokenizer.decode(&on_gpu.tokens).unwrap();
    let n = on_cpu
        .margins
        .iter()
        .position(|&m| m < common::SMALL_MARGIN)
        .unwrap_or(on_cpu.tokens.len());
    eprintln!(
        "served {served:?}\nengine on the GPU {gpu_text:?}\nCPU tokens {:?} (first {n} decisive)\nGPU tokens {:?}",
        on_cpu.tokens, on_gpu.tokens
    );
    assert_eq!(served, gpu_text, "the server and the engine disagree");
    assert_eq!(
        on_gpu.tokens[..n],
        on_cpu.tokens[..n],
        "GPU and CPU greedy tokens differ before the first small-margin step"
    );
}
