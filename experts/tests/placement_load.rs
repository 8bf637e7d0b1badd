//! Placement constructors and queries; load statistics and imbalance.

use switchyard_experts::{
    imbalance, merge_counts, rank_loads, LoadStats, Placement, PlacementError, EMPTY_SLOT,
};

#[test]
fn contiguous_layout_and_queries() {
    let p = Placement::contiguous(8, 4, 4).unwrap();
    assert_eq!(p.slots_per_rank(), 3);
    // Rank r: primaries 2r, 2r+1, then one replica of (4 + 2j) % 8.
    assert_eq!(p.slots(), &[0, 1, 4, 2, 3, 6, 4, 5, 0, 6, 7, 2]);
    assert_eq!(p.replicas(4), &[2, 6]);
    assert_eq!(p.rank_of_slot(7), Some(2));
    assert_eq!(p.rank_of_slot(12), None);
    assert_eq!(p.local_slots(1), 3..6);
    assert_eq!(p.n_ranks(), 4);
    assert!(p.replicas(99).is_empty());
}

#[test]
fn not_divisible_error_suggests_fits() {
    let e = Placement::contiguous(8, 4, 3).unwrap_err();
    assert!(matches!(e, PlacementError::NotDivisible { .. }));
    assert_eq!(
        e.to_string(),
        "experts (8) + redundant (3) = 11 slots is not divisible by ep 4; use redundant 0 or 4"
    );
}

#[test]
fn padded_leaves_empty_slots() {
    let p = Placement::padded(256, 64, 32).unwrap();
    assert_eq!(
        (p.slots_per_rank(), p.n_slots(), p.n_used_slots()),
        (5, 320, 288)
    );
    assert!((0..256).all(|e| !p.replicas(e).is_empty()));
    assert_eq!(p.rank_experts(63)[4], EMPTY_SLOT);
    assert_eq!(p.expert_of_slot(319), None);
}

#[test]
fn from_slots_validates() {
    assert!(Placement::from_slots(vec![0, 1, 2, 1], 3, 2).is_ok());
    let e = Placement::from_slots(vec![0, 1, 1, 1], 3, 2).unwrap_err();
    assert!(e.to_string().contains("expert 2 has no slot"), "{e}");
    let e = Placement::from_slots(vec![0, 1, 2], 3, 2).unwrap_err();
    assert!(e.to_string().contains("3 slots"), "{e}");
    let e = Placement::from_slots(vec![0, 5, 2, 1], 3, 2).unwrap_err();
    assert!(e.to_string().contains("expert 5"), "{e}");
}

#[test]
fn imbalance_splits_load_over_replicas() {
    // 2 ranks x 2 slots: rank 0 = {0, 1}, rank 1 = {0, 2}; expert 0 has 2 replicas.
    let p = Placement::from_slots(vec![0, 1, 0, 2], 3, 2).unwrap();
    let loads = [4.0, 1.0, 3.0];
    assert_eq!(rank_loads(&loads, &p).unwrap(), vec![3.0, 5.0]);
    assert_eq!(imbalance(&loads, &p).unwrap(), 5.0 / 4.0);
    assert_eq!(imbalance(&[0.0; 3], &p).unwrap(), 1.0);
    assert!(imbalance(&[1.0; 2], &p)
        .unwrap_err()
        .to_string()
        .contains("2 expert loads"));
}

#[test]
fn load_stats_slide() {
    let mut s = LoadStats::new(2, 3, 2).unwrap();
    s.record_step(&[vec![1, 0, 0], vec![0, 1, 0]]).unwrap();
    s.record_step(&[vec![2, 0, 0], vec![0, 0, 5]]).unwrap();
    assert_eq!(s.loads(), vec![vec![3, 0, 0], vec![0, 1, 5]]);
    s.record_step(&[vec![0, 7, 0], vec![1, 1, 1]]).unwrap();
    assert_eq!(s.loads(), vec![vec![2, 7, 0], vec![1, 1, 6]]);
    assert_eq!(s.layer_totals(), vec![9, 8]);
    assert_eq!(s.total(), 17);
    assert_eq!((s.steps_recorded(), s.steps_in_window()), (3, 2));
    let e = s.record_step(&[vec![0; 3]]).unwrap_err();
    assert!(e.to_string().contains("1 layers"), "{e}");
    let e = s.record_step(&[vec![0; 3], vec![0; 4]]).unwrap_err();
    assert!(e.to_string().contains("layer 1 has 4"), "{e}");
    assert!(LoadStats::new(1, 1, 0).is_err());
}

#[test]
fn merge_sums_ranks() {
    let a = vec![vec![1, 2], vec![3, 4]];
    let b = vec![vec![10, 20], vec![30, 40]];
    assert_eq!(
        merge_counts(&[a.clone(), b]).unwrap(),
        vec![vec![11, 22], vec![33, 44]]
    );
    let e = merge_counts(&[a, vec![vec![1, 2]]]).unwrap_err();
    assert!(e.to_string().contains("rank 1"), "{e}");
}
