//! Multi-node jobs as users run them: the real binary as several processes on loopback, CPU
//! ranks split over the nodes. Every process is killed at the end of its test (a guard), and
//! every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills and reaps its processes when dropped (a failing assert must not leave nodes behind).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchyard")
}

/// Waits for a child at most `limit` (reading its output meanwhile, so a full pipe cannot
/// block it); None if it is still running.
fn wait_output(child: &mut Child, limit: Duration) -> Option<Output> {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn cluster(nodes: usize, rank: usize, port: u16, timeout_secs: u64) -> Vec<String> {
    [
        "--nodes",
        &nodes.to_string(),
        "--node-rank",
        &rank.to_string(),
        "--rendezvous",
        &format!("127.0.0.1:{port}"),
        "--rendezvous-timeout-secs",
        &timeout_secs.to_string(),
        "--comm-timeout-secs",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `args` on `nodes` processes and returns every node's output (node 0 first).
fn run_nodes(args: &[String], nodes: usize) -> Vec<Output> {
    let port = free_port();
    let mut procs = Nodes(
        (0..nodes)
            .map(|r| spawn(&[args.to_vec(), cluster(nodes, r, port, 30)].concat()))
            .collect(),
    );
    let outs: Vec<Output> = procs
        .0
        .iter_mut()
        .map(|c| {
            wait_output(c, Duration::from_secs(120)).expect("a node did not finish within 120 s")
        })
        .collect();
    outs
}

fn single(args: &[String]) -> Output {
    let mut one = Nodes(vec![spawn(args)]);
    let out = wait_output(&mut one.0[0], Duration::from_secs(120))
        .expect("single-process run within 120 s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generate_over_two_nodes_equals_one_process() {
    let m = fixture("mixtral");
    for layout in [
        &["--ep", "2"][..],
        &["--pp", "2"][..],
        &["--tp", "2", "--ep", "4", "--pp", "2"][..],
    ] {
        let args = [
            strings(&[
                "generate",
                "--model",
                &m,
                "--tokens",
                "0,17,250,3,99,41",
                "--max-tokens",
                "8",
                "--ignore-eos",
                "--json",
            ]),
            strings(layout),
        ]
        .concat();
        let want = single(&args);
        let outs = run_nodes(&args, 2);
        for (n, o) in outs.iter().enumerate() {
            assert!(
                o.status.success(),
                "{layout:?} node {n}: {}",
                text(&o.stderr)
            );
        }
        assert_eq!(
            text(&outs[0].stdout),
            text(&want.stdout),
            "{layout:?}: node 0 prints the single-process answer"
        );
        assert!(outs[1].stdout.is_empty(), "followers print nothing");
    }
}

#[test]
fn score_over_four_nodes_equals_one_process() {
    let m = fixture("qwen3_moe");
    let args = strings(&[
        "score",
        "--model",
        &m,
        "--tokens",
        "5,6,7,8,9,10,11",
        "--json",
        "--layout",
        &format!(
            "{}/configs/tiny-ep4-redundant4-scrambled.toml",
            env!("CARGO_MANIFEST_DIR")
        ),
    ]);
    let want = single(&args);
    let outs = run_nodes(&args, 4);
    for (n, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "node {n}: {}", text(&o.stderr));
    }
    assert_eq!(text(&outs[0].stdout), text(&want.stdout));
}

#[test]
fn a_node_that_never_arrives_is_named_within_the_timeout() {
    let m = fixture("mixtral");
    let port = free_port();
    let args = [
        strings(&["score", "--model", &m, "--tokens", "1,2", "--ep", "4"]),
        cluster(4, 0, port, 2),
    ]
    .concat();
    let mut nodes = Nodes(vec![spawn(&args)]);
    let joined = [
        strings(&["score", "--model", &m, "--tokens", "1,2", "--ep", "4"]),
        cluster(4, 2, port, 10),
    ]
    .concat();
    nodes.0.push(spawn(&joined));
    let start = Instant::now();
    let out =
        wait_output(&mut nodes.0[0], Duration::from_secs(30)).expect("node 0 gave up within 30 s");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("node(s) [1, 3] never arrived within 2s"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    // The node that did arrive is told why and exits too.
    let out = wait_output(&mut nodes.0[1], Duration::from_secs(30))
        .expect("node 2 exits after node 0 gave up");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("never arrived"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_follower_without_node_0_gives_up_with_a_clear_error() {
    let port = free_port();
    let args = [
        strings(&[
            "score",
            "--model",
            &fixture("mixtral"),
            "--tokens",
            "1",
            "--ep",
            "2",
        ]),
        cluster(2, 1, port, 1),
    ]
    .concat();
    let mut nodes = Nodes(vec![spawn(&args)]);
    let out = wait_output(&mut nodes.0[0], Duration::from_secs(30)).expect("exits within 30 s");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "node 1: could not reach the rendezvous at 127.0.0.1:{port} (node 0)"
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mismatched_layouts_are_refused_naming_the_node_and_the_difference() {
    let m = fixture("mixtral");
    let port = free_port();
    let mut nodes = Nodes(vec![
        spawn(
            &[
                strings(&["score", "--model", &m, "--tokens", "1,2", "--ep", "4"]),
                cluster(2, 0, port, 20),
            ]
            .concat(),
        ),
        spawn(
            &[
                strings(&[
                    "score", "--model", &m, "--tokens", "1,2", "--ep", "2", "--pp", "2",
                ]),
                cluster(2, 1, port, 20),
            ]
            .concat(),
        ),
    ]);
    for n in 0..2 {
        let out = wait_output(&mut nodes.0[n], Duration::from_secs(40)).expect("both nodes exit");
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("node 1 does not match node 0: layout differs")
                && err.contains("ep = 2")
                && err.contains("pp = 2"),
            "node {n}: {err}"
        );
    }
}

#[test]
fn mismatched_models_are_refused() {
    let port = free_port();
    let mut nodes = Nodes(vec![
        spawn(
            &[
                strings(&[
                    "score",
                    "--model",
                    &fixture("mixtral"),
                    "--tokens",
                    "1,2",
                    "--ep",
                    "2",
                ]),
                cluster(2, 0, port, 20),
            ]
            .concat(),
        ),
        spawn(
            &[
                strings(&[
                    "score",
                    "--model",
                    &fixture("qwen3_moe"),
                    "--tokens",
                    "1,2",
                    "--ep",
                    "2",
                ]),
                cluster(2, 1, port, 20),
            ]
            .concat(),
        ),
    ]);
    let out = wait_output(&mut nodes.0[0], Duration::from_secs(40)).expect("node 0 exits");
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("node 1 does not match node 0: model differs: config.json hash"),
        "{err}"
    );
}

#[test]
fn a_rendezvous_port_in_use_says_so() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let args = [
        strings(&[
            "score",
            "--model",
            &fixture("mixtral"),
            "--tokens",
            "1",
            "--ep",
            "2",
        ]),
        cluster(2, 0, port, 5),
    ]
    .concat();
    let mut nodes = Nodes(vec![spawn(&args)]);
    let out = wait_output(&mut nodes.0[0], Duration::from_secs(30)).expect("exits at once");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the port is in use"),
        "{}",
        text(&out.stderr)
    );
}

/// One HTTP/1.1 exchange (Connection: close); the status code and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        resp.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    )
}

/// Two `serve` nodes of one EP 2 job over the mixtral fixture (with `kv` flags), started
/// together; returns them and node 0's HTTP port once node 0 has printed it (every node has joined
/// and loaded). Node 0's further output is drained so that it never writes to a closed pipe.
fn two_serving_nodes(kv: &[&str]) -> (Nodes, u16) {
    let m = fixture("mixtral");
    let rv = free_port();
    let serve = |rank: usize| {
        [
            strings(&["serve", "--model", &m, "--port", "0", "--ep", "2"]),
            strings(kv),
            cluster(2, rank, rv, 30),
        ]
        .concat()
    };
    let mut nodes = Nodes(vec![spawn(&serve(0)), spawn(&serve(1))]);
    let mut lines = BufReader::new(nodes.0[0].stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("node 0 printed its address").unwrap();
        if let Some(addr) = line.split("http://").nth(1) {
            break addr
                .split([' ', '/'])
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (nodes, port)
}

#[test]
fn serve_reports_unhealthy_when_a_follower_dies_and_fails_requests_without_hanging() {
    let (mut nodes, port) = two_serving_nodes(&["--kv-blocks", "64", "--kv-block-size", "4"]);
    let req =
        r#"{"prompt": [0, 17, 250, 3], "max_tokens": 4, "temperature": 0, "ignore_eos": true}"#;
    let (code, body) = http(port, "POST", "/v1/completions", req);
    assert_eq!(code, 200, "{body}");
    assert_eq!(http(port, "GET", "/health", "").0, 200);

    nodes.0[1].kill().unwrap();
    nodes.0[1].wait().unwrap();
    let start = Instant::now();
    let (code, body) = loop {
        let (code, body) = http(port, "GET", "/health", "");
        if code != 200 || start.elapsed() > Duration::from_secs(20) {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 503, "/health after the follower died: {body}");
    assert!(
        body.contains("node 1 (ranks [1])") && body.contains("closed its connection"),
        "{body}"
    );
    // A request now fails with an error instead of hanging.
    let start = Instant::now();
    let (code, body) = http(port, "POST", "/v1/completions", req);
    assert!(code >= 500, "{code} {body}");
    assert!(body.contains("cluster stopped"), "{body}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_follower_exits_with_an_error_when_node_0_dies() {
    let (mut nodes, _) = two_serving_nodes(&["--kv-blocks", "16"]);
    nodes.0[0].kill().unwrap();
    let out = wait_output(&mut nodes.0[1], Duration::from_secs(30))
        .expect("the follower exits within 30 s");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("node 1: node 0 (the driver) hung up"),
        "{}",
        text(&out.stderr)
    );
}
