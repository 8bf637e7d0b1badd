//! Dispatch plans: analytic counts, replica preference, and properties.

use proptest::prelude::*;
use switchyard_experts::{DispatchPlan, Placement, RecvPermutation, Routing};

#[test]
fn analytic_counts_and_bytes() {
    // 4 experts on 2 ranks, no replicas: rank 0 = {0, 1}, rank 1 = {2, 3}.
    let p = Placement::contiguous(4, 2, 0).unwrap();
    let r = Routing {
        top_k: 2,
        experts: vec![0, 2, 3, 1, 2, 3],
        weights: vec![0.5; 6],
    };
    let plan = DispatchPlan::new(&r, &p, 0, 2).unwrap();
    assert_eq!(plan.rank_counts(), &[2, 4]);
    assert_eq!(plan.slot_counts(0), &[1, 1]);
    assert_eq!(plan.slot_counts(1), &[2, 2]);
    assert_eq!(plan.send_order(), &[0, 3, 1, 4, 2, 5]);
    // Rank 1 gets pairs of tokens 0, 2 (slot 2) and 1, 2 (slot 3): three rows, token 2 once.
    assert_eq!(plan.row_counts(), &[2, 3]);
    assert_eq!(plan.send_tokens(), &[0, 1, 0, 1, 2]);
    assert_eq!(plan.pair_rows(), &[0, 1, 0, 2, 1, 2]);
    assert_eq!(plan.alltoall_bytes(7168, 2), 3 * 7168 * 2 + 4 * 4);
}

#[test]
fn local_replica_then_node_then_round_robin() {
    // 4 ranks, 2 per node, 3 slots each. Expert 0 lives on ranks 0 and 3; expert 1 only on rank 2.
    let slots = vec![0, 2, 3, 4, 5, 6, 1, 7, 2, 0, 3, 4];
    let p = Placement::from_slots(slots, 8, 4).unwrap();
    let r = Routing {
        top_k: 1,
        experts: vec![0, 0, 0, 1],
        weights: vec![1.0; 4],
    };
    // From rank 0: expert 0 is local (slot 0).
    let plan = DispatchPlan::new(&r, &p, 0, 2).unwrap();
    assert_eq!(&plan.chosen_slots()[..3], &[0, 0, 0]);
    // From rank 2 (node 1): expert 0 is on node 1 at slot 9 (rank 3).
    let plan = DispatchPlan::new(&r, &p, 2, 2).unwrap();
    assert_eq!(&plan.chosen_slots()[..3], &[9, 9, 9]);
    // One node per rank: from rank 1, no local or same-node replica: round robin from 1 + 1.
    let plan = DispatchPlan::new(&r, &p, 1, 1).unwrap();
    assert_eq!(&plan.chosen_slots()[..3], &[9, 0, 9]);
    assert_eq!(plan.chosen_slots()[3], 6);
}

#[test]
fn bad_inputs_are_errors() {
    let p = Placement::contiguous(4, 2, 0).unwrap();
    let r = Routing {
        top_k: 1,
        experts: vec![4],
        weights: vec![1.0],
    };
    assert!(DispatchPlan::new(&r, &p, 0, 1)
        .unwrap_err()
        .to_string()
        .contains("expert 4"));
    let ok = Routing {
        top_k: 1,
        experts: vec![0],
        weights: vec![1.0],
    };
    assert!(DispatchPlan::new(&ok, &p, 2, 1)
        .unwrap_err()
        .to_string()
        .contains("src_rank 2"));
    assert!(DispatchPlan::new(&ok, &p, 0, 3)
        .unwrap_err()
        .to_string()
        .contains("ranks_per_node 3"));
    assert!(RecvPermutation::new(&[vec![1, 2], vec![1]]).is_err());
}

#[test]
fn recv_permutation_groups_by_slot() {
    // Source 0 sends 1 row to slot 0 and 2 to slot 1; source 1 sends 2 to slot 0, 0 to slot 1.
    let perm = RecvPermutation::new(&[vec![1, 2], vec![2, 0]]).unwrap();
    assert_eq!(perm.perm, vec![0, 3, 4, 1, 2]);
    assert_eq!(perm.slot_offsets, vec![0, 3, 5]);
    assert_eq!(perm.inverse(), vec![0, 3, 4, 1, 2]);
}

fn arb() -> impl Strategy<Value = (usize, usize, usize, Vec<u32>, usize, usize)> {
    (1usize..5, 1usize..3, 1usize..9, 0usize..6, 1usize..4).prop_flat_map(
        |(ranks, rpn_pow, experts, redundant, k)| {
            let ranks = ranks * rpn_pow;
            let k = k.min(experts);
            let slots_total = (experts + redundant).div_ceil(ranks) * ranks;
            (
                Just(ranks),
                Just(rpn_pow),
                Just(experts),
                prop::collection::vec(0..experts as u32, slots_total - experts),
                0..ranks,
                Just(k),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn every_pair_sent_once((ranks, rpn, experts, extra, src, k) in arb(), n_tokens in 0usize..20, seed in any::<u64>()) {
        // Placement: every expert once, then random replicas, slot order shuffled by seed.
        let mut slots: Vec<u32> = (0..experts as u32).chain(extra).collect();
        let mut s = seed;
        for i in (1..slots.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            slots.swap(i, (s >> 33) as usize % (i + 1));
        }
        let p = Placement::from_slots(slots, experts, ranks).unwrap();
        let mut routed = Vec::new();
        for t in 0..n_tokens {
            for j in 0..k {
                routed.push(((t * 7 + j * 3 + (seed as usize % 5)) % experts) as u32);
            }
        }
        let r = Routing { top_k: k, weights: vec![1.0; routed.len()], experts: routed };
        let plan = DispatchPlan::new(&r, &p, src, rpn).unwrap();
        let spr = p.slots_per_rank();
        // Every pair exactly once, grouped by rank then local slot, stable in token order.
        let mut seen = plan.send_order().to_vec();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..(n_tokens * k) as u32).collect::<Vec<_>>());
        prop_assert_eq!(plan.rank_counts().iter().sum::<usize>(), n_tokens * k);
        let keys: Vec<(u32, u32)> = plan.send_order().iter().map(|&q| (plan.chosen_slots()[q as usize], q)).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        // The rows sent: each destination's distinct tokens, ascending, and every pair reads
        // its own token's row.
        let (mut pair_at, mut row_at) = (0, 0);
        for (d, &n) in plan.rank_counts().iter().enumerate() {
            let pairs = &plan.send_order()[pair_at..pair_at + n];
            let rows = &plan.send_tokens()[row_at..row_at + plan.row_counts()[d]];
            let mut want: Vec<u32> = pairs.iter().map(|&q| q / k as u32).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(rows, &want[..]);
            for (i, &q) in pairs.iter().enumerate() {
                prop_assert_eq!(rows[plan.pair_rows()[pair_at + i] as usize], q / k as u32);
            }
            pair_at += n;
            row_at += plan.row_counts()[d];
        }
        prop_assert_eq!(row_at, plan.send_tokens().len());
        for (q, &slot) in plan.chosen_slots().iter().enumerate() {
            let e = r.experts[q] as usize;
            prop_assert_eq!(p.expert_of_slot(slot as usize), Some(e as u32));
            let reps = p.replicas(e);
            let rank_of = |s: u32| s as usize / spr;
            if reps.iter().any(|&s| rank_of(s) == src) {
                prop_assert_eq!(rank_of(slot), src);
            } else if reps.iter().any(|&s| rank_of(s) / rpn == src / rpn) {
                prop_assert_eq!(rank_of(slot) / rpn, src / rpn);
            }
        }
        // Receiver side: pretend every rank sent this plan's row; round trip is the identity.
        for dest in 0..ranks {
            let counts: Vec<Vec<usize>> = (0..ranks).map(|_| plan.slot_counts(dest).to_vec()).collect();
            let perm = RecvPermutation::new(&counts).unwrap();
            let inv = perm.inverse();
            let total: usize = counts.iter().flatten().sum();
            prop_assert_eq!(perm.slot_offsets[spr], total);
            let back: Vec<u32> = (0..total).map(|j| perm.perm[inv[j] as usize]).collect();
            prop_assert_eq!(back, (0..total as u32).collect::<Vec<_>>());
            for s in 0..spr {
                let rows = &perm.perm[perm.slot_offsets[s]..perm.slot_offsets[s + 1]];
                prop_assert_eq!(rows.len(), counts.iter().map(|c| c[s]).sum::<usize>());
            }
        }
    }
}
