//! Every collective of the in-process communicator against a naive computation, with 1..8 ranks
//! and uneven counts, and the bytes each rank sent against the analytic count.

use switchyard::comm::{even_counts, CommError, Communicator, RankGrid, World};

/// A reproducible value of rank `r` at index `i`, with magnitudes that make summation order
/// visible in the low bits.
fn value(r: usize, i: usize) -> f32 {
    let x = ((r * 7919 + i * 104_729) % 1000) as f32;
    (x - 500.0) * 10f32.powi(((r + i) % 7) as i32 - 3) + 0.1
}

fn data(r: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| value(r, i)).collect()
}

/// Runs `f` on `n` ranks of one EP group (tp 1, pp 1) and returns each rank's result.
fn on_ranks<R: Send>(
    n: usize,
    f: impl Fn(&dyn Communicator) -> Result<R, CommError> + Sync,
) -> Vec<R> {
    World::new(RankGrid::new(1, n, 1).unwrap())
        .run(|c| f(&c.ep))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn all_reduce_equals_the_rank_order_sum_bit_for_bit() {
    for n in 1..=8 {
        for len in [0, 1, 5, 17, 100] {
            let expect: Vec<f32> = (0..len)
                .map(|i| (1..n).fold(value(0, i), |acc, r| acc + value(r, i)))
                .collect();
            let out = on_ranks(n, |c| {
                let mut buf = data(c.rank(), len);
                c.all_reduce_sum(&mut buf)?;
                Ok((buf, c.bytes_moved()))
            });
            let counts = even_counts(len, n);
            for (r, (buf, bytes)) in out.iter().enumerate() {
                assert_eq!(
                    buf.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    expect.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "n {n} len {len} rank {r}"
                );
                // Reduce-scatter sends every other rank's chunk, all-gather sends ours n-1 times.
                let others: usize = (0..n).filter(|&c| c != r).map(|c| counts[c]).sum();
                assert_eq!(
                    *bytes,
                    4 * (others + (n - 1) * counts[r]) as u64,
                    "n {n} len {len}"
                );
            }
        }
    }
}

#[test]
fn all_reduce_is_deterministic_across_runs() {
    let run = || {
        on_ranks(5, |c| {
            let mut buf = data(c.rank(), 1000);
            c.all_reduce_sum(&mut buf)?;
            Ok(buf.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        })
    };
    let first = run();
    assert!(
        first.windows(2).all(|w| w[0] == w[1]),
        "every rank has the same bits"
    );
    for _ in 0..20 {
        assert_eq!(run(), first);
    }
}

#[test]
fn reduce_scatter_with_uneven_counts() {
    for n in 1..=8 {
        let counts: Vec<usize> = (0..n).map(|r| (r * 5 + 3) % 4).collect();
        let total: usize = counts.iter().sum();
        let out = on_ranks(n, |c| {
            let part = c.reduce_scatter_sum(&data(c.rank(), total), &counts)?;
            Ok((part, c.bytes_moved()))
        });
        let mut offset = 0;
        for (r, (part, bytes)) in out.iter().enumerate() {
            let expect: Vec<f32> = (offset..offset + counts[r])
                .map(|i| (1..n).fold(value(0, i), |acc, s| acc + value(s, i)))
                .collect();
            assert_eq!(part, &expect, "n {n} rank {r}");
            let sent: usize = (0..n).filter(|&d| d != r).map(|d| counts[d]).sum();
            assert_eq!(*bytes, 4 * sent as u64);
            offset += counts[r];
        }
    }
}

#[test]
fn all_gather_with_variable_lengths() {
    for n in 1..=8 {
        let len = |r: usize| (r * 3) % 5;
        let out = on_ranks(n, |c| {
            let (f, fc) = c.all_gather(&data(c.rank(), len(c.rank())))?;
            let ids: Vec<u32> = (0..len(c.rank()))
                .map(|i| (c.rank() * 100 + i) as u32)
                .collect();
            let (u, uc) = c.all_gather_u32(&ids)?;
            Ok((f, fc, u, uc, c.bytes_moved()))
        });
        let expect_f: Vec<f32> = (0..n).flat_map(|r| data(r, len(r))).collect();
        let expect_u: Vec<u32> = (0..n)
            .flat_map(|r| (0..len(r)).map(move |i| (r * 100 + i) as u32))
            .collect();
        let expect_counts: Vec<usize> = (0..n).map(len).collect();
        for (r, (f, fc, u, uc, bytes)) in out.iter().enumerate() {
            assert_eq!((f, fc), (&expect_f, &expect_counts));
            assert_eq!((u, uc), (&expect_u, &expect_counts));
            assert_eq!(*bytes, 2 * 4 * ((n - 1) * len(r)) as u64, "n {n} rank {r}");
        }
    }
}

/// Elements rank `s` sends to rank `d`.
fn a2a_count(s: usize, d: usize) -> usize {
    (s * 3 + d * 5 + s * d) % 4
}

#[test]
fn all_to_all_v_with_uneven_counts() {
    for n in 1..=8 {
        let out = on_ranks(n, |c| {
            let r = c.rank();
            let counts: Vec<usize> = (0..n).map(|d| a2a_count(r, d)).collect();
            // Element j for destination d encodes (source, destination, j).
            let send: Vec<u32> = (0..n)
                .flat_map(|d| (0..a2a_count(r, d)).map(move |j| (r * 10_000 + d * 100 + j) as u32))
                .collect();
            let send_f: Vec<f32> = send.iter().map(|&x| x as f32 + 0.5).collect();
            let (u, uc) = c.all_to_all_v_u32(&send, &counts)?;
            let (f, fc) = c.all_to_all_v(&send_f, &counts)?;
            Ok((u, uc, f, fc, c.bytes_moved()))
        });
        for (r, (u, uc, f, fc, bytes)) in out.iter().enumerate() {
            let expect: Vec<u32> = (0..n)
                .flat_map(|s| (0..a2a_count(s, r)).map(move |j| (s * 10_000 + r * 100 + j) as u32))
                .collect();
            let expect_counts: Vec<usize> = (0..n).map(|s| a2a_count(s, r)).collect();
            assert_eq!((u, uc), (&expect, &expect_counts), "n {n} rank {r}");
            let expect_f: Vec<f32> = expect.iter().map(|&x| x as f32 + 0.5).collect();
            assert_eq!((f, fc), (&expect_f, &expect_counts));
            let off_rank: usize = (0..n).filter(|&d| d != r).map(|d| a2a_count(r, d)).sum();
            assert_eq!(*bytes, 2 * 4 * off_rank as u64, "n {n} rank {r}");
        }
    }
}

#[test]
fn send_recv_around_a_ring() {
    for n in 2..=8 {
        let out = on_ranks(n, |c| {
            let (r, n) = (c.rank(), c.size());
            c.send(&data(r, r + 1), (r + 1) % n)?;
            let got = c.recv((r + n - 1) % n)?;
            Ok((got, c.bytes_moved()))
        });
        for (r, (got, bytes)) in out.iter().enumerate() {
            let src = (r + n - 1) % n;
            assert_eq!(got, &data(src, src + 1));
            assert_eq!(*bytes, 4 * (r + 1) as u64);
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for n in 1..=8 {
        for root in 0..n {
            let out = on_ranks(n, |c| {
                // Non-roots start with a buffer of another length: broadcast replaces it.
                let mut buf = data(c.rank(), if c.rank() == root { 9 } else { 2 });
                c.broadcast(&mut buf, root)?;
                Ok((buf, c.bytes_moved()))
            });
            for (r, (buf, bytes)) in out.iter().enumerate() {
                assert_eq!(buf, &data(root, 9));
                let expect = if r == root { 4 * 9 * (n - 1) as u64 } else { 0 };
                assert_eq!(*bytes, expect);
            }
        }
    }
}

#[test]
fn barrier_waits_for_every_rank_and_moves_no_bytes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for n in 1..=8 {
        let arrived = AtomicUsize::new(0);
        let out = on_ranks(n, |c| {
            if c.rank() == n - 1 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            arrived.fetch_add(1, Ordering::SeqCst);
            c.barrier()?;
            Ok((arrived.load(Ordering::SeqCst), c.bytes_moved()))
        });
        assert!(
            out.iter().all(|&(seen, bytes)| seen == n && bytes == 0),
            "n {n}: {out:?}"
        );
    }
}

#[test]
fn wrong_arguments_are_errors() {
    let out = on_ranks(3, |c| {
        let a = c.all_to_all_v(&[1.0, 2.0], &[1, 1]).unwrap_err();
        let b = c.reduce_scatter_sum(&[1.0; 4], &[1, 1, 1]).unwrap_err();
        let s = c.send(&[1.0], c.rank()).unwrap_err();
        let mut v = vec![];
        let root = c.broadcast(&mut v, 3).unwrap_err();
        Ok([a, b, s, root].map(|e| e.to_string()))
    });
    let [a, b, s, root] = &out[0];
    assert!(a.contains("2 counts for a group of 3 ranks"), "{a}");
    assert!(b.contains("counts sum to 3 but the buffer holds 4"), "{b}");
    assert!(s.contains("destination 0 must be another rank"), "{s}");
    assert!(root.contains("root 3 is not a rank"), "{root}");
}

#[test]
fn mismatched_lengths_in_all_reduce_are_named() {
    let err = World::new(RankGrid::new(1, 2, 1).unwrap())
        .run(|c| {
            let mut buf = vec![1.0; 4 + c.coords.global * 2];
            c.ep.all_reduce_sum(&mut buf)
        })
        .unwrap_err();
    assert!(err.to_string().contains("where"), "{err}");
}
