//! The rendezvous: node 0 listens on `--rendezvous HOST:PORT`, every other node connects and
//! says hello; node 0 checks that all run the same model, layout and version and answers with
//! the address book. The connection stays open as the node's control connection.

use super::wire::{self, Kind};
use super::{ClusterError, ClusterSpec, ModelIdentity};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a node says about itself; node 0 compares every node's with its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The node's rank.
    pub node_rank: usize,
    /// How many nodes it thinks the job has.
    pub nodes: usize,
    /// Its switchyard version.
    pub version: String,
    /// Its model.
    pub model: ModelIdentity,
    /// Its layout, as TOML.
    pub layout: String,
    /// What its ranks run on and how GPU ranks talk ("cpu", "cuda, nccl", "cuda, host").
    pub ranks_on: String,
    /// Where its data listener is.
    pub data_addr: SocketAddr,
}

/// What every rank needs to size its KV cache (node 0 decides; the others follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    /// KV-cache blocks per rank.
    pub num_blocks: usize,
    /// Token slots per block.
    pub block_size: usize,
}

/// Node 0's answer: the job's session id, every node's data address (by node rank) and the
/// run parameters. An NCCL build adds each group's unique id here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// Random id of this job; data connections of another job are refused.
    pub session: u64,
    /// Data address of every node, by node rank.
    pub book: Vec<SocketAddr>,
    /// KV-cache sizes.
    pub run: RunParams,
}

/// A node that passed the rendezvous: its control connection (to node 0, or node 0's to every
/// other node), its bound data listener and the welcome.
#[derive(Debug)]
pub struct Joined {
    /// Node 0: `control[n]` for every node `n > 0`; other nodes: `[the connection to node 0]`.
    pub control: Vec<TcpStream>,
    /// This node's data listener (its address is in the book).
    pub data: TcpListener,
    /// The welcome every node got.
    pub welcome: Welcome,
}

fn resolve(addr: &str) -> Result<SocketAddr, ClusterError> {
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Spec(format!("--rendezvous {addr}: {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Spec(format!("--rendezvous {addr}: no address")))
}

/// Node 0: listens, checks every node's hello against `me`, answers all with the address book.
pub fn host(spec: &ClusterSpec, me: Hello, run: RunParams) -> Result<Joined, ClusterError> {
    let addr = resolve(&spec.rendezvous)?;
    let listener = TcpListener::bind(addr).map_err(|e| ClusterError::Listen {
        addr: spec.rendezvous.clone(),
        why: match e.kind() {
            io::ErrorKind::AddrInUse => "the port is in use (another job's node 0 or another program holds it; pick another --rendezvous port)".into(),
            _ => e.to_string(),
        },
    })?;
    let data = TcpListener::bind((addr.ip(), 0)).map_err(|e| ClusterError::Listen {
        addr: format!("{}:0 (data)", addr.ip()),
        why: e.to_string(),
    })?;
    let data_port = data
        .local_addr()
        .map_err(|e| ClusterError::Listen {
            addr: spec.rendezvous.clone(),
            why: e.to_string(),
        })?
        .port();
    let mut hellos: Vec<Option<(Hello, TcpStream)>> = (0..spec.nodes).map(|_| None).collect();
    let deadline = Instant::now() + spec.join_timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| ClusterError::Listen {
            addr: spec.rendezvous.clone(),
            why: e.to_string(),
        })?;
    let mut own_ip: Option<IpAddr> = (!addr.ip().is_unspecified()).then_some(addr.ip());
    let result = loop {
        let arrived: Vec<usize> = (0..spec.nodes)
            .filter(|&n| n == 0 || hellos[n].is_some())
            .collect();
        if arrived.len() == spec.nodes {
            break Ok(());
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let Some(hello) = read_hello(&stream, deadline) else {
                    continue;
                };
                own_ip = own_ip.or_else(|| stream.local_addr().ok().map(|a| a.ip()));
                if let Err(e) = check(&me, &hello, spec.nodes) {
                    let _ = wire::send(&mut &stream, Kind::Reject, e.to_string().as_bytes());
                    break Err(e);
                }
                if hellos[hello.node_rank].is_some() {
                    let why = format!(
                        "node rank {} arrived twice (two processes were given --node-rank {})",
                        hello.node_rank, hello.node_rank
                    );
                    let _ = wire::send(&mut &stream, Kind::Reject, why.as_bytes());
                    break Err(ClusterError::Mismatch {
                        node: hello.node_rank,
                        what: why,
                    });
                }
                let n = hello.node_rank;
                hellos[n] = Some((hello, stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing = (1..spec.nodes).filter(|&n| hellos[n].is_none()).collect();
                    break Err(ClusterError::Missing {
                        addr: spec.rendezvous.clone(),
                        missing,
                        arrived,
                        after: spec.join_timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                break Err(ClusterError::Listen {
                    addr: spec.rendezvous.clone(),
                    why: e.to_string(),
                })
            }
        }
    };
    if let Err(e) = result {
        for (_, s) in hellos.iter().flatten() {
            let _ = wire::send(&mut &*s, Kind::Reject, e.to_string().as_bytes());
        }
        return Err(e);
    }
    let own = SocketAddr::new(own_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), data_port);
    let book: Vec<SocketAddr> = (0..spec.nodes)
        .map(|n| {
            if n == 0 {
                own
            } else {
                hellos[n].as_ref().expect("all arrived").0.data_addr
            }
        })
        .collect();
    let welcome = Welcome {
        session: session_id(),
        book,
        run,
    };
    let body = serde_json::to_vec(&welcome).expect("a welcome serialises");
    let mut control = Vec::new();
    for (n, (_, s)) in hellos.into_iter().flatten().enumerate() {
        s.set_nonblocking(false)
            .and_then(|()| s.set_read_timeout(None))
            .and_then(|()| s.set_nodelay(true))
            .map_err(|e| ClusterError::Peer {
                node: 0,
                why: format!("node {}: {e}", n + 1),
            })?;
        wire::send(&mut &s, Kind::Welcome, &body).map_err(|e| ClusterError::Peer {
            node: 0,
            why: format!("sending the address book to node {}: {e}", n + 1),
        })?;
        control.push(s);
    }
    Ok(Joined {
        control,
        data,
        welcome,
    })
}

/// Why `hello` cannot join `me`'s job.
fn check(me: &Hello, hello: &Hello, nodes: usize) -> Result<(), ClusterError> {
    let node = hello.node_rank;
    let mismatch = |what: String| Err(ClusterError::Mismatch { node, what });
    if node == 0 || node >= nodes {
        return mismatch(format!("node rank {node} is not one of 1..{nodes}"));
    }
    if hello.nodes != nodes {
        return mismatch(format!(
            "it was started with --nodes {} but node 0 with --nodes {nodes}",
            hello.nodes
        ));
    }
    if hello.version != me.version {
        return mismatch(format!(
            "switchyard version {} vs node 0's {}",
            hello.version, me.version
        ));
    }
    let model = hello.model.differences(&me.model);
    if !model.is_empty() {
        return mismatch(format!(
            "model differs: {} (node {node} vs node 0)",
            model.join("; ")
        ));
    }
    if hello.ranks_on != me.ranks_on {
        return mismatch(format!(
            "its ranks run on {} but node 0's on {} (use the same --device and --gpu-comm)",
            hello.ranks_on, me.ranks_on
        ));
    }
    if hello.layout != me.layout {
        return mismatch(format!(
            "layout differs (node {node} vs node 0): {}",
            line_diff(&hello.layout, &me.layout)
        ));
    }
    Ok(())
}

/// The lines of two TOML texts that differ, as `a -> b` pairs in order.
fn line_diff(theirs: &str, ours: &str) -> String {
    let a: Vec<&str> = theirs.lines().collect();
    let b: Vec<&str> = ours.lines().collect();
    let only_a: Vec<&str> = a.iter().filter(|l| !b.contains(l)).copied().collect();
    let only_b: Vec<&str> = b.iter().filter(|l| !a.contains(l)).copied().collect();
    format!("[{}] vs [{}]", only_a.join(", "), only_b.join(", "))
}

fn read_hello(stream: &TcpStream, deadline: Instant) -> Option<Hello> {
    stream.set_nonblocking(false).ok()?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(200));
    stream.set_read_timeout(Some(left)).ok()?;
    match wire::recv(&mut &*stream) {
        Ok(Some((Kind::Hello, body))) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

fn session_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// Any other node: connects to node 0 (retrying until the join timeout, as node 0 may start
/// later), says hello and waits for the address book. `me.data_addr` is filled in here.
pub fn join(spec: &ClusterSpec, mut me: Hello) -> Result<Joined, ClusterError> {
    let node = spec.node_rank;
    let addr = resolve(&spec.rendezvous)?;
    let deadline = Instant::now() + spec.join_timeout;
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(ClusterError::Unreachable {
                    node,
                    addr: spec.rendezvous.clone(),
                    after: spec.join_timeout,
                    why: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let peer = |why: String| ClusterError::Peer { node, why };
    let ip = stream.local_addr().map_err(|e| peer(e.to_string()))?.ip();
    let data = TcpListener::bind((ip, 0))
        .map_err(|e| peer(format!("binding a data listener on {ip}: {e}")))?;
    me.data_addr = data.local_addr().map_err(|e| peer(e.to_string()))?;
    me.node_rank = node;
    wire::send(
        &mut &stream,
        Kind::Hello,
        &serde_json::to_vec(&me).expect("a hello serialises"),
    )
    .map_err(|e| peer(format!("saying hello to node 0: {e}")))?;
    // Node 0 answers once every node has arrived, within its own join timeout.
    stream
        .set_read_timeout(Some(spec.join_timeout * 2 + Duration::from_secs(5)))
        .map_err(|e| peer(e.to_string()))?;
    let welcome = match wire::recv(&mut &stream) {
        Ok(Some((Kind::Welcome, body))) => serde_json::from_slice::<Welcome>(&body)
            .map_err(|e| peer(format!("a bad address book from node 0: {e}")))?,
        Ok(Some((Kind::Reject, why))) => {
            return Err(ClusterError::Refused {
                node,
                why: String::from_utf8_lossy(&why).into_owned(),
            })
        }
        Ok(Some((k, _))) => return Err(peer(format!("node 0 answered the hello with {k:?}"))),
        Ok(None) => {
            return Err(peer(
                "node 0 closed the rendezvous connection before answering".into(),
            ))
        }
        Err(e) => return Err(peer(format!("waiting for node 0's answer: {e}"))),
    };
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| peer(e.to_string()))?;
    Ok(Joined {
        control: vec![stream],
        data,
        welcome,
    })
}
