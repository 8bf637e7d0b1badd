//! `Fabric`: one node's share of a world of ranks spread over processes — a full mesh of TCP
//! connections between nodes and every local rank's communicators over it.
//!
//! Node `n` holds global ranks `n * ranks_per_node .. (n + 1) * ranks_per_node`. Each node has
//! bound a listener before the rendezvous and published its address; node `i` connects to every
//! node `j < i` and accepts from every `j > i`, each connection opening with a handshake of the
//! job's session id and the node's rank (a stray or stale connection is dropped).

use super::comm::{Message, Outbound, TcpComm};
use super::frame::{read_frame, write_frame, Frame, GroupKind};
use crate::comm::{RankCoords, RankGrid};
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"SYFB";

/// Why the mesh could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// A socket operation failed.
    #[error("node {node}: {what}: {source}")]
    Io {
        /// This node.
        node: usize,
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// Some nodes did not connect in time.
    #[error("node {node}: nodes {missing:?} did not open their data connections within {after:?}")]
    Timeout {
        /// This node.
        node: usize,
        /// The nodes that never connected.
        missing: Vec<usize>,
        /// How long this node waited.
        after: Duration,
    },
    /// Sizes that do not fit together.
    #[error("fabric: {0}")]
    Spec(String),
}

/// What a node needs to join the mesh.
#[derive(Debug, Clone)]
pub struct FabricSpec {
    /// The rank grid of the whole world.
    pub grid: RankGrid,
    /// Nodes (processes); must divide the world size.
    pub nodes: usize,
    /// This node, `0..nodes`.
    pub node: usize,
    /// The job's session id (from the rendezvous): connections of another job are refused.
    pub session: u64,
    /// How long a receive waits for a live but silent peer (and a send for a stuck one).
    pub timeout: Duration,
    /// How long to wait for the other nodes to connect.
    pub connect_timeout: Duration,
}

impl FabricSpec {
    /// Ranks each node holds.
    pub fn ranks_per_node(&self) -> usize {
        self.grid.world() / self.nodes
    }

    /// The node holding global rank `rank`.
    pub fn node_of(&self, rank: usize) -> usize {
        rank / self.ranks_per_node()
    }

    /// Global ranks of this node.
    pub fn local_ranks(&self) -> std::ops::Range<usize> {
        let n = self.ranks_per_node();
        self.node * n..(self.node + 1) * n
    }
}

/// One rank's communicators over the fabric.
#[derive(Debug)]
pub struct TcpRankComms {
    /// Where the rank sits in the grid.
    pub coords: RankCoords,
    /// The ranks sharing its attention heads.
    pub tp: TcpComm,
    /// The ranks of its pipeline stage.
    pub ep: TcpComm,
    /// The same index in every stage.
    pub pp: TcpComm,
}

/// The write side of the connection to one other node, shared by every local rank.
pub(crate) struct NodeLink {
    stream: Mutex<TcpStream>,
}

impl NodeLink {
    /// Writes one frame (whole, under the lock).
    pub(crate) fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *s, frame)
    }
}

impl Drop for NodeLink {
    /// The last local rank is gone: close the connection, so the other node's ranks fail at
    /// once and its reader thread ends.
    fn drop(&mut self) {
        let s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Routes of one connection: incoming frames for (group, src, dst) go to that channel.
type Routes = HashMap<(GroupKind, u32, u32), Sender<Message>>;

/// One node's share of the world.
#[derive(Debug)]
pub struct Fabric;

impl Fabric {
    /// Connects this node to every other (`book[n]`: node `n`'s data address; `listener`: this
    /// node's, already bound at `book[spec.node]`) and returns the communicators of every local
    /// rank, in global rank order.
    pub fn connect(
        spec: &FabricSpec,
        listener: TcpListener,
        book: &[SocketAddr],
    ) -> Result<Vec<TcpRankComms>, FabricError> {
        let world = spec.grid.world();
        if spec.nodes == 0
            || !world.is_multiple_of(spec.nodes)
            || spec.node >= spec.nodes
            || book.len() != spec.nodes
        {
            return Err(FabricError::Spec(format!(
                "{} ranks over {} nodes (this is node {}, {} addresses): the nodes must split the ranks evenly",
                world,
                spec.nodes,
                spec.node,
                book.len()
            )));
        }
        let streams = mesh(spec, listener, book)?;
        Ok(Self::wire(spec, streams))
    }

    /// Every local rank's communicators over the connected `streams` (`streams[n]` for every
    /// other node `n`).
    fn wire(spec: &FabricSpec, streams: Vec<Option<TcpStream>>) -> Vec<TcpRankComms> {
        let grid = spec.grid;
        let local = spec.local_ranks();
        let mut routes: Vec<Routes> = (0..spec.nodes).map(|_| Routes::new()).collect();
        // Channels into every local rank; the sending end goes to the local source's
        // communicator, or to the route table of the source's node.
        let mut local_out: HashMap<(GroupKind, usize, usize), Sender<Message>> = HashMap::new();
        let mut incoming: HashMap<(GroupKind, usize, usize), Receiver<Message>> = HashMap::new();
        for dst in local.clone() {
            for kind in GroupKind::ALL {
                for src in members(&grid, kind, dst).into_iter().filter(|&s| s != dst) {
                    let (tx, rx) = channel();
                    incoming.insert((kind, src, dst), rx);
                    if local.contains(&src) {
                        local_out.insert((kind, src, dst), tx);
                    } else {
                        routes[spec.node_of(src)].insert((kind, src as u32, dst as u32), tx);
                    }
                }
            }
        }
        let mut links: Vec<Option<Arc<NodeLink>>> = (0..spec.nodes).map(|_| None).collect();
        for (node, stream) in streams.into_iter().enumerate() {
            let Some(stream) = stream else { continue };
            let reader = stream.try_clone().expect("clone a connected socket");
            let table = std::mem::take(&mut routes[node]);
            std::thread::Builder::new()
                .name(format!("fabric-from-{node}"))
                .spawn(move || read_loop(reader, table))
                .expect("start a fabric reader thread");
            links[node] = Some(Arc::new(NodeLink {
                stream: Mutex::new(stream),
            }));
        }
        local
            .map(|me| {
                let mut comm = |kind: GroupKind| {
                    let group = members(&grid, kind, me);
                    let rank = group
                        .iter()
                        .position(|&g| g == me)
                        .expect("a rank is in its groups");
                    let to = group
                        .iter()
                        .map(|&peer| match peer {
                            p if p == me => None,
                            p if spec.node_of(p) == spec.node => Some(Outbound::Local(
                                local_out
                                    .remove(&(kind, me, p))
                                    .expect("one channel per pair"),
                            )),
                            p => Some(Outbound::Remote(
                                links[spec.node_of(p)]
                                    .clone()
                                    .expect("a link to every other node"),
                                p as u32,
                            )),
                        })
                        .collect();
                    let from = group
                        .iter()
                        .map(|&peer| {
                            if peer == me {
                                None
                            } else {
                                incoming.remove(&(kind, peer, me))
                            }
                        })
                        .collect();
                    TcpComm {
                        kind,
                        rank,
                        size: group.len(),
                        global: me as u32,
                        to,
                        from,
                        timeout: spec.timeout,
                        bytes: AtomicU64::new(0),
                    }
                };
                TcpRankComms {
                    coords: grid.coords(me),
                    tp: comm(GroupKind::Tp),
                    ep: comm(GroupKind::Ep),
                    pp: comm(GroupKind::Pp),
                }
            })
            .collect()
    }
}

fn members(grid: &RankGrid, kind: GroupKind, rank: usize) -> Vec<usize> {
    match kind {
        GroupKind::Tp => grid.tp_group(rank),
        GroupKind::Ep => grid.ep_group(rank),
        GroupKind::Pp => grid.pp_group(rank),
    }
}

/// Sorts one connection's frames into the local ranks' channels until it closes; then drops
/// every route, so each local rank waiting on that node fails with `PeerGone` at once.
fn read_loop(stream: TcpStream, mut routes: Routes) {
    let mut r = BufReader::with_capacity(1 << 16, stream);
    while let Ok(Some(frame)) = read_frame(&mut r) {
        match frame {
            Frame::Data {
                group,
                op,
                src,
                dst,
                payload,
            } => {
                if let Some(tx) = routes.get(&(group, src, dst)) {
                    let _ = tx.send(Message { op, payload });
                }
            }
            Frame::Hangup { group, src, dst } => {
                routes.remove(&(group, src, dst));
            }
        }
    }
}

/// Opens the connection to every other node: dials the lower ones, accepts the higher ones.
fn mesh(
    spec: &FabricSpec,
    listener: TcpListener,
    book: &[SocketAddr],
) -> Result<Vec<Option<TcpStream>>, FabricError> {
    let me = spec.node;
    let io_err = |what: String| {
        move |source| FabricError::Io {
            node: me,
            what,
            source,
        }
    };
    let mut streams: Vec<Option<TcpStream>> = (0..spec.nodes).map(|_| None).collect();
    for (peer, addr) in book.iter().enumerate().take(me) {
        let mut s = TcpStream::connect_timeout(addr, spec.connect_timeout)
            .map_err(io_err(format!("connecting to node {peer} at {addr}")))?;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&spec.session.to_le_bytes());
        hello.extend_from_slice(&(me as u32).to_le_bytes());
        s.write_all(&hello)
            .map_err(io_err(format!("greeting node {peer} at {addr}")))?;
        streams[peer] = Some(s);
    }
    let deadline = Instant::now() + spec.connect_timeout;
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting up the data listener".into()))?;
    let expected = spec.nodes - me - 1;
    let mut accepted = 0;
    while accepted < expected {
        match listener.accept() {
            Ok((s, _)) => {
                if let Some(peer) = handshake(&s, spec, deadline) {
                    if peer > me && peer < spec.nodes && streams[peer].is_none() {
                        streams[peer] = Some(s);
                        accepted += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing = (me + 1..spec.nodes)
                        .filter(|&n| streams[n].is_none())
                        .collect();
                    return Err(FabricError::Timeout {
                        node: me,
                        missing,
                        after: spec.connect_timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("accepting data connections".into())(e)),
        }
    }
    for s in streams.iter().flatten() {
        let setup = s
            .set_nonblocking(false)
            .and_then(|()| s.set_nodelay(true))
            .and_then(|()| s.set_read_timeout(None))
            .and_then(|()| s.set_write_timeout(Some(spec.timeout)));
        setup.map_err(io_err("setting up a data connection".into()))?;
    }
    Ok(streams)
}

/// The node rank a new connection announces, if it belongs to this job.
fn handshake(s: &TcpStream, spec: &FabricSpec, deadline: Instant) -> Option<usize> {
    s.set_nonblocking(false).ok()?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    s.set_read_timeout(Some(left)).ok()?;
    let mut buf = [0u8; 16];
    (&*s).read_exact(&mut buf).ok()?;
    let session = u64::from_le_bytes(buf[4..12].try_into().ok()?);
    (&buf[..4] == MAGIC && session == spec.session)
        .then(|| u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) as usize)
}
