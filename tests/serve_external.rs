//! The serving checks that need tools from outside Rust, run against the compiled binary
//! (`switchyard serve` as a real process on a free loopback port):
//!
//! * tests/python/test_openai_api.py — the official `openai` client: completions, chat,
//!   streaming, token-id prompts, greedy answers equal to `switchyard generate --json`;
//! * tests/python/test_metrics.py — `promtool check metrics` on /metrics, expert counters;
//! * tests/python/test_load.py — 200 concurrent streaming clients, a fifth hanging up (also
//!   on two EP ranks with a KV cache small enough to force waiting and preemption);
//! * tests/python/test_dashboard.py — the dashboard in headless Chromium (screenshots in
//!   target/artifacts/).
//!
//! A developer machine without python3's `openai`/`jinja2`, promtool or chromium skips the
//! check that needs it, with a message saying so. In CI (the `CI` environment variable is set,
//! as .ci/run does after installing them) a missing tool fails the test instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prints past libtest's output capture (which only catches the print macros), so a skip is
/// visible in a plain `cargo test` run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether `program --version`-style probing succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// None when every tool is there, else what is missing.
fn missing(python_modules: &[&str], programs: &[&str]) -> Option<String> {
    let mut gone = Vec::new();
    if !runs("python3", &["--version"]) {
        gone.push("python3".to_string());
    } else {
        for m in python_modules {
            if !runs("python3", &["-c", &format!("import {m}")]) {
                gone.push(format!("python3 module `{m}` (python3 -m pip install {m})"));
            }
        }
    }
    for p in programs {
        if !runs(p, &["--version"]) {
            gone.push(format!("`{p}`"));
        }
    }
    (!gone.is_empty()).then(|| gone.join(", "))
}

/// Runs a script of tests/python against the compiled binary; panics with its output when it
/// fails. Skips (or, in CI, fails) when a tool it needs is missing.
fn run_script(script: &str, python_modules: &[&str], programs: &[&str], extra: &[&str]) {
    if let Some(what) = missing(python_modules, programs) {
        if in_ci() {
            panic!("{script}: {what} missing, and CI is set (.ci/run installs them)");
        }
        say(&format!("SKIPPED {script}: {what} not installed (CI installs them; set CI=1 to make this a failure)"));
        return;
    }
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let path: PathBuf = repo().join("tests/python").join(script);
    let start = Instant::now();
    let out = Command::new("python3")
        .arg(&path)
        .args(["--bin", bin, "--model"])
        .arg(repo().join("models/shakespeare-moe"))
        .args(extra)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running python3 {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("no summary line");
    say(&format!(
        "{script}: {summary} in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    assert!(
        out.status.success() && summary.ends_with(" 0 failed"),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn shipped_model_exists() -> bool {
    Path::new(&repo().join("models/shakespeare-moe/config.json")).exists()
}

#[test]
fn openai_client_against_serve() {
    assert!(shipped_model_exists());
    run_script("test_openai_api.py", &["openai", "jinja2"], &[], &[]);
}

#[test]
fn promtool_checks_the_metrics() {
    run_script("test_metrics.py", &[], &["promtool"], &[]);
}

#[test]
fn two_hundred_streaming_clients() {
    run_script("test_load.py", &["openai"], &[], &[]);
}

/// The same wave on two EP ranks with a KV cache of 640 tokens and small steps: requests wait
/// for blocks and get preempted, and still answer as if alone.
#[test]
fn two_hundred_streaming_clients_on_a_tight_cache_and_two_ranks() {
    run_script(
        "test_load.py",
        &["openai"],
        &[],
        &[
            "--expect-preemption",
            "--serve-flags",
            "--kv-blocks 40 --max-batched-tokens 256 --ep 2",
        ],
    );
}

#[test]
fn dashboard_in_headless_chromium() {
    let artifacts = repo().join("target/artifacts");
    run_script(
        "test_dashboard.py",
        &[],
        &["chromium"],
        &["--artifacts", artifacts.to_str().expect("utf-8 path")],
    );
}
