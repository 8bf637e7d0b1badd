//! The TP, EP and PP groups a `World` hands each rank, and ranks that fail or go away.

use std::time::{Duration, Instant};
use switchyard::comm::{CommError, Communicator, RankFailure, RankGrid, World};

#[test]
fn groups_follow_the_grid() {
    let grid = RankGrid::new(2, 4, 2).unwrap();
    assert_eq!(grid.world(), 8);
    let out = World::new(grid)
        .run(|c| {
            let me = [c.coords.global as u32];
            let tp = c.tp.all_gather_u32(&me)?.0;
            let ep = c.ep.all_gather_u32(&me)?.0;
            let pp = c.pp.all_gather_u32(&me)?.0;
            let world = c.world.all_gather_u32(&me)?.0;
            Ok::<_, CommError>((
                c.coords,
                [c.tp.rank(), c.ep.rank(), c.pp.rank()],
                tp,
                ep,
                pp,
                world,
            ))
        })
        .unwrap();
    for (g, (coords, ranks, tp, ep, pp, world)) in out.into_iter().enumerate() {
        assert_eq!(coords, grid.coords(g));
        assert_eq!((coords.stage, coords.ep_rank), (g / 4, g % 4));
        assert_eq!((coords.dp_rank, coords.tp_rank), ((g % 4) / 2, g % 2));
        assert_eq!(ranks, [coords.tp_rank, coords.ep_rank, coords.stage]);
        let as_u32 = |v: Vec<usize>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
        assert_eq!(tp, as_u32(grid.tp_group(g)));
        assert_eq!(ep, as_u32(grid.ep_group(g)));
        assert_eq!(pp, as_u32(grid.pp_group(g)));
        assert_eq!(world, (0..8).collect::<Vec<u32>>());
    }
    assert_eq!(grid.tp_group(5), vec![4, 5]);
    assert_eq!(grid.ep_group(5), vec![4, 5, 6, 7]);
    assert_eq!(grid.pp_group(5), vec![1, 5]);
}

#[test]
fn grid_refuses_tp_not_dividing_ep() {
    let e = RankGrid::new(3, 4, 1).unwrap_err();
    assert!(e.to_string().contains("tp 3 does not divide ep 4"), "{e}");
    assert!(RankGrid::new(1, 0, 1).is_err());
}

#[test]
fn a_rank_that_drops_its_communicator_makes_peers_fail_not_hang() {
    let start = Instant::now();
    let world = World::new(RankGrid::new(1, 4, 1).unwrap()).with_timeout(Duration::from_secs(30));
    let out = world
        .run(|c| {
            if c.coords.global == 2 {
                drop(c.ep);
                return Ok(None);
            }
            let mut buf = vec![1.0; 16];
            Ok::<_, CommError>(Some(c.ep.all_reduce_sum(&mut buf).unwrap_err()))
        })
        .unwrap();
    for (r, e) in out.into_iter().enumerate() {
        match (r, e) {
            (2, None) => {}
            (_, Some(CommError::PeerGone { .. })) => {}
            other => panic!("rank {r}: expected PeerGone, got {other:?}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "peers waited for the timeout"
    );
}

#[test]
fn a_silent_peer_is_a_timeout() {
    let world =
        World::new(RankGrid::new(1, 2, 1).unwrap()).with_timeout(Duration::from_millis(200));
    let out = world
        .run(|c| {
            if c.coords.global == 1 {
                std::thread::sleep(Duration::from_millis(1000));
                return Ok(None);
            }
            Ok::<_, CommError>(Some(c.ep.recv(1).unwrap_err()))
        })
        .unwrap();
    assert!(
        matches!(out[0], Some(CommError::Timeout { peer: 1, .. })),
        "{:?}",
        out[0]
    );
}

#[test]
fn a_panicking_rank_is_reported_and_its_peers_fail() {
    let err = World::new(RankGrid::new(1, 3, 1).unwrap())
        .run(|c| {
            if c.coords.global == 1 {
                panic!("rank one broke");
            }
            c.ep.barrier()
        })
        .unwrap_err();
    assert_eq!(err.rank, 1);
    assert!(matches!(&err.failure, RankFailure::Panic(m) if m == "rank one broke"));
    let mut others: Vec<usize> = err.others.iter().map(|(r, _)| *r).collect();
    others.sort();
    assert_eq!(others, vec![0, 2]);
    assert!(err
        .others
        .iter()
        .all(|(_, f)| matches!(f, RankFailure::Error(CommError::PeerGone { .. }))));
    assert!(
        err.to_string()
            .starts_with("rank 1 panicked: rank one broke"),
        "{err}"
    );
}

#[test]
fn collectives_called_out_of_order_are_a_mismatch() {
    let err = World::new(RankGrid::new(1, 2, 1).unwrap())
        .run(|c| {
            if c.coords.global == 0 {
                c.ep.barrier()
            } else {
                c.ep.all_gather(&[1.0]).map(|_| ())
            }
        })
        .unwrap_err();
    let all: Vec<String> = std::iter::once(&err.failure)
        .chain(err.others.iter().map(|(_, f)| f))
        .map(|f| format!("{f:?}"))
        .collect();
    assert!(all.iter().any(|m| m.contains("Mismatch")), "{all:?}");
}
