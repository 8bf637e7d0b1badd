//! The TCP communicator against the in-process one: two "nodes" in this process joined by a
//! loopback mesh run the same collectives as `LocalComm` ranks and must give the same bits and
//! count the same bytes; a dropped or closed peer is an error at once, a silent one a timeout.

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};
use switchyard::comm::tcp::{Fabric, FabricSpec, TcpRankComms};
use switchyard::comm::{CommError, Communicator, RankGrid, World};

/// Every local rank of every node, in global rank order, over a loopback mesh.
fn mesh(grid: RankGrid, nodes: usize, timeout: Duration) -> Vec<TcpRankComms> {
    let listeners: Vec<TcpListener> = (0..nodes)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let book: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(node, l)| {
            let book = book.clone();
            let spec = FabricSpec {
                grid,
                nodes,
                node,
                session: 42,
                timeout,
                connect_timeout: Duration::from_secs(10),
            };
            thread::spawn(move || Fabric::connect(&spec, l, &book).unwrap())
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Deterministic, rank-dependent values that make float sums order-sensitive.
fn values(rank: usize, salt: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((rank * 7919 + salt * 131 + i * 17) % 1000) as f32 * 1.37e-3 - 0.61
                + (i as f32).sin() * 1e3_f32.powi((i % 3) as i32 - 1)
        })
        .collect()
}

/// A workout of every collective on one group; returns everything it received and the bytes
/// the communicator counted.
fn workout(c: &dyn Communicator, global: usize) -> (Vec<u32>, u64) {
    let (r, n) = (c.rank(), c.size());
    let mut seen: Vec<f32> = Vec::new();
    let mut buf = values(global, 1, 37);
    c.all_reduce_sum(&mut buf).unwrap();
    seen.extend(&buf);
    let counts: Vec<usize> = (0..n).map(|d| 3 + d).collect();
    seen.extend(
        c.reduce_scatter_sum(&values(global, 2, counts.iter().sum()), &counts)
            .unwrap(),
    );
    let (g, gc) = c.all_gather(&values(global, 3, 2 + r)).unwrap();
    seen.extend(g);
    seen.extend(gc.iter().map(|&x| x as f32));
    let (gu, _) = c.all_gather_u32(&[r as u32, 99]).unwrap();
    seen.extend(gu.iter().map(|&x| x as f32));
    let sends: Vec<usize> = (0..n).map(|d| (r + 2 * d) % 4).collect();
    let (a, ac) = c
        .all_to_all_v(&values(global, 4, sends.iter().sum()), &sends)
        .unwrap();
    seen.extend(a);
    seen.extend(ac.iter().map(|&x| x as f32));
    let ids: Vec<u32> = (0..sends.iter().sum::<usize>() as u32)
        .map(|i| i * 10 + r as u32)
        .collect();
    seen.extend(
        c.all_to_all_v_u32(&ids, &sends)
            .unwrap()
            .0
            .iter()
            .map(|&x| x as f32),
    );
    let mut b = if r == n - 1 {
        values(global, 5, 9)
    } else {
        Vec::new()
    };
    c.broadcast(&mut b, n - 1).unwrap();
    seen.extend(&b);
    if n > 1 {
        let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
        c.send(&values(global, 6, 5), next).unwrap();
        seen.extend(c.recv(prev).unwrap());
    }
    c.barrier().unwrap();
    (seen.iter().map(|x| x.to_bits()).collect(), c.bytes_moved())
}

type Results = Vec<[(Vec<u32>, u64); 3]>;

fn run_tcp(grid: RankGrid, nodes: usize) -> Results {
    let handles: Vec<_> = mesh(grid, nodes, Duration::from_secs(20))
        .into_iter()
        .map(|c| {
            thread::spawn(move || {
                [
                    workout(&c.tp, c.coords.global),
                    workout(&c.ep, c.coords.global),
                    workout(&c.pp, c.coords.global),
                ]
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn run_local(grid: RankGrid) -> Results {
    World::new(grid)
        .run(|c| {
            Ok::<_, CommError>([
                workout(&c.tp, c.coords.global),
                workout(&c.ep, c.coords.global),
                workout(&c.pp, c.coords.global),
            ])
        })
        .unwrap()
}

#[test]
fn collectives_over_tcp_equal_the_in_process_ranks_bit_for_bit() {
    for (tp, ep, pp, nodes) in [
        (1, 2, 1, 2),
        (1, 1, 2, 2),
        (2, 4, 2, 2),
        (2, 4, 2, 4),
        (1, 4, 1, 4),
        (2, 2, 2, 1),
    ] {
        let grid = RankGrid::new(tp, ep, pp).unwrap();
        let (tcp, local) = (run_tcp(grid, nodes), run_local(grid));
        assert_eq!(tcp.len(), local.len());
        for (rank, (t, l)) in tcp.iter().zip(&local).enumerate() {
            for (g, name) in ["tp", "ep", "pp"].iter().enumerate() {
                assert!(
                    t[g].0 == l[g].0,
                    "tp {tp} ep {ep} pp {pp} over {nodes} nodes: rank {rank} {name} results differ"
                );
                assert_eq!(
                    t[g].1, l[g].1,
                    "tp {tp} ep {ep} pp {pp} over {nodes} nodes: rank {rank} {name} bytes"
                );
            }
        }
    }
}

#[test]
fn a_dropped_remote_peer_fails_its_partner_at_once() {
    // ep 2 over 2 nodes: rank 0 on node 0, rank 1 on node 1.
    let mut ranks = mesh(RankGrid::new(1, 2, 1).unwrap(), 2, Duration::from_secs(60));
    let far = ranks.pop().unwrap();
    let near = ranks.pop().unwrap();
    drop(far);
    let start = Instant::now();
    let err = near.ep.all_gather(&[1.0]).unwrap_err();
    assert!(matches!(err, CommError::PeerGone { peer: 1, .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "PeerGone took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_silent_remote_peer_is_a_timeout() {
    let ranks = mesh(
        RankGrid::new(1, 2, 1).unwrap(),
        2,
        Duration::from_millis(300),
    );
    let start = Instant::now();
    let err = ranks[0].ep.recv(1).unwrap_err();
    assert!(matches!(err, CommError::Timeout { peer: 1, .. }), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The peer still answers afterwards: a timeout does not break the connection.
    ranks[1].ep.send(&[2.5], 0).unwrap();
    assert_eq!(ranks[0].ep.recv(1).unwrap(), vec![2.5]);
}

#[test]
fn mismatched_collectives_are_caught_by_the_op_tags() {
    let ranks = mesh(RankGrid::new(1, 2, 1).unwrap(), 2, Duration::from_secs(10));
    ranks[1].ep.send(&[1.0], 0).unwrap();
    let err = ranks[0].ep.all_gather(&[1.0]).unwrap_err();
    assert!(matches!(err, CommError::Mismatch { .. }), "{err}");
}

#[test]
fn a_connection_of_another_job_is_refused() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let book = vec![addr, other.local_addr().unwrap()];
    let spec = FabricSpec {
        grid: RankGrid::new(1, 2, 1).unwrap(),
        nodes: 2,
        node: 0,
        session: 1,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(700),
    };
    let stray = thread::spawn(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut hello = b"SYFB".to_vec();
        hello.extend_from_slice(&999u64.to_le_bytes());
        hello.extend_from_slice(&1u32.to_le_bytes());
        s.write_all(&hello).unwrap();
        thread::sleep(Duration::from_millis(1500));
    });
    let err = Fabric::connect(&spec, l, &book).unwrap_err().to_string();
    assert!(
        err.contains("nodes [1] did not open their data connections"),
        "{err}"
    );
    stray.join().unwrap();
}
